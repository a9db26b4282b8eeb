"""Tiny diffusers / HF models with the SD1, SD2 and SDXL block layouts, and renamers that turn
their state dicts into LDM / A1111 checkpoints using lora_core's own name maps."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lora_core.targets import naming

CONTEXT = {"sd1": 32, "sd2": 48, "sdxl": 64}  # distinct widths keep the families apart in tests
TE_WIDTH = {"te1": 32, "te2": 32}


def tiny_unet(family: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    common = dict(sample_size=8, layers_per_block=2, attention_head_dim=8, norm_num_groups=8,
                  cross_attention_dim=CONTEXT[family])
    if family in ("sd1", "sd2"):
        return UNet2DConditionModel(
            block_out_channels=(32, 64, 64, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            use_linear_projection=family == "sd2", **common)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
        use_linear_projection=True, **common)


def tiny_layout(family: str) -> naming.UNetLayout:
    """The layout tiny_unet(family) has, written out by hand."""
    if family in ("sd1", "sd2"):
        return naming.UNetLayout((32, 64, 64, 64), 2, (True, True, True, False), (1, 1, 1, 0), 1)
    return naming.UNetLayout((32, 64, 64), 2, (False, True, True), (0, 2, 2), 2, add_embedding=True)


def tiny_clip(projection: bool = False, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def unet_to_ldm(state: dict, layout: naming.UNetLayout, prefix: str = naming.LDM_UNET_PREFIX) -> dict:
    """Rename a diffusers UNet state dict to LDM names with lora_core's map."""
    to_ldm = naming.unet_diffusers_to_ldm(layout)
    out = {}
    for name, tensor in state.items():
        module, part = name.rsplit(".", 1)
        out[f"{prefix}{to_ldm[module]}.{part}"] = tensor
    return out


def clip_to_openclip(state: dict, prefix: str) -> dict:
    """Rename an HF CLIP text encoder state dict to OpenCLIP names with lora_core's map, stacking
    q/k/v into in_proj in the row order naming.fused_rows gives. text_projection is transposed,
    as OpenCLIP stores it."""
    state = {naming.hf_clip_path(k): v for k, v in state.items()}
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(naming.HF_LAYER_PREFIX))
    out = {}
    fused: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for m in naming.clip_modules(layers):
        for part in ("weight", "bias"):
            tensor = state.get(f"{m.hf}.{part}")
            if tensor is None:
                continue
            if m.fused is None:
                out[prefix + naming.openclip_tensor_name(m.openclip, part)] = tensor
            else:
                fused.setdefault(naming.openclip_tensor_name(m.openclip, part), {})[m.fused] = tensor
    for name, parts in fused.items():
        total = sum(t.shape[0] for t in parts.values())
        whole = torch.empty((total,) + tuple(parts[0].shape[1:]), dtype=parts[0].dtype)
        for index, tensor in parts.items():
            start, stop = naming.fused_rows(index, total)
            whole[start:stop] = tensor
        out[prefix + name] = whole
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    return out


def clip_to_hf_ldm(state: dict, prefix: str) -> dict:
    """HF names under an LDM prefix, with the text_model level real checkpoints have."""
    return {prefix + naming.hf_clip_path(k): v for k, v in state.items()}


def ldm_checkpoint(family: str, unet, te1, te2=None) -> dict:
    """A full LDM-style checkpoint dict (UNet + text encoders) of the given tiny models."""
    ckpt = unet_to_ldm(unet.state_dict(), tiny_layout(family))
    if family == "sd1":
        ckpt.update(clip_to_hf_ldm(te1.state_dict(), "cond_stage_model.transformer."))
    elif family == "sd2":
        ckpt.update(clip_to_openclip(te1.state_dict(), "cond_stage_model.model."))
    else:
        ckpt.update(clip_to_hf_ldm(te1.state_dict(), "conditioner.embedders.0.transformer."))
        ckpt.update(clip_to_openclip(te2.state_dict(), "conditioner.embedders.1.model."))
    return ckpt
