"""Diagonal OFT ΔW: a block-diagonal rotation of the output channels. Pure functions.

Both LyCORIS (`oft_blocks`, alpha = constraint) and kohya's OFT (same layout, constraint
alpha·out_dim) store generators B and rotate W0 block by block: W = Rᵀ·W0 per block,
R = (I+Q)(I−Q)⁻¹, Q = B − Bᵀ. LyCORIS before 4.0 stored `oft_diag`, the rotation R itself
(already rescaled), which is applied as stored (A1111's network_oft.py, `is_R`).
The native weight is not W0 plus something independent of W0, so ΔW = W_native(W0) − W0.
"""
from __future__ import annotations

import torch


def cayley(blocks: torch.Tensor, constraint: float = 0.0) -> torch.Tensor:
    """Orthogonal R from skew-symmetric Q = B − Bᵀ, with ‖Q‖ clamped to `constraint` when > 0."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    return (eye + q) @ torch.linalg.inv(eye - q)


def rotate(base: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rᵀ applied to each block of output channels of W0 (R: (n, b, b), out = n·b)."""
    n, b, _ = r.shape
    blocks = base.reshape(n, b, -1)
    return (r.transpose(1, 2) @ blocks).reshape(base.shape)


def delta_stored(base: torch.Tensor, r: torch.Tensor, rescale: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = rescale·Rᵀ·W0 − W0 for a stored rotation R (rescale: per output channel, optional)."""
    new = rotate(base, r)
    if rescale is not None:
        new = new * rescale.reshape(-1, *[1] * (base.dim() - 1))
    return new - base


def delta(base: torch.Tensor, blocks: torch.Tensor, constraint: float = 0.0,
          rescale: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = rescale·Rᵀ·W0 − W0 with R the Cayley rotation of the generators `blocks`."""
    return delta_stored(base, cayley(blocks, constraint), rescale)
