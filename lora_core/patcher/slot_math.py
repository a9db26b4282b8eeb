"""The one formula the patcher evaluates: W = W0 + Σ mᵢ·ΔWᵢ, written into the live tensor.

* Plain low-rank adapters on the slot are stacked into ONE matmul by concatenating their ranks,
  with mᵢ·scaleᵢ folded into the `up` factor: Σ mᵢ·sᵢ·Uᵢ@Dᵢ = [m₁s₁U₁ | m₂s₂U₂ | …] @ [D₁; D₂; …].
* Other adapters (LoHa, LoKr, OFT, …) give their fp32 ΔW through `Adapter.delta(W0)`.
* The sum is added to W0 and rounded to the weight's dtype exactly once (`torch.add(..., out=)`
  computes in the promoted dtype, fp32 at least, and casts on store).
* The result depends only on (W0, contributions), which is why recomputing a slot from its
  backup never drifts and a rollback reproduces the previous state.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lora_core.patcher.errors import AdapterFailure


def write_slot(
    live: torch.Tensor,
    w0: torch.Tensor,
    contributions: Sequence[tuple],
    compute_dtype: torch.dtype,
) -> None:
    """Overwrite `live` (a view of the model's tensor) with W0 + Σ m·ΔW.

    `w0` is the slot's original value (same shape as `live`); `contributions` is a list of
    (Entry, multiplier, dyn) in stack order. With no contributions the slot is reset to W0.
    """
    with torch.no_grad():
        if w0.device != live.device:  # the host moved the model since the backup was taken
            w0 = w0.to(live.device)
        if not contributions:
            live.copy_(w0)
            return
        delta = _low_rank_sum(contributions, compute_dtype, live.device)
        for entry, m, dyn in contributions:
            if entry.low_rank is not None:
                continue
            try:
                d = _full_delta(entry, w0, dyn).reshape(w0.shape)
            except Exception as exc:
                raise AdapterFailure(entry) from exc
            if delta is None:
                delta = d * m  # never in place: `d` may be a tensor the adapter keeps
            else:
                delta = delta.view(w0.shape)
                if delta.dtype != torch.float32:
                    delta = delta.float()
                delta.add_(d, alpha=m)
        torch.add(w0, delta.view(w0.shape), out=live)


def _low_rank_sum(contributions: Sequence[tuple], compute_dtype: torch.dtype, device) -> torch.Tensor | None:
    ups, downs = [], []
    for entry, m, _dyn in contributions:
        if entry.low_rank is None:
            continue
        up, down, scale = entry.low_rank
        if up.device != device:
            up, down = up.to(device), down.to(device)
        ups.append((up * (m * scale)).to(compute_dtype))
        downs.append(down)
    if not ups:
        return None
    if len(ups) == 1:
        return torch.mm(ups[0], downs[0])
    return torch.mm(torch.cat(ups, dim=1), torch.cat(downs, dim=0))


def _full_delta(entry, w0: torch.Tensor, dyn) -> torch.Tensor:
    if entry.part == "bias":
        return entry.bias_delta.to(w0.device)
    shape = tuple(entry.slot.shape)
    base = w0.reshape(shape) if tuple(w0.shape) != shape else w0
    d = entry.adapter.delta(base, dyn)
    if d.numel() != w0.numel():
        raise ValueError(f"ΔW has shape {tuple(d.shape)}, the model's weight {tuple(w0.shape)}")
    return d.to(device=w0.device, dtype=torch.float32)
