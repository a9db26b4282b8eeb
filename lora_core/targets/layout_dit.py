"""Which DiT family (Flux.1, SD3) and which namespace a transformer's tensor names are in (no torch).

Names are given without the component prefix (``double_blocks.0...``, not
``model.diffusion_model.double_blocks.0...``). Structure decides, not widths, so scaled-down
test models are recognised like the full-size ones.
"""
from __future__ import annotations

from typing import Iterable

from .naming_dit import DiTSpec
from .naming_flux import FLUX
from .naming_sd3 import SD3

SPECS = {"flux": FLUX, "sd3": SD3}


def dit_family(names: Iterable[str]) -> tuple[str, str] | None:
    """(family, namespace) with namespace "diffusers" or "ldm", or None for anything else
    (a UNet, an empty model)."""
    names = list(names)
    heads = {n.partition(".")[0] for n in names}
    if "double_blocks" in heads or "single_blocks" in heads:
        return "flux", "ldm"
    if "joint_blocks" in heads:
        return "sd3", "ldm"
    if "single_transformer_blocks" in heads or "x_embedder.weight" in names:
        return "flux", "diffusers"
    if "transformer_blocks" in heads and "pos_embed.proj.weight" in names:
        return "sd3", "diffusers"
    if "transformer_blocks" in heads and "time_text_embed" in heads:
        # no patch embedder among the tensors: Flux's blocks have qk-norms on both streams
        # (norm_added_q) in every block; SD3's only with qk_norm set, so fall back on guidance/x_embedder
        return ("flux", "diffusers") if any(".attn.norm_added_q." in n for n in names) else ("sd3", "diffusers")
    return None


def spec_of(family: str) -> DiTSpec:
    return SPECS[family]
