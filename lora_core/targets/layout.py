"""Infer a UNet's block layout and its model family from tensor names and shapes (no torch).

Inputs are mappings ``tensor name -> shape`` with the component prefix already removed, so the
same code reads a live model, an A1111 ``named_parameters()`` dump or a checkpoint state dict.
Reading the layout from the model (not assuming the full-size one) keeps the name maps exact for
variants (inpainting, SDXL refiner) and for the scaled-down models the tests build.
"""
from __future__ import annotations

from collections import defaultdict
from types import MappingProxyType
from typing import Mapping, Sequence

from .naming import UNetLayout

Shapes = Mapping[str, Sequence[int]]


def _count(indices: set[int]) -> int:
    """Number of consecutive indices from 0 (the structure is malformed if there are gaps)."""
    n = len(indices)
    if indices and (min(indices) != 0 or max(indices) != n - 1):
        raise ValueError(f"non-contiguous block indices {sorted(indices)}")
    return n


def layout_from_diffusers(shapes: Shapes) -> UNetLayout | None:
    """Layout of a diffusers UNet2DConditionModel from its parameter names; None if it is not one."""
    resnets: dict[int, set[int]] = defaultdict(set)
    attn_levels: set[int] = set()
    depth: dict[int, set[int]] = defaultdict(set)
    mid_depth: set[int] = set()
    mid_attention = False
    for name in shapes:
        p = name.split(".")
        if p[0] == "down_blocks" and len(p) > 3:
            level = int(p[1])
            if p[2] == "resnets":
                resnets[level].add(int(p[3]))
            elif p[2] == "attentions":
                attn_levels.add(level)
                if p[3] == "0" and len(p) > 5 and p[4] == "transformer_blocks":
                    depth[level].add(int(p[5]))
        elif p[0] == "mid_block" and len(p) > 2 and p[1] == "attentions":
            mid_attention = True
            if len(p) > 4 and p[3] == "transformer_blocks":
                mid_depth.add(int(p[4]))
    if not resnets:
        return None
    levels = _count(set(resnets))
    lpb = _count(resnets[0])
    channels = tuple(int(shapes[f"down_blocks.{lv}.resnets.0.conv1.weight"][0]) for lv in range(levels))
    return UNetLayout(
        block_out_channels=channels,
        layers_per_block=lpb,
        attention=tuple(lv in attn_levels for lv in range(levels)),
        transformer_depth=tuple(_count(depth[lv]) for lv in range(levels)),
        mid_depth=_count(mid_depth),
        add_embedding="add_embedding.linear_1.weight" in shapes,
        mid_attention=mid_attention,
    )


def layout_from_ldm(shapes: Shapes) -> UNetLayout | None:
    """Layout of an LDM UNet (``input_blocks`` / ``middle_block`` / ``output_blocks``)."""
    inputs: set[int] = set()
    outputs: set[int] = set()
    downsamplers: set[int] = set()
    attn_inputs: set[int] = set()
    depth: dict[int, set[int]] = defaultdict(set)
    mid_depth: set[int] = set()
    mid_attention = False
    for name in shapes:
        p = name.split(".")
        if p[0] == "input_blocks" and len(p) > 3:
            n = int(p[1])
            inputs.add(n)
            if p[2] == "0" and p[3] == "op":
                downsamplers.add(n)
            elif p[2] == "1":
                attn_inputs.add(n)
                if p[3] == "transformer_blocks" and len(p) > 4:
                    depth[n].add(int(p[4]))
        elif p[0] == "output_blocks" and len(p) > 1:
            outputs.add(int(p[1]))
        elif p[0] == "middle_block" and len(p) > 2 and p[1] == "1" and p[2] in ("transformer_blocks", "proj_in"):
            mid_attention = True
            if p[2] == "transformer_blocks" and len(p) > 3:
                mid_depth.add(int(p[3]))
    if not inputs:
        return None
    levels = len(downsamplers) + 1
    n_in = _count(inputs)
    # input_blocks = conv_in + levels * layers_per_block resnets + (levels - 1) downsamplers
    lpb, rest = divmod(n_in - levels, levels)
    if rest or lpb < 1 or _count(outputs) != levels * (lpb + 1):
        raise ValueError(f"unrecognised LDM UNet: {n_in} input blocks, {len(outputs)} output blocks, "
                         f"{levels} levels")
    firsts = [1 + lv * (lpb + 1) for lv in range(levels)]
    return UNetLayout(
        block_out_channels=tuple(int(shapes[f"input_blocks.{f}.0.in_layers.2.weight"][0]) for f in firsts),
        layers_per_block=lpb,
        attention=tuple(f in attn_inputs for f in firsts),
        transformer_depth=tuple(_count(depth[f]) for f in firsts),
        mid_depth=_count(mid_depth),
        add_embedding="label_emb.0.0.weight" in shapes,
        mid_attention=mid_attention,
    )


# Cross-attention context widths of the full-size models.
_CONTEXT_DIM_FAMILY = MappingProxyType({768: "sd1", 1024: "sd2", 2048: "sdxl"})


def family_from_unet_shapes(
    unet_shapes: Shapes,
    namespace: str,
    text_encoders: Mapping[str, str] | None = None,
) -> str:
    """Family ("sd1", "sd2", "sdxl" or "unknown") from UNet tensor shapes and text encoders.

    `namespace` is "diffusers" or "ldm" (the UNet's names); `text_encoders` maps component
    ("te1"/"te2") to its namespace ("hf"/"openclip"). Full-size models are told apart by the
    cross-attention width; scaled-down ones by structure: SDXL has the text_time embedding and a
    second text encoder, SD2 an OpenCLIP text encoder and linear proj_in/proj_out.
    """
    text_encoders = text_encoders or {}
    add_embedding = ("add_embedding.linear_1.weight" if namespace == "diffusers" else "label_emb.0.0.weight")
    context_dim = None
    proj_in_ndim = None
    for name, shape in unet_shapes.items():
        if context_dim is None and name.endswith("attn2.to_k.weight"):
            context_dim = int(shape[1])
        elif proj_in_ndim is None and name.endswith("proj_in.weight"):
            proj_in_ndim = len(shape)
        if context_dim is not None and proj_in_ndim is not None:
            break
    if context_dim in _CONTEXT_DIM_FAMILY:
        return _CONTEXT_DIM_FAMILY[context_dim]
    if add_embedding in unet_shapes or "te2" in text_encoders:
        return "sdxl"
    if text_encoders.get("te1") == "openclip" or proj_in_ndim == 2:
        return "sd2"
    if unet_shapes or text_encoders:
        return "sd1"
    return "unknown"
