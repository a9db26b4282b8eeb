"""kohya-ss sd-scripts (and what copies its spelling: A1111/Forge extractions, Civitai trainer):
flat module names behind `lora_unet_` / `lora_te_` / `lora_te1_..3_`.

SD1/SD2/SDXL UNet names are diffusers' or LDM's; Flux's are BFL's (`lora_unet_double_blocks_0_img_attn_qkv`,
`lora_unet_single_blocks_0_linear1`), SD3's the LDM MMDiT's (`lora_unet_joint_blocks_0_x_block_attn_qkv`).
Text encoders: te1 CLIP-L, te2 CLIP-G (SD3, SDXL), T5-XXL as `lora_te3_` (current lora_flux.py and
lora_sd3.py) or, in early lora_flux.py, `lora_te2_` with T5 module names (keys.py makes those te3).
Early lora_flux.py also wrote the transformer as `lora_flux_`.
"""
from __future__ import annotations

from ..keys import ParsedKey, module_key, split_suffix
from .base import Layout

_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_flux_", "lora_prior_unet_")


class Kohya(Layout):
    name = "kohya"
    label = "kohya-ss sd-scripts (lora_unet_/lora_te*_)"

    def owns(self, key):
        return key.startswith(_PREFIXES)

    def parse(self, key):
        split = split_suffix(key)
        if split is None:
            return None
        raw, suffix = split
        name = "lora_unet_" + raw[len("lora_flux_"):] if raw.startswith("lora_flux_") else raw
        return ParsedKey(module_key(name), raw, suffix)


LAYOUT = Kohya()
