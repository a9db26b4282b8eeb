"""LoHa ΔW: Hadamard product of two low-rank products, optionally Tucker-factored. Pure functions."""
from __future__ import annotations

import torch


def _half(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        # a: (out, r), b: (r, in_flat)
        return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)
    # Tucker: a: (r, out), b: (r, in), t: (r, r, kh, kw) -> (out, in, kh, kw)
    return torch.einsum("pq...,po,qi->oi...", t, a, b)


def delta(w1a, w1b, w2a, w2b, t1=None, t2=None, scale: float = 1.0) -> torch.Tensor:
    """ΔW = scale · (w1a@w1b) ⊙ (w2a@w2b); flat (out, in_flat) unless Tucker cores are given."""
    return _half(w1a, w1b, t1) * _half(w2a, w2b, t2) * scale
