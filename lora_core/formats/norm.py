"""Norm-layer adapters (LyCORIS `w_norm`/`b_norm`): additive on a norm's weight and bias. Pure."""
from __future__ import annotations

import torch


def delta(w_norm: torch.Tensor) -> torch.Tensor:
    return w_norm


def delta_bias(b_norm: torch.Tensor | None) -> torch.Tensor | None:
    return b_norm
