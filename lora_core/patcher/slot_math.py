"""The one formula the patcher evaluates: W = W0 + Σ mᵢ·ΔWᵢ, written into the live tensor.

* Plain low-rank adapters on the slot are stacked into ONE matmul by concatenating their ranks,
  with mᵢ·scaleᵢ folded into the `up` factor: Σ mᵢ·sᵢ·Uᵢ@Dᵢ = [m₁s₁U₁ | m₂s₂U₂ | …] @ [D₁; D₂; …].
* Other adapters (LoHa, LoKr, OFT, …) give their fp32 ΔW through `Adapter.delta(W0)`.
* The sum is added to W0 and rounded to the weight's dtype exactly once (`torch.add(..., out=)`
  computes in the promoted dtype, fp32 at least, and casts on store).
* fp8 weights (`float8_e4m3fn`/`float8_e5m2`) are dequantised to fp32, merged there and rounded
  back to nearest, saturating at the format's largest finite value (torch promotes no arithmetic
  with fp8 operands). Why nearest and not stochastic rounding: docs/BENCHMARKS.md, "fp8 merges".
* The result depends only on (W0, contributions), which is why recomputing a slot from its
  backup never drifts and a rollback reproduces the previous state.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lora_core.patcher.errors import AdapterFailure


class BackupFill:
    """A W0 backup taken while the slot is written instead of in a separate pass beforehand.

    `tensor` starts uninitialised; rows [0, rows) hold W0 and the live rows [rows, end) are still
    untouched, at every moment (rows advance before the live rows are overwritten). `complete`
    copies the rest, so whatever happens in between (an exception, Ctrl-C), the caller ends with
    a full backup. Saves one full read of the weight from memory per first write of a tensor.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.rows = 0

    def _n_rows(self) -> int:
        return self.tensor.shape[0] if self.tensor.dim() else 1

    def take(self, live: torch.Tensor, stop: int) -> None:
        """Back up rows up to `stop` (exclusive) from `live`."""
        if stop <= self.rows:
            return
        if self.tensor.dim() == 0:
            self.tensor.copy_(live)
        else:
            self.tensor[self.rows:stop].copy_(live[self.rows:stop])
        self.rows = stop

    def complete(self, live: torch.Tensor) -> None:
        with torch.no_grad():
            self.take(live, self._n_rows())


def write_slot(
    live: torch.Tensor,
    w0: torch.Tensor,
    contributions: Sequence[tuple],
    compute_dtype: torch.dtype,
    fill: BackupFill | None = None,
    scratch: "Scratch | None" = None,
) -> None:
    """Overwrite `live` (a view of the model's tensor) with W0 + Σ m·ΔW.

    `w0` is the slot's original value (same shape as `live`); `contributions` is a list of
    (Contribution, multiplier, dyn) in stack order. With no contributions the slot is reset to W0.
    With `fill`, `w0` is `fill.tensor`, not yet written: it is filled from `live` on the way.
    `scratch` (optional) lends the fp32 row-block buffer, so a run of slot writes reuses one.
    """
    with torch.no_grad():
        if fill is not None and not (
            contributions and all(e.low_rank is not None for e, _m, _d in contributions)
            and _chunkable(live, w0)
        ):
            fill.complete(live)  # the general path reads all of W0 first
            fill = None
        if w0.device != live.device:  # the host moved the model since the backup was taken
            w0 = w0.to(live.device)
        if not contributions:
            live.copy_(w0)
            return
        factors = _stacked_factors(contributions, compute_dtype, live.device)
        full = None
        for entry, m, dyn in contributions:
            if entry.low_rank is not None:
                continue
            try:
                # ΔW math needs a dtype torch computes in (fp8 W0: widened, once per adapter)
                d = _full_delta(entry, w0.float() if is_fp8(w0.dtype) else w0, dyn).reshape(w0.shape)
            except Exception as exc:
                raise AdapterFailure(entry) from exc
            if full is None:
                full = d * m  # never in place: `d` may be a tensor the adapter keeps
            else:
                full.add_(d, alpha=m)
        if full is None and _chunkable(live, w0):
            _write_low_rank_chunked(live, w0, *factors, fill=fill, scratch=scratch)
            return
        if factors is not None:
            product = torch.mm(*factors)
            if full is None:
                full = product.view(w0.shape)
            else:
                full.view(product.shape).add_(product.to(torch.float32))
        add_into(live, w0, full)


def add_into(live: torch.Tensor, w0: torch.Tensor, delta: torch.Tensor) -> None:
    """live ← W0 + ΔW, computed in fp32 (at least) and rounded once to live's dtype."""
    if is_fp8(live.dtype):
        store(live, w0.float() + delta)
    else:
        torch.add(w0, delta, out=live)


FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def store(dst: torch.Tensor, value: torch.Tensor) -> None:
    """dst ← value (fp32 or wider), rounded to nearest in dst's dtype; fp8 saturates at its
    largest finite value instead of becoming NaN."""
    if is_fp8(dst.dtype):
        limit = torch.finfo(dst.dtype).max
        value = value.clamp(-limit, limit)
    dst.copy_(value)


# Rows are computed in blocks of about this many elements (4 MB in fp32) in one reused fp32
# buffer: W0 rows are widened into it, U@D is accumulated onto them by the GEMM itself (addmm),
# and the block is rounded into the live tensor while still in cache. The slot then costs one
# read of W0 and one write of W besides the product, and never a full-size fp32 ΔW.
CHUNK_ELEMENTS = 1 << 20
# weight dtypes written by the row-block and batched paths; others take the plain path
CHUNKED_DTYPES = (torch.float16, torch.bfloat16, torch.float32) + FP8_DTYPES


def _chunkable(live: torch.Tensor, w0: torch.Tensor) -> bool:
    return (live.dtype in CHUNKED_DTYPES and live.is_contiguous() and w0.is_contiguous() and w0.dim() >= 1
            and w0.device == live.device)


class Scratch:
    """One fp32 row-block buffer lent to consecutive slot writes (a fresh 4 MB buffer per slot
    is fresh memory, page-faulted in each time; see docs/BENCHMARKS.md)."""

    def __init__(self):
        self._buf: torch.Tensor | None = None

    def block(self, rows: int, cols: int, dtype: torch.dtype, device) -> torch.Tensor:
        n = rows * cols
        buf = self._buf
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(max(n, CHUNK_ELEMENTS), dtype=dtype, device=device)
            self._buf = buf
        return buf[:n].view(rows, cols)


def _write_low_rank_chunked(live: torch.Tensor, w0: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                            fill: BackupFill | None = None, scratch: Scratch | None = None) -> None:
    rows = up.shape[0]
    live2 = live.view(rows, -1)
    w02 = w0.view(rows, -1)
    step = max(1, min(rows, CHUNK_ELEMENTS // max(1, live2.shape[1])))
    acc_dtype = torch.promote_types(up.dtype, torch.float32)
    buf = (scratch or Scratch()).block(step, live2.shape[1], acc_dtype, live.device)
    for i in range(0, rows, step):
        n = min(step, rows - i)
        block = buf[:n]
        if fill is not None:  # W0 rows into the backup while they are in cache, before they change
            fill.take(live, i + n)
        block.copy_(w02[i:i + n])
        if up.dtype == acc_dtype:
            block.addmm_(up[i:i + n], down)
        else:  # reduced-precision product (bf16 compute): widen it, then add
            block.add_(torch.mm(up[i:i + n], down))
        store(live2[i:i + n], block)


def _stacked_factors(contributions: Sequence[tuple], compute_dtype: torch.dtype, device):
    """(U, D) with Σ mᵢ·sᵢ·Uᵢ@Dᵢ = U@D, or None when no contribution is plain low-rank."""
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
        return ups[0], downs[0]
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def _full_delta(entry, w0: torch.Tensor, dyn) -> torch.Tensor:
    if entry.part == "bias":
        return entry.bias_delta.to(w0.device)
    shape = tuple(entry.slot.shape)
    base = w0.reshape(shape) if tuple(w0.shape) != shape else w0
    d = entry.adapter.delta(base, dyn)
    if d.numel() != w0.numel():
        raise ValueError(f"ΔW has shape {tuple(d.shape)}, the model's weight {tuple(w0.shape)}")
    return d.to(device=w0.device, dtype=torch.float32)
