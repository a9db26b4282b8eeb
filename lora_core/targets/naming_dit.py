"""Name maps of the DiT denoisers (Flux.1, SD3/3.5) between two namespaces. Pure strings: no torch.

Each family has the diffusers namespace (``transformer_blocks.0.attn.to_q``) and the one of the
original single-file checkpoints, which ComfyUI, Forge and kohya use (BFL ``double_blocks.0.img_attn.qkv``,
SD3 MMDiT ``joint_blocks.0.x_block.attn.qkv``). A module is in one of three relations:

* ``DiTPair``: the same tensor under two names;
* ``DiTFused``: one single-file tensor is several diffusers tensors stacked by rows (q, k, v and,
  in Flux's single blocks, the MLP input projection). Row sizes come from the live tensors: equal
  thirds for ``qkv``; for ``qkv_mlp`` three times the in-features, then the rest;
* ``DiTSwapped``: the same tensor with its two row halves swapped (the final AdaLayerNorm: the
  originals store (shift, scale), diffusers (scale, shift); see diffusers' ``swap_scale_shift``).

Tables are given per block kind (a ``BlockSpec``), so the pairs of a model are enumerated from the
block counts of its live tensors, as the UNet maps are from its layout.
"""
from __future__ import annotations

from dataclasses import dataclass

# Row split rules of a fused tensor.
EQUAL = "equal"          # n parts of equal rows
QKV_MLP = "qkv_mlp"      # q, k, v of `in_features` rows each, then the MLP projection (the rest)


@dataclass(frozen=True)
class DiTPair:
    diffusers: str
    ldm: str
    block: str | None


@dataclass(frozen=True)
class DiTFused:
    ldm: str
    parts: tuple[str, ...]  # diffusers module paths, in row order
    rule: str
    block: str | None


@dataclass(frozen=True)
class DiTSwapped:
    diffusers: str
    ldm: str
    block: str | None


@dataclass(frozen=True)
class BlockSpec:
    """One kind of numbered block: its prefixes in both namespaces, its lbw id pattern, and the
    relations of the modules inside one block (paths relative to the block)."""

    diffusers_prefix: str       # "transformer_blocks"
    ldm_prefix: str             # "double_blocks"
    block_id: str               # "D{:02d}"
    pairs: tuple[tuple[str, str], ...]
    fused: tuple[tuple[str, tuple[str, ...], str], ...] = ()
    # relations that hold only for the last block of this kind (SD3's context_pre_only block)
    last_pairs: tuple[tuple[str, str], ...] | None = None
    last_swapped: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DiTSpec:
    family: str
    blocks: tuple[BlockSpec, ...]
    top: tuple[tuple[str, str, str], ...]          # (diffusers, ldm, lbw block)
    top_swapped: tuple[tuple[str, str, str], ...]  # (diffusers, ldm, lbw block)


def block_counts(spec: DiTSpec, paths, namespace: str) -> dict[str, int]:
    """Blocks of each kind in a model, from its module or tensor paths (highest index + 1)."""
    counts: dict[str, int] = {}
    for b in spec.blocks:
        prefix = (b.diffusers_prefix if namespace == "diffusers" else b.ldm_prefix) + "."
        top = -1
        for p in paths:
            if p.startswith(prefix):
                num = p[len(prefix):].partition(".")[0]
                if num.isdigit():
                    top = max(top, int(num))
        counts[b.ldm_prefix] = top + 1
    return counts


def modules(spec: DiTSpec, counts: dict[str, int]) -> tuple[list[DiTPair], list[DiTFused], list[DiTSwapped]]:
    """Every relation of a model with `counts` blocks of each kind (keyed by ldm prefix)."""
    pairs = [DiTPair(d, l, blk) for d, l, blk in spec.top]
    swapped = [DiTSwapped(d, l, blk) for d, l, blk in spec.top_swapped]
    fused: list[DiTFused] = []
    for b in spec.blocks:
        n = counts.get(b.ldm_prefix, 0)
        for i in range(n):
            d0, l0, blk = f"{b.diffusers_prefix}.{i}", f"{b.ldm_prefix}.{i}", b.block_id.format(i)
            last = i == n - 1
            inner = b.last_pairs if last and b.last_pairs is not None else b.pairs
            pairs += [DiTPair(f"{d0}.{d}", f"{l0}.{l}", blk) for d, l in inner]
            if last:
                swapped += [DiTSwapped(f"{d0}.{d}", f"{l0}.{l}", blk) for d, l in b.last_swapped]
            fused += [DiTFused(f"{l0}.{l}", tuple(f"{d0}.{p}" for p in parts), rule, blk)
                      for l, parts, rule in b.fused]
    return pairs, fused, swapped


def fused_sizes(rule: str, n_parts: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Rows of each part of a fused tensor of `shape` (weight [out, in] or bias [out]).

    Raises ValueError when the rows cannot be split that way."""
    total = int(shape[0])
    if rule == EQUAL:
        if total % n_parts:
            raise ValueError(f"{total} rows do not split into {n_parts} equal parts")
        return (total // n_parts,) * n_parts
    if rule == QKV_MLP:
        if len(shape) < 2:
            raise ValueError("the q/k/v/MLP split is read from the weight's in-features")
        width = int(shape[1])
        if total <= 3 * width:
            raise ValueError(f"{total} rows leave no MLP part after 3×{width} for q, k, v")
        return (width, width, width, total - 3 * width)
    raise ValueError(f"unknown split rule {rule!r}")


def offsets(sizes) -> list[tuple[int, int]]:
    """[start, stop) of consecutive parts of the given sizes."""
    out, start = [], 0
    for s in sizes:
        out.append((start, start + int(s)))
        start += int(s)
    return out


def block_of_ldm(spec: DiTSpec, ldm_path: str) -> str | None:
    """lbw block id of a single-file module path that has no diffusers twin."""
    for b in spec.blocks:
        prefix = b.ldm_prefix + "."
        if ldm_path.startswith(prefix):
            num = ldm_path[len(prefix):].partition(".")[0]
            if num.isdigit():
                return b.block_id.format(int(num))
    return None


def block_of_diffusers(spec: DiTSpec, path: str) -> str | None:
    for b in spec.blocks:
        prefix = b.diffusers_prefix + "."
        if path.startswith(prefix):
            num = path[len(prefix):].partition(".")[0]
            if num.isdigit():
                return b.block_id.format(int(num))
    return None
