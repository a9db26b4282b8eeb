"""Tiny Flux.1 / SD3 transformers and their single-file (BFL / MMDiT) state dicts for the targets tests.

The single-file tensors are built from the original architectures' shapes (written here from the
BFL / MMDiT model definitions, not from lora_core's name maps), then turned into the diffusers
layout by diffusers' own converters (`single_file_utils`) and loaded strictly into the tiny
diffusers model: that is the oracle for which tensor is which.
"""
from __future__ import annotations

import contextlib

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders import single_file_utils as sfu

from lora_core.formats.adapter import Adapter
from lora_core.formats.lorafile import LoraFile

# Flux: hidden 16 (2 heads × 8), MLP 64, 2 double + 2 single blocks, guidance embedder.
FLUX = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4))
# SD3.5-medium-like: hidden 16, 3 joint blocks, block 0 with dual attention, qk norms.
SD3 = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
           joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
           pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")


def tiny_flux(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**FLUX)


def tiny_sd3(seed: int = 0) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**SD3)


def _linear(sd, name, out, inp, gen):
    sd[f"{name}.weight"] = torch.randn(out, inp, generator=gen)
    sd[f"{name}.bias"] = torch.randn(out, generator=gen)


def bfl_flux_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random BFL-layout Flux transformer of the FLUX config (names as in flux/model.py)."""
    g = torch.Generator().manual_seed(seed)
    h = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]
    mlp, hd = 4 * h, FLUX["attention_head_dim"]
    sd: dict[str, torch.Tensor] = {}
    _linear(sd, "img_in", h, FLUX["in_channels"], g)
    _linear(sd, "txt_in", h, FLUX["joint_attention_dim"], g)
    for emb, width in (("time_in", 256), ("vector_in", FLUX["pooled_projection_dim"]), ("guidance_in", 256)):
        _linear(sd, f"{emb}.in_layer", h, width, g)
        _linear(sd, f"{emb}.out_layer", h, h, g)
    for i in range(FLUX["num_layers"]):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}"
            _linear(sd, f"{p}_mod.lin", 6 * h, h, g)
            _linear(sd, f"{p}_attn.qkv", 3 * h, h, g)
            sd[f"{p}_attn.norm.query_norm.scale"] = torch.randn(hd, generator=g)
            sd[f"{p}_attn.norm.key_norm.scale"] = torch.randn(hd, generator=g)
            _linear(sd, f"{p}_attn.proj", h, h, g)
            _linear(sd, f"{p}_mlp.0", mlp, h, g)
            _linear(sd, f"{p}_mlp.2", h, mlp, g)
    for i in range(FLUX["num_single_layers"]):
        p = f"single_blocks.{i}"
        _linear(sd, f"{p}.linear1", 3 * h + mlp, h, g)
        _linear(sd, f"{p}.linear2", h, h + mlp, g)
        sd[f"{p}.norm.query_norm.scale"] = torch.randn(hd, generator=g)
        sd[f"{p}.norm.key_norm.scale"] = torch.randn(hd, generator=g)
        _linear(sd, f"{p}.modulation.lin", 3 * h, h, g)
    _linear(sd, "final_layer.linear", FLUX["patch_size"] ** 2 * FLUX["in_channels"], h, g)
    _linear(sd, "final_layer.adaLN_modulation.1", 2 * h, h, g)
    return sd


@contextlib.contextmanager
def _flux_width(h: int):
    """diffusers' Flux converter splits single_blocks.N.linear1 at the full model's fixed widths
    (3072, mlp 12288); for the tiny model the same split is taken at its own widths."""
    real = torch.split

    def split(tensor, sizes, dim=0):
        if isinstance(sizes, (tuple, list)) and tuple(sizes) == (3072, 3072, 3072, 12288):
            sizes = (h, h, h, 4 * h)
        return real(tensor, sizes, dim=dim)

    sfu.torch.split = split
    try:
        yield
    finally:
        sfu.torch.split = real


def flux_to_diffusers(bfl: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own converter, on a copy (it pops from its input)."""
    h = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]
    with _flux_width(h):
        return sfu.convert_flux_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in bfl.items()})


def mmdit_sd3_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random MMDiT-layout SD3 transformer of the SD3 config (names as in sd3's mmditx.py)."""
    g = torch.Generator().manual_seed(seed)
    h = SD3["num_attention_heads"] * SD3["attention_head_dim"]
    hd, n = SD3["attention_head_dim"], SD3["num_layers"]
    ps, cin = SD3["patch_size"], SD3["in_channels"]
    sd: dict[str, torch.Tensor] = {"pos_embed": torch.randn(1, SD3["pos_embed_max_size"] ** 2, h, generator=g)}
    sd["x_embedder.proj.weight"] = torch.randn(h, cin, ps, ps, generator=g)
    sd["x_embedder.proj.bias"] = torch.randn(h, generator=g)
    _linear(sd, "t_embedder.mlp.0", h, 256, g)
    _linear(sd, "t_embedder.mlp.2", h, h, g)
    _linear(sd, "y_embedder.mlp.0", h, SD3["pooled_projection_dim"], g)
    _linear(sd, "y_embedder.mlp.2", h, h, g)
    _linear(sd, "context_embedder", SD3["caption_projection_dim"], SD3["joint_attention_dim"], g)
    for i in range(n):
        last = i == n - 1
        for s in ("x_block", "context_block"):
            p = f"joint_blocks.{i}.{s}"
            _linear(sd, f"{p}.attn.qkv", 3 * h, h, g)
            sd[f"{p}.attn.ln_q.weight"] = torch.randn(hd, generator=g)
            sd[f"{p}.attn.ln_k.weight"] = torch.randn(hd, generator=g)
            if s == "x_block" or not last:
                _linear(sd, f"{p}.attn.proj", h, h, g)
                _linear(sd, f"{p}.mlp.fc1", 4 * h, h, g)
                _linear(sd, f"{p}.mlp.fc2", h, 4 * h, g)
            mods = 9 if (s == "x_block" and i in SD3["dual_attention_layers"]) else (2 if last and s == "context_block" else 6)
            _linear(sd, f"{p}.adaLN_modulation.1", mods * h, h, g)
        if i in SD3["dual_attention_layers"]:
            p = f"joint_blocks.{i}.x_block.attn2"
            _linear(sd, f"{p}.qkv", 3 * h, h, g)
            sd[f"{p}.ln_q.weight"] = torch.randn(hd, generator=g)
            sd[f"{p}.ln_k.weight"] = torch.randn(hd, generator=g)
            _linear(sd, f"{p}.proj", h, h, g)
    _linear(sd, "final_layer.linear", ps * ps * SD3["out_channels"], h, g)
    _linear(sd, "final_layer.adaLN_modulation.1", 2 * h, h, g)
    return sd


def sd3_to_diffusers(mmdit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return sfu.convert_sd3_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in mmdit.items()})


def lora_file(modules: dict[str, tuple], family: str, name: str = "dit") -> LoraFile:
    """A LoraFile from {canonical key: (algo, tensors)} (what formats' loader hands the patcher)."""
    adapters = {k: Adapter(k, algo, tensors) for k, (algo, tensors) in modules.items()}
    return LoraFile(path=f"{name}.safetensors", name=name, metadata={}, adapters=adapters, family=family)


def low_rank(out: int, inp: int, rank: int, gen: torch.Generator, alpha: float | None = None) -> tuple:
    t = {"lora_up.weight": torch.randn(out, rank, generator=gen) * 0.1,
         "lora_down.weight": torch.randn(rank, inp, generator=gen) * 0.1}
    if alpha is not None:
        t["alpha"] = torch.tensor(float(alpha))
    return ("lora", t)
