"""XLabs-AI x-flux LoRAs: attention-processor LoRAs on the BFL Flux model,
`double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight` (1: image stream, 2: text
stream) and `single_blocks.N.processor.{qkv,proj}_lora.{down,up}.weight`, optionally behind
`diffusion_model.`. No alpha is stored: x-flux scales by 1 (alpha = rank).

Double blocks map onto the BFL tensors they add to (qkv_lora1 -> img_attn.qkv, proj_lora2 ->
txt_attn.proj, ...). A single block's qkv_lora adds to the q/k/v rows of `linear1` only (the MLP
rows of that fused tensor get nothing), which no single-file module is, so it is split here into
diffusers' to_q/to_k/to_v (the up factor's row thirds, the down factor shared): exact, and
`targets` resolves those on either namespace. Its proj_lora is `linear2` (x-flux's 15360-wide
input), as diffusers' converter reads it.
"""
from __future__ import annotations

import logging
import re

from ..keys import ParsedKey
from .base import Layout, unwrapped

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^(?:diffusion_model\.)?(?P<kind>double|single)_blocks\.(?P<n>\d+)\.processor\."
                  r"(?P<what>qkv|proj)_lora(?P<stream>[12]?)\.(?P<ud>down|up)\.weight$")
_DOUBLE = {("qkv", "1"): "img_attn_qkv", ("qkv", "2"): "txt_attn_qkv",
           ("proj", "1"): "img_attn_proj", ("proj", "2"): "txt_attn_proj"}
_SINGLE_QKV = "xlabs-single-qkv"   # placeholder flat name, split by regroup


class XLabs(Layout):
    name = "xlabs"
    label = "XLabs-AI x-flux (double_blocks.N.processor.qkv_lora1)"

    def owns(self, key):
        return ".processor." in key and "_lora" in key and _KEY.match(unwrapped(key)) is not None

    def parse(self, key):
        m = _KEY.match(unwrapped(key))
        if m is None:
            return None
        raw = key.rsplit(".", 2)[0]
        suffix = "lora_down.weight" if m.group("ud") == "down" else "lora_up.weight"
        n, what, stream = m.group("n"), m.group("what"), m.group("stream")
        if m.group("kind") == "double":
            flat = _DOUBLE.get((what, stream or "1"))
            return ParsedKey(f"unet:double_blocks_{n}_{flat}", raw, suffix)
        if what == "proj":
            return ParsedKey(f"unet:single_blocks_{n}_linear2", raw, suffix)
        return ParsedKey(f"unet:{_SINGLE_QKV}_{n}", raw, suffix)

    def regroup(self, groups, module_of):
        for raw, key in list(module_of.items()):
            if key is None or not key.startswith(f"unet:{_SINGLE_QKV}_"):
                continue
            n = key.rsplit("_", 1)[1]
            parts = groups.pop(raw)
            del module_of[raw]
            up, down = parts.get("lora_up.weight"), parts.get("lora_down.weight")
            if up is None or down is None or up.dim() != 2 or up.shape[0] % 3:
                logger.info("XLabs single block %s: q/k/v LoRA of unusable shape, skipped", raw)
                groups[raw], module_of[raw] = parts, None   # reported as not understood
                continue
            rows = up.shape[0] // 3
            for i, proj in enumerate(("to_q", "to_k", "to_v")):
                part_raw = f"{raw}[{proj}]"
                groups[part_raw] = {**parts, "lora_up.weight": up[i * rows:(i + 1) * rows]}
                module_of[part_raw] = f"unet:single_transformer_blocks_{n}_attn_{proj}"


LAYOUT = XLabs()
