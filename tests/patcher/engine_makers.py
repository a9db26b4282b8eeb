"""Real LoRA files for engine/merge tests: PEFT LoRAs on a tiny SD1-layout UNet (and CLIP text
encoder), saved with diffusers' own `save_lora_weights`, optionally converted to kohya keys with
diffusers' `convert_state_dict_to_kohya`. Models are built in code, as small as the layout allows."""
from __future__ import annotations

import os

import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def base_models(seed: int = 0):
    """The tiny SD1-layout UNet and CLIP text encoder every LoRA here is made for (same seed,
    same weights): two levels (cross-attention, plain), one layer per block, 8/16 channels."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        attention_head_dim=4, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    torch.manual_seed(seed + 1)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet.eval(), te.eval()


def _attach(model, targets, rank, alpha, seed):
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)
    # inject_adapter_in_model works on any torch module (transformers' add_adapter wants peft>=0.22)
    inject_adapter_in_model(cfg, model, adapter_name="default")
    return cfg.to_dict()


def make_lora(directory, name: str, seed: int, rank: int = 4, alpha: float = 8.0, with_te: bool = True,
              kohya: bool = False, metadata: dict | None = None) -> str:
    """Save one PEFT LoRA (random A and B) for base_models(); returns the file path."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    unet, te = base_models()
    unet_meta = _attach(unet, UNET_TARGETS, rank, alpha, seed)
    te_sd = te_meta = None
    if with_te:
        te_meta = _attach(te, TE_TARGETS, rank, alpha, seed + 1000)
        te_sd = get_peft_model_state_dict(te)
    os.makedirs(directory, exist_ok=True)
    fname = f"{name}.safetensors"
    # the adapter metadata carries lora_alpha (without it every reader assumes alpha = rank)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        os.fspath(directory), unet_lora_layers=get_peft_model_state_dict(unet), text_encoder_lora_layers=te_sd,
        unet_lora_adapter_metadata=unet_meta, text_encoder_lora_adapter_metadata=te_meta, weight_name=fname)
    path = os.path.join(os.fspath(directory), fname)
    if kohya or metadata:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            kept = dict(f.metadata() or {})
        state = load_file(path)
        if kohya:
            state = convert_state_dict_to_kohya(state)
            for k in list(state):  # the converter writes alpha = rank; use the real lora_alpha
                if k.endswith(".alpha"):
                    state[k] = torch.tensor(float(alpha))
            kept = {}
        kept.update(metadata or {})
        save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=kept)
    return path


def diffusers_fused_unet(stack):
    """diffusers' own result, through its public LoRA loader: read each file with
    `lora_state_dict` (which also returns the adapter metadata carrying lora_alpha), load it into
    the UNet as a named adapter, `set_adapters` with the weights, `fuse_lora`, `unload_lora`.

    stack: [(path, weight)]. Returns the fused UNet's state dict.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    unet, _ = base_models()
    names = []
    for i, (path, _w) in enumerate(stack):
        state, alphas, metadata = Loader.lora_state_dict(path, return_lora_metadata=True)
        Loader.load_lora_into_unet(state, alphas, unet, adapter_name=f"a{i}", metadata=metadata)
        names.append(f"a{i}")
    unet.set_adapters(names, [w for _p, w in stack])
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def peft_merged_text_encoder(path, weight: float = 1.0, alpha: float = 8.0):
    """PEFT's own merge of the text-encoder part of a diffusers LoRA file, at `weight`."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    _, te = base_models()
    state = {k[len("text_encoder."):]: v for k, v in load_file(path).items() if k.startswith("text_encoder.")}
    rank = next(v.shape[0] for k, v in state.items() if "lora_A" in k)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TE_TARGETS)
    inject_adapter_in_model(cfg, te, adapter_name="default")
    set_peft_model_state_dict(te, state, adapter_name="default")
    for module in te.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(weight)
            module.merge(safe_merge=True)
    out = {}
    for name, module in te.named_modules():
        if isinstance(module, LoraLayer):
            out[name] = module.get_base_layer().weight.detach().clone()
    return out


def tiny_ldm_checkpoint(dtype=torch.float32):
    """An LDM-layout single-file SD1 checkpoint (UNet + text encoder + non-weight entries).

    UNet names come from lora_core's own map; tests check them independently by converting back
    with diffusers' convert_ldm_unet_checkpoint."""
    from lora_core.targets import naming
    from lora_core.targets.layout import layout_from_diffusers

    unet, te = base_models()
    state = unet.state_dict()
    to_ldm = naming.unet_diffusers_to_ldm(layout_from_diffusers({k: v.shape for k, v in state.items()}))
    ckpt = {}
    for name, tensor in state.items():
        module, part = name.rsplit(".", 1)
        ckpt[f"{naming.LDM_UNET_PREFIX}{to_ldm[module]}.{part}"] = tensor
    for name, tensor in te.state_dict().items():
        ckpt["cond_stage_model.transformer." + name] = tensor
    ckpt = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in ckpt.items()}
    ckpt["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(16)[None]
    ckpt["alphas_cumprod"] = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
    return ckpt

