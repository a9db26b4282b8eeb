"""Slot writes for accelerators (CUDA, XPU, MPS): a few large kernels instead of several per slot.

On a GPU the arithmetic of a LoRA apply is nearly free, so what an apply costs is the host's time
to issue kernels: the per-slot path of slot_math.py launches several small kernels and runs some
Python per slot (numbers: docs/BENCHMARKS.md, "Patcher: measurements behind the design"). Here:

* the W0 backups of every newly touched tensor are taken with ONE multi-tensor copy
  (`torch._foreach_copy_`), and slots that go back to W0 are reset with another;
* slots whose products have the same shape (rows, cols and the ranks of their low-rank
  contributions) are computed together by ONE batched matmul: the `up` factors of a batch are
  stacked, scaled by their multiplier·scale in one multiply, and multiplied with the stacked
  `down` factors into an fp32 ΔW buffer of at most BATCH_BYTES;
* each slot is then written with one kernel, W = W0 + ΔW computed in fp32 and rounded once to
  the weight's dtype (the formula of slot_math.write_slot, so a slot's value does not depend on
  which path wrote it beyond fp32 rounding order).

Slots this cannot express (a ΔW that is not plain low-rank: LoHa, OFT, bias deltas, ...) go back
to the per-slot path, in the same call.
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Sequence

import torch

from lora_core.patcher.slot_math import CHUNKED_DTYPES, add_into

# fp32 ΔW of one batched matmul at most (a batch is never split below one slot). Bounded so that
# an apply on a small GPU does not need more free memory than the largest few slots in fp32.
BATCH_BYTES = 256 << 20


class BatchKey(NamedTuple):
    """What slots must share to be computed in one batched matmul."""

    device: torch.device
    dtype: torch.dtype         # the live weight's dtype
    rows: int                  # ΔW as a [rows, cols] matrix
    cols: int
    ranks: tuple[int, ...]     # rank of each low-rank contribution, in stack order

    @property
    def slot_elements(self) -> int:
        return self.rows * self.cols


def batch_key(live: torch.Tensor, shape: tuple, contribs: Sequence[tuple]) -> BatchKey | None:
    """The batch a slot belongs to; None: the per-slot path (a ΔW that is not plain low-rank, or a
    weight dtype/layout the batched writes do not handle)."""
    if not contribs or any(e.low_rank is None for e, _m, _d in contribs):
        return None
    if live.dtype not in CHUNKED_DTYPES or not live.is_contiguous():
        return None
    rows = int(shape[0]) if shape else 1
    cols = live.numel() // max(1, rows)
    ranks = tuple(int(e.low_rank[0].shape[1]) for e, _m, _d in contribs)
    return BatchKey(live.device, live.dtype, rows, cols, ranks)


def batch_limit(device: torch.device) -> int:
    """BATCH_BYTES, or an eighth of the device's free memory when that is less (a small card that
    holds the model has little free; the product buffers must not push it over)."""
    limit = BATCH_BYTES
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            limit = min(limit, max(free // 8, 16 << 20))
        except Exception:  # no driver answer: keep the fixed bound
            pass
    return limit


def split_batches(items: Sequence[Any], slot_elements: int, limit_bytes: int | None = None) -> list[list]:
    """`items` (all with one batch key) in runs whose fp32 ΔW fits `limit_bytes` (BATCH_BYTES)."""
    limit = BATCH_BYTES if limit_bytes is None else limit_bytes
    per = max(1, limit // max(1, 4 * slot_elements))
    return [list(items[i:i + per]) for i in range(0, len(items), per)]


def stacked_delta(contribs_per_slot: Sequence[Sequence[tuple]], key: BatchKey,
                  compute_dtype: torch.dtype) -> torch.Tensor:
    """fp32 [n, key.rows, key.cols]: Σⱼ mⱼ·sⱼ·Uⱼ@Dⱼ of every slot (all of batch `key`), by one batched matmul.

    Contributions of one slot are stacked along the rank (as slot_math does for one slot), so a
    stack of LoRAs is still one product per batch."""
    ups, downs = [], []
    device, n_contribs = key.device, len(key.ranks)
    for j in range(n_contribs):
        up = torch.stack([c[j][0].low_rank[0] for c in contribs_per_slot])
        down = torch.stack([c[j][0].low_rank[1] for c in contribs_per_slot])
        scales = torch.tensor([c[j][1] * c[j][0].low_rank[2] for c in contribs_per_slot], dtype=torch.float32)
        up = up.to(device=device, dtype=torch.float32).mul_(scales.to(device).view(-1, 1, 1))  # `up` is new
        ups.append(up.to(compute_dtype))
        downs.append(down.to(device=device, dtype=compute_dtype))
    up = ups[0] if n_contribs == 1 else torch.cat(ups, dim=2)
    down = downs[0] if n_contribs == 1 else torch.cat(downs, dim=1)
    n = len(contribs_per_slot)
    product = torch.bmm(up.view(n, key.rows, -1), down.view(n, -1, key.cols))
    return product if product.dtype == torch.float32 else product.float()


def write_batch(lives: Sequence[torch.Tensor], w0s: Sequence[torch.Tensor], delta: torch.Tensor) -> None:
    """live = W0 + ΔW, computed in fp32 (at least) and rounded once into each live tensor."""
    for i, (live, w0) in enumerate(zip(lives, w0s)):
        add_into(live, w0, delta[i].view(w0.shape))


@contextlib.contextmanager
def exact_fp32_matmuls():
    """fp32 products in full fp32 for the block: hosts such as A1111 allow TF32 matmuls (10-bit
    inputs) for sampling speed, which would put ~2^-11 relative error into every ΔW. Process-wide,
    like torch's thread setting; slot writes never run while the host samples."""
    matmul = getattr(getattr(torch.backends, "cuda", None), "matmul", None)
    try:
        was = bool(matmul.allow_tf32) if matmul is not None else False
    except Exception:  # a torch that refuses the legacy flag: leave its setting alone
        was = False
    if was:
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        if was:
            matmul.allow_tf32 = True


def copy_all(dsts: Sequence[torch.Tensor], srcs: Sequence[torch.Tensor]) -> None:
    """dst ← src for every pair, as one multi-tensor kernel where torch has one."""
    if not dsts:
        return
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None:
        foreach(list(dsts), list(srcs))
    else:  # pragma: no cover - older torch
        for d, s in zip(dsts, srcs):
            d.copy_(s)
