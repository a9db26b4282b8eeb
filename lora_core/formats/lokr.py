"""LoKr ΔW: Kronecker product of two factors, each full or low-rank (w2 optionally Tucker). Pure."""
from __future__ import annotations

import torch


def factor1(w1=None, w1a=None, w1b=None) -> torch.Tensor:
    return w1 if w1 is not None else w1a @ w1b


def factor2(w2=None, w2a=None, w2b=None, t2=None) -> torch.Tensor:
    if w2 is not None:
        return w2
    if t2 is not None:
        # w2a: (r, b), w2b: (r, d), t2: (r, r, kh, kw) -> (b, d, kh, kw)
        return torch.einsum("pq...,pb,qd->bd...", t2, w2a, w2b)
    flat = w2a @ w2b.reshape(w2b.shape[0], -1)
    return flat.reshape(w2a.shape[0], *w2b.shape[1:])


def delta(w1=None, w1a=None, w1b=None, w2=None, w2a=None, w2b=None, t2=None, scale: float = 1.0) -> torch.Tensor:
    """ΔW = scale · kron(w1, w2); w1 gets trailing 1-dims so a conv w2 keeps its kernel."""
    a = factor1(w1, w1a, w1b)
    b = factor2(w2, w2a, w2b, t2)
    while a.dim() < b.dim():
        a = a.unsqueeze(-1)
    return torch.kron(a, b.contiguous()) * scale
