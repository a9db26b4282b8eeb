"""GLoRA ΔW = scale·(W0·A + B), A and B low rank. Pure functions.

Current LyCORIS layout: a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in[, k]):  W0@a1@a2 + b1@b2
(conv: A acts on input channels, b optionally through a Tucker core bm).
Old layout (LyCORIS < 2): a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r):      W0@a2@a1 + b2@b1.
Which layout a module has, and so its rank, is `algorithms.GLoRA.old_layout`.
"""
from __future__ import annotations

import torch


def delta(base: torch.Tensor, a1, a2, b1, b2, bm=None, scale: float = 1.0, old_layout: bool = False) -> torch.Tensor:
    if old_layout:
        return (b2 @ b1 + (base @ a2) @ a1) * scale
    wa1 = a1.reshape(a1.shape[0], -1)  # (in, r)
    wa2 = a2.reshape(a2.shape[0], -1)  # (r, in)
    # A mixes input channels; for a conv it acts on axis 1 and leaves the kernel alone.
    w_a = torch.einsum("oi...,ir,rj->oj...", base, wa1, wa2)
    up = b1.reshape(b1.shape[0], -1)
    if bm is not None:
        w_b = torch.einsum("op,pq...,qi->oi...", up, bm, b2.reshape(b2.shape[0], -1))
    else:
        w_b = (up @ b2.reshape(b2.shape[0], -1)).reshape(base.shape)
    return (w_a + w_b.reshape(base.shape)) * scale
