"""Merge a stack of LoRAs into a model's weights, incrementally and reversibly.

State kept between calls (all per Patcher, nothing global):

* for each patched slot, the contributions written into it: (entry, multiplier, dyn) in stack
  order. A slot is recomputed only when that list changes, so an unchanged stack costs no
  tensor work and reweighting one LoRA touches only its slots.
* one W0 backup per touched tensor (a fused q/k/v in_proj is one tensor), taken before its
  first write and released as soon as no slot of it is patched. Slots are always recomputed
  from W0, never by subtracting, so values never drift and restore is bit for bit.
  With a `w0_source` (the checkpoint file the model was loaded from, checkpoint_w0.py), a tensor
  whose live value equals the file's (checked at its first write) keeps no copy: W0 is read back
  from the file whenever it is needed, so an exact restore holds no memory (Flux: 24 GB less).
* the plans (resolved adapters) of the LoRAs in the stack.

Every apply is all-or-nothing: if any write fails, the slots already rewritten are recomputed
from W0 with their previous contributions (the same deterministic formula that wrote them) and
the call raises PatchError.

Threads (CPU tensors): large applies write whole slots on torch.get_num_threads() worker threads
with one intra-op thread each (parallel_writes.py); smaller ones stay on the calling thread, small
slots with one intra-op thread and large slots with `Patcher.large_slot_threads`. Every change of
torch's thread setting goes through `lora_core.cpu_threads.torch_threads`. A slot's value does not
depend on which thread wrote it. Accelerator tensors take batched_writes.py (one thread).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterable

import torch

from lora_core import cpu_threads
from lora_core.formats.family import family_fits
from lora_core.patcher import batched_writes
from lora_core.patcher.active import ActiveLora
from lora_core.patcher.errors import AdapterFailure, PatchError
from lora_core.patcher.plan import LoraPlan, SlotRef, build_plan
from lora_core.patcher.report import LoraReport, PatchReport
from lora_core.patcher.parallel_writes import run_parallel
from lora_core.patcher.slot_math import BackupFill, Scratch, write_slot

log = logging.getLogger(__name__)


# Applies below PARALLEL_MIN_ELEMENTS are written on the calling thread, and there slots smaller
# than SMALL_SLOT_ELEMENTS use one intra-op thread: waking and joining a second thread costs more
# than the work it takes over. An apply of at least PARALLEL_MIN_ELEMENTS spreads whole slots over
# torch.get_num_threads() worker threads (parallel_writes.py). Why these sizes: docs/BENCHMARKS.md.
SMALL_SLOT_ELEMENTS = 1 << 18
PARALLEL_MIN_ELEMENTS = 1 << 22
# Patcher.large_slot_threads: "free" (default), "torch" or a thread count; see the Patcher docstring.
LARGE_SLOT_THREADS = ("free", "torch")


def _parallel_workers(slots: list) -> int:
    """Threads for these slot writes: torch's setting (capped by the CPUs this process may use and
    the number of tensors) when there is enough CPU work to share, else 1 (GPU kernels queue on
    one stream whatever thread launches them)."""
    tensors = {ref.group for _key, ref in slots}
    if len(tensors) < 2 or sum(_numel(ref.shape) for _key, ref in slots) < PARALLEL_MIN_ELEMENTS:
        return 1
    if any(ref.tensor.device.type != "cpu" for _key, ref in slots):
        return 1
    return max(1, min(torch.get_num_threads(), cpu_threads.usable_cpus(), len(tensors)))


def _by_tensor(slots: list) -> list[list]:
    """Slots grouped by tensor, largest group first: one tensor's slots stay on one thread (its
    backup has one writer), and the big items go first so the threads finish close together."""
    groups: dict[tuple, list] = {}
    for key, ref in slots:
        groups.setdefault(ref.group, []).append((key, ref))
    return sorted(groups.values(), key=lambda item: -sum(_numel(r.shape) for _k, r in item))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _signature(contribs: list | None) -> tuple:
    # Adapter identity is stable while the old state references it, so ids cannot be reused
    # between the two states being compared.
    if not contribs:
        return ()
    return tuple((id(e.adapter), e.part, m, dyn) for e, m, dyn in contribs)


def _family_problem(lora: Any, model_family: str | None) -> str | None:
    fam = getattr(lora, "family", None) or "unknown"
    return None if family_fits(fam, model_family) else f"LoRA is for {fam}, the model is {model_family}"


class Patcher:
    """Applies stacks of `ActiveLora` to the tensors of one `Binding`.

    `compute_dtype` is the dtype of the low-rank matmul (the add to W0 is always at least fp32,
    rounded once). fp32 (default) keeps merged weights within rounding of the exact result;
    bf16 is faster on CPUs with bf16 units but its product carries ~2^-9 relative error of ΔW
    (see docs/BENCHMARKS.md for measured ulps).

    `keep_originals=False` is for one-shot baking (the merge command): no W0 backups are kept,
    so only one apply on the pristine model is allowed and restore is impossible.

    `batched`: write slots in batches (batched_writes.py: few large kernels, for accelerators)
    or one by one (slot_math.py: cache-sized row blocks, for CPUs). None: batched exactly when
    every slot of the call lives on a device other than the CPU.

    `large_slot_threads`: torch's intra-op threads for slots of at least SMALL_SLOT_ELEMENTS in an
    apply written on the calling thread (below PARALLEL_MIN_ELEMENTS, or one tensor only).
    "free" (default): torch's setting, lowered to the CPUs other processes leave free at that
    moment (Linux /proc/loadavg; elsewhere torch's setting); "torch": torch's setting; a number:
    that many. On a busy machine a thread that gets no CPU stalls every op it shares
    (docs/BENCHMARKS.md, "Patcher: measurements behind the design").

    `w0_source(name)`: the tensor `name` (a Slot's name) as the checkpoint file holds it, or None
    (checkpoint_w0.CheckpointW0). Tensors whose live value equals it keep no backup copy. Writes
    then go slot by slot (no batched path): the file is read one tensor at a time.
    """

    def __init__(self, binding: Any, compute_dtype: torch.dtype = torch.float32, keep_originals: bool = True,
                 batched: bool | None = None, large_slot_threads: int | str = "free",
                 w0_source: Callable[[str], torch.Tensor | None] | None = None):
        if large_slot_threads not in LARGE_SLOT_THREADS and not (
                isinstance(large_slot_threads, int) and large_slot_threads >= 1):
            raise ValueError(f"large_slot_threads must be 'free', 'torch' or a positive number, "
                             f"not {large_slot_threads!r}")
        self.binding = binding
        self.compute_dtype = compute_dtype
        self.keep_originals = keep_originals
        self.batched = batched
        self.large_slot_threads = large_slot_threads
        self._lock = threading.RLock()
        self._stack: tuple[ActiveLora, ...] = ()
        self._plans: dict[tuple, LoraPlan] = {}
        self._contribs: dict[tuple, list] = {}
        self._slots: dict[tuple, SlotRef] = {}
        self._backups: dict[tuple, torch.Tensor] = {}
        self.w0_source = w0_source
        self._file_w0: set[tuple] = set()  # groups whose W0 is read back from w0_source
        self._last_report = PatchReport()
        self._baked = False
        self.slot_writes = 0  # total slot writes since creation (instrumentation for tests/bench)
        self._count_lock = threading.Lock()  # slot writes may run on several threads

    # ------------------------------------------------------------------ public API
    @property
    def stack(self) -> tuple[ActiveLora, ...]:
        return self._stack

    @property
    def backup_bytes(self) -> int:
        """Bytes held for exact restore (copies; W0 read back from the checkpoint holds none)."""
        return sum(t.numel() * t.element_size() for t in self._backups.values())

    @property
    def file_backed_tensors(self) -> int:
        return len(self._file_w0)

    def apply(self, stack: Iterable[ActiveLora], progress: Callable[[int, int], Any] | None = None) -> PatchReport:
        """Make the model's weights W0 + Σ m·ΔW for `stack`; return what was done.

        `progress(done, total)` is called after each slot write (for progress bars on long merges).
        """
        stack = tuple(stack)
        with self._lock:
            t0 = time.perf_counter()
            if stack == self._stack:
                last = self._last_report
                report = dataclasses.replace(last, slots_recomputed=0, warnings=list(last.warnings),
                                             loras=[dataclasses.replace(r) for r in last.loras])
                report.seconds = time.perf_counter() - t0
                return report
            if not self.keep_originals and (self._baked or self._contribs):
                raise RuntimeError("this Patcher was created without backups and has already applied a stack")
            report = PatchReport()
            with cpu_threads.torch_threads(1):  # factor conversions: many tiny ops (see SMALL_SLOT_ELEMENTS)
                plans, accepted = self._plan_stack(stack, report)
            desired, refs = self._desired_state(accepted)
            # stack order, then slots that leave: deterministic, and close to memory order
            changed = [k for k in desired if _signature(desired[k]) != _signature(self._contribs.get(k))]
            changed += [k for k in self._contribs if k not in desired]
            threads = self._write_all(changed, desired, refs, progress) if changed else 0
            # commit
            self._contribs = desired
            self._slots = refs
            self._plans = plans
            self._stack = stack
            self._baked = not self.keep_originals
            self._release_unused_backups()
            report.slots_recomputed = len(changed)
            report.write_threads = threads
            report.backed_up_tensors = len(self._backups) + len(self._file_w0)
            report.backup_bytes = self.backup_bytes
            report.seconds = time.perf_counter() - t0
            self._last_report = report
            log.debug("apply: %s", report.summary())
            return report

    def restore(self) -> None:
        """Give back the original weights bit for bit and release every backup."""
        with self._lock:
            if not self.keep_originals and self._baked:
                raise RuntimeError("this Patcher kept no backups; the original weights are gone")
            slots = [(key, self._slots[key]) for key in self._contribs]

            def reset(item, _state=None):
                for group in _by_tensor(item):  # a W0 read back from the checkpoint: once per tensor
                    w0 = self._w0(group[0][1])
                    for _key, ref in group:
                        write_slot(self._live(ref), ref.view(w0), [], self.compute_dtype)
                    with self._count_lock:
                        self.slot_writes += len(group)

            workers = _parallel_workers(slots)
            if self._batched_for(slots):  # one multi-tensor copy
                batched_writes.copy_all([self._live(ref) for _k, ref in slots],
                                        [ref.view(self._backups[ref.group]) for _k, ref in slots])
                with self._count_lock:
                    self.slot_writes += len(slots)
            elif workers > 1:  # a plain copy per slot, spread like the writes (see parallel_writes.py)
                run_parallel(_by_tensor(slots), reset, workers)
            else:
                reset(slots)
            self._contribs = {}
            self._slots = {}
            self._plans = {}
            self._stack = ()
            self._backups.clear()
            self._file_w0.clear()
            self._last_report = PatchReport()

    # ------------------------------------------------------------------ planning
    def _plan_stack(self, stack: tuple[ActiveLora, ...], report: PatchReport):
        model_family = getattr(self.binding, "family", None)
        plans: dict[tuple, LoraPlan] = {}
        accepted: list[tuple[ActiveLora, LoraPlan]] = []
        for active in stack:
            lora = active.lora
            problem = _family_problem(lora, model_family)
            if problem is not None:
                r = LoraReport(name=active.name, path=str(getattr(lora, "path", "")), refused=problem)
                report.loras.append(r)
                report.warnings.append(f"{active.name}: {problem}; skipped")
                continue
            key = (id(lora), active.dyn)
            plan = plans.get(key) or self._plans.get(key)
            if plan is None:
                try:
                    plan = build_plan(lora, active.dyn, self.binding, self._original, self.compute_dtype)
                except Exception as exc:  # a bad file must not take the model down
                    raise PatchError(f"{active.name}: cannot map onto the model: {exc}", lora=lora) from exc
            plans[key] = plan
            accepted.append((active, plan))
            r = dataclasses.replace(plan.report, unmatched_keys=list(plan.report.unmatched_keys))
            report.loras.append(r)
            total = r.matched + r.unmatched
            if r.matched == 0:
                report.warnings.append(f"{r.name}: none of its {total} modules match this model")
            elif r.unmatched:
                report.warnings.append(
                    f"{r.name}: {r.unmatched} of {total} modules do not match this model "
                    f"(e.g. {', '.join(r.unmatched_keys[:3])})")
        return plans, accepted

    @staticmethod
    def _desired_state(accepted):
        desired: dict[tuple, list] = {}
        refs: dict[tuple, SlotRef] = {}
        for active, plan in accepted:
            for e in plan.entries:
                m = active.multiplier(e.slot.component, e.slot.block)
                if m == 0.0:
                    continue
                desired.setdefault(e.slot.key, []).append((e, m, active.dyn))
                refs[e.slot.key] = e.slot
        return desired, refs

    def _original(self, ref: SlotRef) -> torch.Tensor:
        backup = self._w0(ref)
        return ref.view(backup if backup is not None else ref.tensor.detach())

    def _w0(self, ref: SlotRef) -> torch.Tensor | None:
        """The whole tensor's W0 (a copy, or read back from the checkpoint); None if untouched."""
        backup = self._backups.get(ref.group)
        if backup is None and ref.group in self._file_w0:
            backup = self._read_w0(ref)
            if backup is None:
                raise RuntimeError(f"the checkpoint no longer holds {ref.name!r}; its original weight is lost")
        return backup

    def _read_w0(self, ref: SlotRef) -> torch.Tensor | None:
        """W0 from the checkpoint in the live tensor's dtype and device, or None if the file has no
        tensor of that name and shape."""
        if self.w0_source is None or not ref.name:
            return None
        stored = self.w0_source(ref.name)
        live = ref.tensor.detach()
        if stored is None or tuple(stored.shape) != tuple(live.shape):
            return None
        return stored.to(device=live.device, dtype=live.dtype)

    def _checkpoint_w0(self, ref: SlotRef) -> torch.Tensor | None:
        """At a tensor's first write: W0 from the checkpoint if it equals the live value (the host
        may have changed weights after loading; then the caller takes a copy)."""
        try:
            w0 = self._read_w0(ref)
        except Exception as exc:  # an unreadable checkpoint: keep a copy, as without a source
            log.warning("cannot read %s back from the checkpoint (%s); keeping a copy", ref.name, exc)
            return None
        if w0 is None or not torch.equal(w0.view(torch.uint8), ref.tensor.detach().view(torch.uint8)):
            return None
        self._file_w0.add(ref.group)
        return w0

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _live(ref: SlotRef) -> torch.Tensor:
        return ref.view(ref.tensor.detach())

    def _write(self, ref: SlotRef, contribs: list, scratch: Scratch | None = None,
               memory: torch.Tensor | None = None) -> None:
        """`memory`: an empty tensor like ref.tensor to take the W0 backup, if one is needed."""
        backup = self._w0(ref)
        fill = None
        if backup is None:
            if not contribs:
                return  # never written since the last release: already W0
            if not self.keep_originals:
                backup = ref.tensor.detach()  # one-shot bake: W0 is the live value itself
            elif self.w0_source is not None and (read := self._checkpoint_w0(ref)) is not None:
                backup = read  # held only for this write
            elif ref.rows is None:
                # the slot is the whole tensor: back it up block by block as it is written
                # (one read of W0 instead of two); BackupFill keeps it complete on any exit
                backup = memory if memory is not None else torch.empty_like(ref.tensor.detach())
                fill = BackupFill(backup)
            else:  # a q/k/v part of a fused tensor: back up all of it now
                backup = memory if memory is not None else torch.empty_like(ref.tensor.detach())
                backup.copy_(ref.tensor.detach())
            if self.keep_originals and ref.group not in self._file_w0:
                self._backups[ref.group] = backup
        live = self._live(ref)
        try:
            write_slot(live, ref.view(backup), contribs, self.compute_dtype, fill=fill, scratch=scratch)
        finally:
            if fill is not None:
                fill.complete(live)
        with self._count_lock:
            self.slot_writes += 1

    def _write_all(self, changed: list, desired: dict, refs: dict, progress=None) -> int:
        """Write every changed slot; return the number of threads that wrote them."""
        written: list[tuple] = []
        slots = [(key, refs.get(key) or self._slots[key]) for key in changed]
        try:
            if self._batched_for(slots):
                self._write_batched(slots, desired, written, progress)
                return 1
            workers = _parallel_workers(slots)
            if workers > 1:
                self._write_parallel(slots, desired, written, progress, workers)
                return workers
            return self._write_serial(slots, desired, written, progress)
        except BaseException as exc:
            self._rollback(written, refs)
            if not isinstance(exc, Exception):
                raise
            entry = exc.entry if isinstance(exc, AdapterFailure) else None
            cause = exc.__cause__ if isinstance(exc, AdapterFailure) else exc
            module = entry.module if entry is not None else None
            lora = entry.lora if entry is not None else None
            name = getattr(lora, "name", None) or "?"
            raise PatchError(f"{name}: applying {module or 'a module'} failed ({cause}); the model was rolled back",
                             lora=lora, module=module) from cause

    def _batched_for(self, slots: list) -> bool:
        if self.w0_source is not None:
            return False  # W0 comes from the file one tensor at a time (see the class docstring)
        if self.batched is not None:
            return self.batched
        return bool(slots) and all(ref.tensor.device.type != "cpu" for _key, ref in slots)

    def _write_batched(self, slots: list, desired: dict, written: list, progress) -> None:
        """All changed slots in few kernels (batched_writes.py); the rest one by one."""
        total, done = len(slots), [0]

        def advance(n: int, wrote: bool = True) -> None:
            done[0] += n
            if wrote:
                with self._count_lock:
                    self.slot_writes += n
            if progress is not None:
                progress(done[0], total)

        with torch.no_grad(), batched_writes.exact_fp32_matmuls():
            # W0 backups of newly touched tensors: one multi-tensor copy, before any write
            new = {}
            if self.keep_originals:
                for key, ref in slots:
                    if desired.get(key) and ref.group not in self._backups and ref.group not in new:
                        new[ref.group] = (torch.empty_like(ref.tensor.detach()), ref.tensor.detach())
                batched_writes.copy_all([b for b, _t in new.values()], [t for _b, t in new.values()])
                self._backups.update({g: b for g, (b, _t) in new.items()})
            resets, groups, rest = [], {}, []
            for key, ref in slots:
                contribs = desired.get(key, [])
                live = self._live(ref)
                if not contribs:
                    if ref.group in self._backups:  # else never written: already W0
                        resets.append((key, ref))
                    else:
                        advance(1, wrote=False)
                    continue
                bkey = batched_writes.batch_key(live, ref.shape, contribs)
                if bkey is None:
                    rest.append((key, ref))
                    continue
                w0 = ref.view(self._backups[ref.group]) if self.keep_originals else live
                groups.setdefault(bkey, []).append((key, live, w0, contribs))
            if resets:
                written.extend(k for k, _r in resets)
                batched_writes.copy_all([self._live(r) for _k, r in resets],
                                        [r.view(self._backups[r.group]) for _k, r in resets])
                advance(len(resets))
            batches = []
            limits = {}
            for bkey, members in groups.items():
                if bkey.device not in limits:
                    limits[bkey.device] = batched_writes.batch_limit(bkey.device)
                for run in batched_writes.split_batches(members, bkey.slot_elements, limits[bkey.device]):
                    batches.append((bkey, run))
            for bkey, run in batches:
                delta = batched_writes.stacked_delta([c for _k, _l, _w, c in run], bkey, self.compute_dtype)
                written.extend(k for k, _l, _w, _c in run)  # before the first write: rolled back on failure
                batched_writes.write_batch([l for _k, l, _w, _c in run], [w for _k, _l, w, _c in run], delta)
                del delta
                advance(len(run))
        for key, ref in rest:
            written.append(key)
            self._write(ref, desired.get(key, []))
            if progress is not None:
                done[0] += 1
                progress(done[0], total)

    def _write_serial(self, slots: list, desired: dict, written: list, progress) -> int:
        small, big = [], []
        for key, ref in slots:
            (small if _numel(ref.shape) < SMALL_SLOT_ELEMENTS else big).append((key, ref))
        big_threads = self._large_slot_threads() if big else None
        scratch = Scratch()  # one fp32 row-block buffer for all of this call's slot writes
        used = 1
        for group, threads in ((small, 1), (big, big_threads)):
            with cpu_threads.torch_threads(threads):
                if group:
                    used = max(used, torch.get_num_threads())
                for key, ref in group:
                    written.append(key)
                    self._write(ref, desired.get(key, []), scratch)
                    if progress is not None:
                        progress(len(written), len(slots))
        return used

    def _large_slot_threads(self) -> int | None:
        """Intra-op threads for the large slots of a write on the calling thread; None: torch's."""
        if self.large_slot_threads == "free":
            return cpu_threads.free_cpu_threads()
        if self.large_slot_threads == "torch":
            return None
        return int(self.large_slot_threads)

    def _write_parallel(self, slots: list, desired: dict, written: list, progress, workers: int) -> None:
        items = _by_tensor(slots)
        # New backups are allocated here, on the calling thread: glibc serves it from the main arena,
        # which recycles the memory earlier backups gave back, while a worker thread's arena returns
        # freed memory to the OS and faults every page in again (docs/BENCHMARKS.md).
        memory = {}
        if self.keep_originals:
            for item in items:
                ref = item[0][1]
                if (self._backups.get(ref.group) is None and ref.group not in self._file_w0
                        and self.w0_source is None and any(desired.get(k) for k, _r in item)):
                    memory[ref.group] = torch.empty_like(ref.tensor.detach())
        lock = threading.Lock()
        done = [0]

        def work(item, scratch):
            for key, ref in item:
                with lock:
                    written.append(key)  # before the write: a failed write is rolled back too
                self._write(ref, desired.get(key, []), scratch, memory.pop(ref.group, None))
                if progress is not None:
                    with lock:
                        done[0] += 1
                        progress(done[0], len(slots))

        run_parallel(items, work, workers, make_state=Scratch)

    def _rollback(self, written: list, refs: dict) -> None:
        if not self.keep_originals:
            log.error("apply failed during a one-shot bake; the weights are partly merged")
            return
        slots = [(key, self._slots.get(key) or refs[key]) for key in dict.fromkeys(written)]
        if self._batched_for(slots):
            # the path that wrote the previous values writes them again: the same bits (an fp32
            # weight would keep the other path's rounding order otherwise)
            try:
                self._write_batched(slots, {k: self._contribs.get(k, []) for k, _r in slots}, [], None)
                self._release_unused_backups()
                return
            except Exception:
                log.exception("batched rollback failed; rolling back slot by slot")
        for key in reversed(written):
            ref = self._slots.get(key) or refs[key]
            old = self._contribs.get(key, [])
            try:
                self._write(ref, old)
            except Exception:  # cannot rebuild the old value: fall back to W0 for this slot
                log.exception("rollback of %s failed; slot reset to its original weight", key)
                backup = self._w0(ref)
                if backup is not None:
                    write_slot(self._live(ref), ref.view(backup), [], self.compute_dtype)
                self._contribs.pop(key, None)
                self._slots.pop(key, None)
        self._release_unused_backups()

    def _release_unused_backups(self) -> None:
        used = {self._slots[k].group for k in self._contribs}
        for group in [g for g in self._backups if g not in used]:
            del self._backups[group]
        self._file_w0 &= used
