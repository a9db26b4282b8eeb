"""(IA)³ ΔW: the base weight scaled per output channel (or per input channel with on_input). Pure."""
from __future__ import annotations

import torch


def delta(base: torch.Tensor, weight: torch.Tensor, on_input: bool) -> torch.Tensor:
    """ΔW = W0·diag(w) on the input axis, or diag(w)·W0 on the output axis (native W = W0 + ΔW)."""
    w = weight.reshape(-1)
    if on_input:
        shape = [1, w.numel()] + [1] * (base.dim() - 2)
    else:
        shape = [w.numel()] + [1] * (base.dim() - 1)
    return base * w.reshape(shape)
