"""How one LoRA file maps onto one model: its adapters resolved to slots, once per stack entry.

A plan is built when a LoRA enters the stack and dropped when it leaves, so switching weights
of a LoRA already in the stack costs no resolving and no factor preparation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lora_core.patcher import split_delta
from lora_core.patcher.report import LoraReport

log = logging.getLogger(__name__)

_MAX_EXAMPLES = 5


@dataclass(eq=False)
class SlotRef:
    """A place to write: the live tensor, its row range (q/k/v of a fused in_proj), ΔW shape."""

    key: tuple          # identifies the slot: (group, row_start, row_stop)
    group: tuple        # identifies the underlying tensor (several slots may share one)
    tensor: torch.Tensor
    rows: slice | None
    shape: tuple        # ΔW shape, as the adapter computes it
    component: str
    block: str | None
    name: str = ""      # the tensor's name in the model (finds W0 in the checkpoint file, messages)

    def view(self, full: torch.Tensor) -> torch.Tensor:
        """The part of `full` (the live tensor or its W0 backup) this slot covers."""
        return full[self.rows] if self.rows is not None else full


def tensor_group(t: torch.Tensor) -> tuple:
    """Identity of a live tensor: the object itself (a Parameter keeps its identity when the host
    moves the model between devices, while its data pointer changes). SlotRefs hold a reference,
    so the id cannot be reused while the patcher tracks the tensor."""
    return (id(t),)


def make_slot_ref(slot: Any) -> SlotRef:
    t = slot.tensor
    rows = getattr(slot, "rows", None)
    group = tensor_group(t)
    key = group + ((rows.start, rows.stop) if rows is not None else (None, None),)
    shape = tuple(getattr(slot, "shape", None) or (t[rows] if rows is not None else t).shape)
    return SlotRef(key, group, t, rows, shape, getattr(slot, "component", "unet"), getattr(slot, "block", None),
                   str(getattr(slot, "name", "") or ""))


@dataclass(eq=False)
class Contribution:
    """One adapter's contribution to one slot (its weight or its bias)."""

    slot: SlotRef
    adapter: Any
    part: str                                   # "weight" or "bias"
    low_rank: tuple | None = None               # (up [out,r], down [r,in], scale) in compute dtype
    bias_delta: torch.Tensor | None = None      # fp32, for part == "bias"
    lora: Any = None                            # the LoraFile this adapter belongs to

    @property
    def module(self) -> str:
        return str(getattr(self.adapter, "key", "?"))


@dataclass(eq=False)
class LoraPlan:
    lora: Any
    dyn: int | None
    entries: list[Contribution] = field(default_factory=list)
    report: LoraReport | None = None


def build_plan(
    lora: Any,
    dyn: int | None,
    binding: Any,
    original: Callable[[SlotRef], torch.Tensor],
    compute_dtype: torch.dtype,
) -> LoraPlan:
    """Resolve every adapter of `lora`; prepare low-rank factors; note what did not match.

    `original(slot)` gives the slot's W0 (needed for a bias delta that may depend on it).
    """
    name = str(getattr(lora, "name", "") or getattr(lora, "path", "?"))
    report = LoraReport(name=name, path=str(getattr(lora, "path", "")))
    plan = LoraPlan(lora=lora, dyn=dyn, report=report)
    unclaimed = list(getattr(lora, "unclaimed", []) or [])
    resolve_parts = getattr(binding, "resolve_parts", None)
    for key, adapter in lora.adapters.items():
        slot = binding.resolve(key, "weight")
        parts = resolve_parts(key, "weight") if slot is None and resolve_parts is not None else None
        if parts:
            problem = _plan_parts(plan, lora, key, adapter, parts, binding, original, compute_dtype, name)
            if problem is None:
                report.matched += 1
            else:
                report.unmatched += 1
                if len(report.unmatched_keys) < _MAX_EXAMPLES:
                    report.unmatched_keys.append(f"{key} ({problem})")
            continue
        if slot is None:
            report.unmatched += 1
            if len(report.unmatched_keys) < _MAX_EXAMPLES:
                report.unmatched_keys.append(str(key))
            continue
        ref = make_slot_ref(slot)
        entry = Contribution(ref, adapter, "weight", lora=lora)
        low_rank = adapter.low_rank(dyn) if hasattr(adapter, "low_rank") else None
        if low_rank is not None:
            entry.low_rank = _prepare_low_rank(low_rank, ref, name, key, compute_dtype)
            if entry.low_rank is None:  # shape mismatch: treat as not matching this model
                report.unmatched += 1
                if len(report.unmatched_keys) < _MAX_EXAMPLES:
                    report.unmatched_keys.append(f"{key} (shape)")
                continue
        report.matched += 1
        plan.entries.append(entry)
        bias_slot = binding.resolve(key, "bias") if hasattr(adapter, "delta_bias") else None
        if bias_slot is not None:
            bref = make_slot_ref(bias_slot)
            db = adapter.delta_bias(original(bref))
            if db is not None:
                db = db.to(device=bref.tensor.device, dtype=torch.float32)
                if db.numel() != _numel(bref.shape):
                    log.warning("%s: bias delta of %s has %d values, the model's bias %d; ignored",
                                name, key, db.numel(), _numel(bref.shape))
                else:
                    plan.entries.append(Contribution(bref, adapter, "bias", bias_delta=db, lora=lora))
    _upload_factors(plan.entries, compute_dtype)
    report.unmatched += len(unclaimed)
    for k in unclaimed[: max(0, _MAX_EXAMPLES - len(report.unmatched_keys))]:
        report.unmatched_keys.append(f"{k} (unknown algorithm)")
    return plan


def _plan_parts(plan: LoraPlan, lora: Any, key, adapter: Any, parts: list, binding: Any,
                original: Callable[[SlotRef], torch.Tensor], compute_dtype: torch.dtype, name: str) -> str | None:
    """Entries for an adapter whose ΔW rows go to several slots (``Binding.resolve_parts``); all of
    them or none. Returns why it was refused (rows that do not add up, factors that do not fit), or
    None when planned."""
    refs = [make_slot_ref(s) for s, _rows in parts]
    low_rank = adapter.low_rank(plan.dyn) if hasattr(adapter, "low_rank") else None
    total = _adapter_rows(adapter, low_rank)
    problem = split_delta.rows_problem(parts, total) if total is not None else None
    if problem is not None:
        log.warning("%s: %s refused: %s", name, key, problem)
        return f"rows: {problem}"
    entries = []
    if low_rank is not None:
        for ref, piece in zip(refs, split_delta.split_low_rank(low_rank, parts)):
            prepared = _prepare_low_rank(piece, ref, name, key, compute_dtype)
            if prepared is None:
                return "shape"
            entries.append(Contribution(ref, adapter, "weight", low_rank=prepared, lora=lora))
        # one adapter object per slot: the patcher tells contributions apart by adapter identity
        for e, (slot, rows) in zip(entries, parts):
            e.adapter = _SlotView(adapter, rows)
    else:
        for ref, pa in zip(refs, split_delta.make_split(adapter, parts, original, refs)):
            entries.append(Contribution(ref, pa, "weight", lora=lora))
    if hasattr(adapter, "delta_bias"):
        bias_parts = binding.resolve_parts(key, "bias")
        if bias_parts:
            brefs = [make_slot_ref(s) for s, _rows in bias_parts]
            order = sorted(range(len(bias_parts)), key=lambda i: bias_parts[i][1].start)
            full_bias = torch.cat([original(brefs[i]).detach().reshape(-1) for i in order])
            db = adapter.delta_bias(full_bias)
            if db is not None and db.numel() == full_bias.numel():
                db = db.reshape(-1).to(dtype=torch.float32)
                for bref, (_s, rows) in zip(brefs, bias_parts):
                    piece = db[rows].to(device=bref.tensor.device).clone()
                    entries.append(Contribution(bref, _SlotView(adapter, rows), "bias", bias_delta=piece, lora=lora))
            elif db is not None:
                log.warning("%s: bias delta of %s has %d values, the model's parts %d; ignored",
                            name, key, db.numel(), full_bias.numel())
    plan.entries.extend(entries)
    return None


class _SlotView:
    """The adapter as seen by one slot of a split: its own identity, the adapter's key."""

    def __init__(self, adapter: Any, rows: slice):
        self.adapter = adapter
        self.rows = rows
        self.key = getattr(adapter, "key", "?")

    def delta(self, base, dyn=None):  # never called for low-rank entries; kept for completeness
        raise RuntimeError(f"module {self.key}: a low-rank split slot has no full ΔW")


def _adapter_rows(adapter: Any, low_rank) -> int | None:
    """Rows of the adapter's ΔW (its output features), where its tensors tell."""
    if low_rank is not None:
        return int(low_rank[0].shape[0])
    hint = adapter.shape_hint() if hasattr(adapter, "shape_hint") else None
    return int(hint[0]) if hint else None


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _prepare_low_rank(low_rank, ref: SlotRef, name: str, key, compute_dtype) -> tuple | None:
    up, down, scale = low_rank
    up = up.reshape(up.shape[0], -1)
    down = down.reshape(down.shape[0], -1)
    out_rows = ref.shape[0] if ref.shape else 1
    if up.shape[1] != down.shape[0] or up.shape[0] != out_rows or up.shape[0] * down.shape[1] != _numel(ref.shape):
        log.warning("%s: %s has factors %s @ %s, the model's weight is %s; skipped",
                    name, key, tuple(up.shape), tuple(down.shape), ref.shape)
        return None
    # fp32 copies of the factors; the multiplier·scale is folded into `up` at compute time.
    if ref.tensor.device.type != "cpu":
        return up, down, float(scale)  # still on the host: _upload_factors moves them all at once
    up = up.to(dtype=torch.float32)
    down = down.to(dtype=compute_dtype).contiguous()
    return up, down, float(scale)


def _upload_factors(entries: list, compute_dtype: torch.dtype) -> None:
    """Move the low-rank factors that are not yet on their weight's device there: one host-to-device
    copy per (device, dtype) instead of two per module (each small copy from pageable memory waits
    for the device; see docs/BENCHMARKS.md)."""
    by_device: dict[torch.device, list[Contribution]] = {}
    for e in entries:
        if e.low_rank is not None and e.low_rank[0].device != e.slot.tensor.device:
            by_device.setdefault(e.slot.tensor.device, []).append(e)
    for device, group in by_device.items():
        ups = pack_to([e.low_rank[0] for e in group], torch.float32, device)
        downs = pack_to([e.low_rank[1] for e in group], compute_dtype, device)
        for e, up, down in zip(group, ups, downs):
            e.low_rank = (up, down, e.low_rank[2])


def pack_to(tensors: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Contiguous copies of `tensors` in `dtype` on `device`, made by one transfer: packed into one
    host buffer, moved, and handed out as views of the device buffer."""
    sizes = [t.numel() for t in tensors]
    host = torch.empty(sum(sizes), dtype=dtype)
    offset = 0
    for t, n in zip(tensors, sizes):
        host[offset:offset + n].copy_(t.reshape(-1))
        offset += n
    moved = host.to(device)
    out, offset = [], 0
    for t, n in zip(tensors, sizes):
        out.append(moved[offset:offset + n].view(t.shape))
        offset += n
    return out
