"""A tiny model with A1111's LDM parameter names (SD1 layout), and kohya-format LoRA files for it.

Only the modules the tests patch exist, a few channels wide; names are exactly what
`shared.sd_model.named_parameters()` yields in the webui for SD1.x.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

WIDTH = 8
CONTEXT = 12  # SD1 text width is 768; tiny here

# A 2-level UNet skeleton (layers_per_block=1, attention on level 0 only): enough structure for
# lora_core.targets to read the block layout and map diffusers names onto LDM names.
SKELETON = [  # (LDM module path, in channels, out channels) of 1x1 convs
    ("model.diffusion_model.input_blocks.0.0", 4, WIDTH),
    ("model.diffusion_model.input_blocks.1.0.in_layers.2", WIDTH, WIDTH),
    ("model.diffusion_model.input_blocks.2.0.op", WIDTH, WIDTH),
    ("model.diffusion_model.input_blocks.3.0.in_layers.2", WIDTH, 2 * WIDTH),
    ("model.diffusion_model.middle_block.0.in_layers.2", 2 * WIDTH, 2 * WIDTH),
    ("model.diffusion_model.output_blocks.0.0.in_layers.2", 4 * WIDTH, 2 * WIDTH),
    ("model.diffusion_model.output_blocks.1.0.in_layers.2", 3 * WIDTH, 2 * WIDTH),
    ("model.diffusion_model.output_blocks.2.0.in_layers.2", 3 * WIDTH, WIDTH),
    ("model.diffusion_model.output_blocks.3.0.in_layers.2", 2 * WIDTH, WIDTH),
    ("first_stage_model.decoder.conv_out", 4, 3),  # VAE: never patched
]

# (LDM module path, kohya name in the diffusers namespace, in, out)
SD1_LINEARS = [
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", WIDTH, WIDTH),
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", CONTEXT, WIDTH),
    ("model.diffusion_model.output_blocks.2.1.transformer_blocks.0.ff.net.2",
     "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2", WIDTH, WIDTH),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
     "lora_te_text_model_encoder_layers_0_self_attn_q_proj", CONTEXT, CONTEXT),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1",
     "lora_te_text_model_encoder_layers_0_mlp_fc1", CONTEXT, CONTEXT),
]


def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    node.add_module(parts[-1], module)


class TinySD1(nn.Module):
    def __init__(self):
        super().__init__()
        for path, _kohya, fan_in, fan_out in SD1_LINEARS:
            _put(self, path, nn.Linear(fan_in, fan_out))
        for path, fan_in, fan_out in SKELETON:
            _put(self, path, nn.Conv2d(fan_in, fan_out, 1))


def checkpoint(seed: int):
    """A state-dict factory: distinct, reproducible weights per seed."""
    def state_dict():
        gen = torch.Generator().manual_seed(seed)
        return {k: torch.randn(v.shape, generator=gen) for k, v in TinySD1().state_dict().items()}
    return state_dict


def write_kohya_lora(path, seed: int, rank: int = 2, alpha: float = 1.0, modules=None, output_name=None) -> dict:
    """Writes a kohya LoRA for (a subset of) the tiny model; returns {ldm weight name: ΔW at m=1}."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for ldm, kohya, fan_in, fan_out in SD1_LINEARS:
        if modules is not None and ldm not in modules:
            continue
        down = torch.randn(rank, fan_in, generator=gen)
        up = torch.randn(fan_out, rank, generator=gen)
        tensors[f"{kohya}.lora_down.weight"] = down
        tensors[f"{kohya}.lora_up.weight"] = up
        tensors[f"{kohya}.alpha"] = torch.tensor(alpha)
        deltas[ldm + ".weight"] = (alpha / rank) * (up @ down)
    metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"}
    if output_name:
        metadata["ss_output_name"] = output_name
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return deltas


# --- SD2 / SDXL text encoders, named as in A1111 (OpenCLIP keeps q/k/v fused in in_proj_weight) ---

SDXL_TE1_Q = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj"
SDXL_TE2_ATTN = "conditioner.embedders.1.model.transformer.resblocks.0.attn"
SD2_TE_ATTN = "cond_stage_model.model.transformer.resblocks.0.attn"


class TinySDXLText(nn.Module):
    """CLIP-L (HF names) + OpenCLIP bigG (fused in_proj) as `conditioner.embedders.0/1`."""

    def __init__(self):
        super().__init__()
        _put(self, SDXL_TE1_Q, nn.Linear(WIDTH, WIDTH))
        _put(self, SDXL_TE2_ATTN, nn.MultiheadAttention(WIDTH, 1))


class TinySD2Text(nn.Module):
    def __init__(self):
        super().__init__()
        _put(self, SD2_TE_ATTN, nn.MultiheadAttention(WIDTH, 1))


def checkpoint_of(model_class, seed: int):
    def state_dict():
        gen = torch.Generator().manual_seed(seed)
        return {k: torch.randn(v.shape, generator=gen) for k, v in model_class().state_dict().items()}
    return state_dict


def write_text_lora(path, seed: int, modules: dict, base_version: str, rank: int = 2) -> dict:
    """kohya LoRA for {kohya module name: (fan_in, fan_out)}; returns {kohya name: ΔW at m=1}
    (alpha = rank, so the scale is 1)."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for kohya, (fan_in, fan_out) in modules.items():
        down = torch.randn(rank, fan_in, generator=gen)
        up = torch.randn(fan_out, rank, generator=gen)
        tensors.update({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up,
                        f"{kohya}.alpha": torch.tensor(float(rank))})
        deltas[kohya] = up @ down
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": base_version})
    return deltas
