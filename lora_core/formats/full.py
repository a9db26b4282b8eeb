"""Full-matrix difference (LyCORIS `full`): ΔW and Δbias are stored as is. Pure functions."""
from __future__ import annotations

import torch


def delta(diff: torch.Tensor) -> torch.Tensor:
    return diff


def delta_bias(diff_b: torch.Tensor | None) -> torch.Tensor | None:
    return diff_b
