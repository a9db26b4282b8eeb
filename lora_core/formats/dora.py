"""DoRA: W = m · (W0 + ΔW) / ‖W0 + ΔW‖, norm per output row or per input column. Pure functions.

LyCORIS writes `dora_scale` as (out, 1, …) with wd_on_out (default) or (1, in, …) without; PEFT
writes `lora_magnitude_vector` as (out,) (per output row). ΔW_dora = W_native(W0) − W0.
"""
from __future__ import annotations

import torch


def norm_on_output(magnitude: torch.Tensor, base_shape, peft: bool = False) -> bool:
    """True if the magnitude is per output row, False if per input column.

    LyCORIS' dora_scale says it by its shape: (out, 1, …) or (1, in, …). PEFT's magnitude is per
    output channel whatever its shape ((out,) for Linear, (1, out, 1, 1) for Conv2d)."""
    out_dim = int(base_shape[0])
    in_dim = int(base_shape[1]) if len(base_shape) > 1 else 1
    shape = tuple(magnitude.shape)
    if peft and magnitude.numel() == out_dim:
        return True
    if magnitude.numel() == out_dim and (len(shape) <= 1 or shape[0] == out_dim):
        return True
    if magnitude.numel() == in_dim and len(shape) >= 2 and shape[0] == 1:
        return False
    raise ValueError(f"DoRA magnitude of shape {list(shape)} fits neither rows nor columns of {list(base_shape)}")


def apply(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, peft: bool = False) -> torch.Tensor:
    """ΔW after weight decomposition: m·(W0+ΔW)/‖W0+ΔW‖ − W0."""
    merged = base + delta
    eps = torch.finfo(merged.dtype).eps
    if norm_on_output(magnitude, base.shape, peft):
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1) + eps
        factor = (magnitude.reshape(-1) / norm).reshape(-1, *[1] * (base.dim() - 1))
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1) + eps
        factor = (magnitude.reshape(-1) / norm).reshape(1, -1, *[1] * (base.dim() - 2))
    return merged * factor - base
