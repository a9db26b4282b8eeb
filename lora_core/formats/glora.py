"""GLoRA ΔW = scale·(W0·A + B), A and B low rank. Pure functions.

Current LyCORIS layout: a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in[, k]):  W0@a1@a2 + b1@b2
(conv: A acts on input channels, b optionally through a Tucker core bm).
Old layout (LyCORIS < 2): a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r):      W0@a2@a1 + b2@b1.
"""
from __future__ import annotations

import torch


def is_old_layout(base_shape, a1, a2, b1, b2) -> bool:
    out_dim, in_dim = int(base_shape[0]), int(base_shape[1])
    in_flat = 1
    for d in base_shape[1:]:
        in_flat *= int(d)
    new_ok = (a1.shape[0] == in_dim and b1.shape[0] == out_dim
              and b2.reshape(b2.shape[0], -1).shape[1] in (in_flat, in_dim))
    old_ok = (len(base_shape) == 2 and a1.dim() == 2 and b2.shape[0] == out_dim
              and b1.shape[-1] == in_dim and a2.shape[0] == in_dim)
    return old_ok and not new_ok


def rank(base_shape, a1, a2, b1, b2) -> int:
    return int(a1.shape[0]) if is_old_layout(base_shape, a1, a2, b1, b2) else int(a2.shape[0])


def delta(base: torch.Tensor, a1, a2, b1, b2, bm=None, scale: float = 1.0) -> torch.Tensor:
    if is_old_layout(base.shape, a1, a2, b1, b2):
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
