"""Single-file (BFL / LDM) module names with dots, as ComfyUI, Forge and BFL's own tools write
them: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` or `.lora_up.weight`, with or
without `base_model.model.`, `model.diffusion_model.` for SD's LDM UNet, BFL control LoRAs with
no prefix at all (`double_blocks.0...`, `single_blocks.0...`), and ComfyUI's text encoders
(`text_encoders.clip_l.transformer.`, `.clip_g.`, `.t5xxl.`)."""
from __future__ import annotations

from .base import Layout, unwrapped

_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "text_encoders.", "double_blocks.", "single_blocks.",
             "joint_blocks.", "cond_stage_model.")


class ComfyUI(Layout):
    name = "comfyui"
    label = "BFL / ComfyUI single-file names (diffusion_model.)"

    def owns(self, key):
        return unwrapped(key).startswith(_PREFIXES)


LAYOUT = ComfyUI()
