"""Butterfly OFT ΔW (LyCORIS `boft`): m stages of block rotations with butterfly row shuffles. Pure.

oft_blocks has shape (m, n, b, b) with out = n·b. Stage i gathers the rows so that each block of
b rows mixes pairs of rows 2^i·b/2 apart, applies R_i blockwise, and scatters them back.
ΔW = rescale·W_native − W0.
"""
from __future__ import annotations

import torch

from .oft import cayley


def butterfly_order(out_dim: int, block: int, stage: int, device=None) -> torch.Tensor:
    """Row order of stage `stage`: within each group of 2k rows (k = 2^stage·b/2) interleave the
    two halves, so consecutive rows i, i+k end up next to each other."""
    k = (2 ** stage) * (block // 2)
    return torch.arange(out_dim, device=device).reshape(-1, 2, k).transpose(1, 2).reshape(-1)


def delta(base: torch.Tensor, blocks: torch.Tensor, constraint: float = 0.0,
          rescale: torch.Tensor | None = None) -> torch.Tensor:
    m, n, b, _ = blocks.shape
    r = cayley(blocks, constraint)
    out_dim = base.shape[0]
    w = base.reshape(out_dim, -1)
    for stage in range(m):
        order = butterfly_order(out_dim, b, stage, device=w.device)
        gathered = w[order].reshape(n, b, -1)
        rotated = (r[stage] @ gathered).reshape(out_dim, -1)
        w = torch.empty_like(rotated)
        w[order] = rotated
    new = w.reshape(base.shape)
    if rescale is not None:
        new = new * rescale.reshape(-1, *[1] * (base.dim() - 1))
    return new - base
