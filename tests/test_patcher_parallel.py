"""Slot writes on worker threads (large applies): same bits as the one-thread path, every tensor's
slots on one thread, failures and interrupts anywhere roll back exactly, torch's thread setting
restored."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, assert_bitwise, make_lora, oracle, snapshot, ulp_distance  # noqa: E402

import lora_core.cpu_threads as cpu_threads  # noqa: E402
import lora_core.patcher.patcher as patcher_module  # noqa: E402
from lora_core.patcher import ActiveLora, Patcher, PatchError  # noqa: E402
from lora_core.patcher.parallel_writes import run_parallel  # noqa: E402


@pytest.fixture
def two_threads(monkeypatch):
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 2)
    yield
    torch.set_num_threads(old)


def stack_for(model):
    a = make_lora(model, "a", seed=2, full_keys=("unet:up_conv",), bias=True)
    b = make_lora(model, "b", seed=3, keys=["unet:down_attn_to_q", "unet:mid_ff", "te2:k_proj", "te2:q_proj"])
    return [ActiveLora(a, te=0.7, unet=1.3), ActiveLora(b, unet=0.4, te=0.9)]


def record_threads(monkeypatch, delay=0.0):
    """Spy on write_slot: the thread and intra-op thread count of every slot write."""
    seen = []
    real = patcher_module.write_slot

    def spy(live, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads(), live.data_ptr()))
        if delay:
            time.sleep(delay)  # long enough that the helper thread gets items too
        return real(live, *a, **k)

    monkeypatch.setattr(patcher_module, "write_slot", spy)
    return seen


def test_parallel_writes_give_the_same_bits_as_serial_ones(two_threads, monkeypatch):
    serial_model, parallel_model = FakeBinding(seed=1), FakeBinding(seed=1)
    w0 = snapshot(serial_model)
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 1 << 40)
    Patcher(serial_model).apply(stack_for(serial_model))
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 0)
    seen = record_threads(monkeypatch, delay=0.01)
    p = Patcher(parallel_model)
    stack = stack_for(parallel_model)
    report = p.apply(stack)
    assert_bitwise(parallel_model, snapshot(serial_model))
    want = oracle(parallel_model, w0, stack)
    for k, v in parallel_model.tensors.items():
        assert ulp_distance(v.detach(), want[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), k
    assert len({name for name, _n, _p in seen}) == 2  # both threads wrote slots
    assert {n for _name, n, _p in seen} == {1}  # one intra-op thread each
    assert torch.get_num_threads() == 2
    assert report.slots_recomputed == len(seen) == p.slot_writes
    assert report.write_threads == 2
    # the three slots of the fused in_proj (one tensor) were written by one thread
    fused = parallel_model.tensors["te2.in_proj_weight"]
    in_proj_threads = {name for name, _n, ptr in seen
                       if fused.data_ptr() <= ptr < fused.data_ptr() + fused.numel() * fused.element_size()}
    assert len(in_proj_threads) == 1
    p.restore()
    assert_bitwise(parallel_model, w0)
    assert p.backup_bytes == 0


@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("fail_at", [1, 2, 4])  # the second LoRA rewrites 4 slots
def test_a_failing_write_on_any_thread_rolls_everything_back(two_threads, monkeypatch, exc, fail_at):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 0)
    first, second = stack_for(model)
    p = Patcher(model)
    p.apply([first])
    before = snapshot(model)
    backups = p.backup_bytes
    real = patcher_module.write_slot
    calls = {"n": 0}
    lock = threading.Lock()

    def failing(*a, **k):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        time.sleep(0.005)
        if n == fail_at:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(patcher_module, "write_slot", failing)
    with pytest.raises((PatchError, KeyboardInterrupt)) as info:
        p.apply([first, second])
    assert isinstance(info.value, type(exc) if isinstance(exc, KeyboardInterrupt) else PatchError)
    monkeypatch.setattr(patcher_module, "write_slot", real)
    assert_bitwise(model, before)
    assert p.backup_bytes == backups
    assert p.stack == (first,)
    assert torch.get_num_threads() == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("lora_core-patch")]
    p.apply([first, second])  # the state is consistent: the same apply now goes through
    p.restore()
    assert_bitwise(model, FakeBinding(seed=1).snapshot())


def test_small_applies_stay_on_the_calling_thread(two_threads, monkeypatch):
    model = FakeBinding(seed=1)  # a few hundred elements: below PARALLEL_MIN_ELEMENTS
    seen = record_threads(monkeypatch)
    report = Patcher(model).apply(stack_for(model))
    assert {name for name, _n, _p in seen} == {threading.current_thread().name}
    assert report.write_threads == 1  # tiny slots: one intra-op thread


def test_progress_counts_every_slot_once(two_threads, monkeypatch):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 0)
    calls = []
    report = Patcher(model).apply(stack_for(model), progress=lambda done, total: calls.append((done, total)))
    n = report.slots_recomputed
    assert [d for d, _t in calls] == list(range(1, n + 1))
    assert {t for _d, t in calls} == {n}


def test_run_parallel_stops_taking_items_after_a_failure():
    started = []
    lock = threading.Lock()

    def work(item, _state):
        with lock:
            started.append(item)
        if item == 0:
            raise ValueError("first item fails")
        time.sleep(0.002)

    with pytest.raises(ValueError):
        run_parallel(list(range(200)), work, workers=2)
    assert len(started) < 200


def test_parallel_restore_is_bitwise_and_uses_both_threads(two_threads, monkeypatch):
    model = FakeBinding(seed=1)
    w0 = snapshot(model)
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 0)
    p = Patcher(model)
    p.apply(stack_for(model))
    writes = p.slot_writes
    seen = record_threads(monkeypatch, delay=0.01)
    p.restore()
    assert_bitwise(model, w0)
    assert len({name for name, _n, _p in seen}) == 2
    assert p.slot_writes == writes + len(seen)
    assert p.backup_bytes == 0 and p.stack == ()
    assert torch.get_num_threads() == 2


def test_parallel_writes_to_inference_tensors_inside_inference_mode(two_threads, monkeypatch):
    """Hosts that load weights under torch.inference_mode() (Forge) can only have them written
    in place inside it; the mode is per thread, so the helper threads must enter it too."""
    reference = FakeBinding(seed=1)
    Patcher(reference).apply(stack_for(reference))
    model = FakeBinding(seed=1)
    with torch.inference_mode():
        model.tensors = {k: torch.nn.Parameter(t.detach().clone(), requires_grad=False) for k, t in model.tensors.items()}
    assert all(t.is_inference() for t in model.tensors.values())
    w0 = snapshot(model)
    monkeypatch.setattr(patcher_module, "PARALLEL_MIN_ELEMENTS", 0)
    seen = record_threads(monkeypatch, delay=0.01)
    p = Patcher(model)
    with torch.inference_mode():
        report = p.apply(stack_for(model))
    assert report.write_threads == 2 and len({name for name, _, _ in seen}) == 2
    assert_bitwise(model, snapshot(reference))
    with torch.inference_mode():
        p.restore()
    assert_bitwise(model, w0)
