"""One adapter whose ΔW rows go to several slots (``Binding.resolve_parts``): a fused q/k/v(/MLP)
key on a model that keeps the parts apart, or the final AdaLayerNorm of the other namespace
with its halves swapped.

* Plain low-rank: exact and cheap. ΔW[rows] = scale·up[rows]@down, so each slot gets the rows of
  `up` and the same `down`; nothing is computed at full size.
* Anything else (LoHa, LoKr, full, OFT, DoRA, ...): ΔW is computed ONCE at full size from the full
  W0 in the adapter's own row order (assembled from the slots' originals, since ΔW may depend on
  it) and handed out by rows. The first slot written computes it; it is dropped once every slot
  took its rows, so a 12B model never holds more than one such ΔW per adapter at a time.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch


class SplitDelta:
    """Full-size ΔW of one adapter, shared by the slots its rows go to."""

    def __init__(self, adapter: Any, w0_parts: list[torch.Tensor], n_slots: int):
        self.adapter = adapter
        self.key = getattr(adapter, "key", "?")
        # W0 of the whole fused tensor, in ΔW's row order: copies taken at plan time (no slot of
        # this adapter is written yet, and another LoRA may rewrite the live tensors later)
        self._w0 = torch.cat([p.detach().reshape(p.shape[0], -1) for p in w0_parts], dim=0).clone()
        self._n = n_slots
        self._lock = threading.Lock()
        self._full: dict[Any, tuple[torch.Tensor, int]] = {}  # dyn -> (ΔW, slots still to serve)

    def rows(self, rows: slice, like: torch.Tensor, dyn) -> torch.Tensor:
        with self._lock:
            held = self._full.get(dyn)
            if held is None:
                base = self._w0.to(like.device)
                held = (self.adapter.delta(base, dyn).reshape(base.shape[0], -1), self._n)
            full, left = held
            piece = full[rows].clone()
            if left <= 1:
                self._full.pop(dyn, None)
            else:
                self._full[dyn] = (full, left - 1)
        return piece


class PartAdapter:
    """What the patcher sees for one slot of a split adapter: ``delta(base, dyn)`` gives this
    slot's rows of the shared full ΔW."""

    def __init__(self, shared: SplitDelta, rows: slice):
        self.shared = shared
        self.rows = rows
        self.key = shared.key

    def delta(self, base: torch.Tensor, dyn=None) -> torch.Tensor:
        d = self.shared.rows(self.rows, base, dyn)
        if d.numel() != base.numel():
            raise ValueError(f"module {self.key}: rows {self.rows.start}:{self.rows.stop} of ΔW have "
                             f"{d.numel()} values, the slot {tuple(base.shape)}")
        return d.reshape(base.shape)


def rows_problem(parts: list[tuple[Any, slice]], total_rows: int) -> str | None:
    """Why the slots' ΔW rows do not tile [0, total_rows) exactly once, or None."""
    spans = sorted((r.start, r.stop) for _s, r in parts)
    covered = 0
    for start, stop in spans:
        if start != covered:
            break
        covered = stop
    else:
        if covered == total_rows:
            return None
    return (f"ΔW has {total_rows} rows, the model's parts add up to "
            f"{sum(stop - start for start, stop in spans)}")


def split_low_rank(low_rank: tuple, parts: list[tuple[Any, slice]]) -> list[tuple]:
    """(up[rows], down, scale) per slot: exact, the rank is not touched."""
    up, down, scale = low_rank
    up = up.reshape(up.shape[0], -1)
    return [(up[rows], down, scale) for _slot, rows in parts]


def make_split(adapter: Any, parts: list[tuple[Any, slice]], original: Callable[[Any], torch.Tensor],
               refs: list[Any]) -> list[PartAdapter]:
    """PartAdapters for the non-low-rank path; `refs[i]` is the SlotRef of `parts[i]`."""
    order = sorted(range(len(parts)), key=lambda i: parts[i][1].start)
    shared = SplitDelta(adapter, [original(refs[i]) for i in order], len(parts))
    return [PartAdapter(shared, rows) for _slot, rows in parts]
