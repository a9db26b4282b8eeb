"""LoRA / LoCon ΔW: up·down, optionally through a Tucker core (`lora_mid`). Pure functions
(rank, shape hint and validation: `algorithms.LoRA`)."""
from __future__ import annotations

import torch


def truncate(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, dyn: int | None):
    """DyLoRA: keep only the first `dyn` ranks (the scale stays alpha / full rank, as trained)."""
    if dyn is None or dyn >= down.shape[0]:
        return up, down, mid
    k = max(int(dyn), 1)
    return up[:, :k], down[:k], (mid[:k, :k] if mid is not None else None)


def delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None = None, scale: float = 1.0,
          dyn: int | None = None) -> torch.Tensor:
    """ΔW = scale · up @ down, shaped (out, in, *kernel).

    up: (out, r[,1,1]); down: (r, in[, kh, kw]); mid: (r, r, kh, kw) with down/up 1×1 (Tucker).
    """
    up, down, mid = truncate(up, down, mid, dyn)
    out_dim = up.shape[0]
    up2 = up.reshape(out_dim, -1)
    if mid is None:
        result = up2 @ down.reshape(down.shape[0], -1)
        return result.reshape(out_dim, *down.shape[1:]) * scale
    down2 = down.reshape(down.shape[0], -1)
    # ΔW[o,i,…] = Σ_pq up[o,p] · mid[p,q,…] · down[q,i]
    result = torch.einsum("op,pq...,qi->oi...", up2, mid, down2)
    return result * scale


def low_rank(up: torch.Tensor, down: torch.Tensor, scale: float, dyn: int | None = None):
    """(up2d (out, r), down2d (r, in_flat), scale) so that ΔW = scale·up2d@down2d."""
    up, down, _ = truncate(up, down, None, dyn)
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), scale
