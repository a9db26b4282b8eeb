"""diffusers SD1-layout UNet / VAE / CLIP text encoder -> one A1111/LDM single-file state dict.

The inverse of the conversion `lora_core.app.checkpoints` does on load (diffusers' own
`convert_ldm_*_checkpoint`); tests check the round trip is exact. UNet names come from
`lora_core.targets.naming` (derived from the model's layout, so narrow test/demo UNets work),
the VAE's from the fixed LDM autoencoder naming below, the text encoder keeps its HF CLIP names
under `cond_stage_model.transformer.` as SD1 checkpoints store them.
"""
from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "cond_stage_model.transformer."


def unet_layout_of(unet):
    """The `naming.UNetLayout` of a diffusers UNet2DConditionModel, from its parameter names."""
    from lora_core.targets.layout import layout_from_diffusers

    layout = layout_from_diffusers({k: tuple(v.shape) for k, v in unet.state_dict().items()})
    if layout is None:
        raise ValueError("not a diffusers UNet2DConditionModel")
    return layout


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    from lora_core.targets.naming import unet_diffusers_to_ldm

    names = unet_diffusers_to_ldm(unet_layout_of(unet))
    out = {}
    for key, tensor in unet.state_dict().items():
        module, _, part = key.rpartition(".")
        if module not in names:
            raise KeyError(f"UNet tensor {key} has no LDM name")
        out[UNET_PREFIX + names[module] + "." + part] = tensor
    return out


_VAE_RULES = [
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$"),
     lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$"),
     lambda m: f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$"),
     lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$"),
     lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\.(.*)$"), lambda m: f"{m[1]}.norm_out.{m[2]}"),
]
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, tensor in vae.state_dict().items():
        new = None
        for pattern, fn in _VAE_RULES:
            m = pattern.match(key)
            if m:
                new = fn(m)
                break
        if new is None:
            m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$", key)
            if m:
                level = n_up - 1 - int(m[1])  # LDM numbers decoder levels from the bottom
                inner = f"block.{m[3]}" if m[3] is not None else "upsample"
                new = f"decoder.up.{level}.{inner}.{m[4]}"
            else:
                new = key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out[VAE_PREFIX + new] = tensor
    return out


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIP names under cond_stage_model.transformer.text_model. (transformers 5's
    CLIPTextModel has no `text_model.` level; SD1 checkpoints always do)."""
    out = {}
    for k, v in text_encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith(("text_model.", "text_projection")):
            k = "text_model." + k
        out[TE_PREFIX + k] = v
    return out


def sd1_state_dict(unet, vae, text_encoder, dtype=None) -> dict[str, torch.Tensor]:
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out
