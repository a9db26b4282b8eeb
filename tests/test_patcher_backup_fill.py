"""The W0 backup of a tensor is taken block by block while its first write runs (one read of W0
instead of two). It must be complete and exact whatever happens during that write."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, make_lora  # noqa: E402

from lora_core.patcher import ActiveLora, Patcher, PatchError  # noqa: E402
import lora_core.patcher.slot_math as slot_math  # noqa: E402


def assert_bitwise(binding, snap):
    for k, v in binding.tensors.items():
        assert torch.equal(v.detach(), snap[k]), k


class FailingAddmm:
    """Tensor.addmm_ that raises on its n-th call (inside a chunked slot write)."""

    def __init__(self, n, exc):
        self.real, self.n, self.exc, self.calls = torch.Tensor.addmm_, n, exc, 0

    def __call__(self, *a, **k):
        self.calls += 1
        if self.calls == self.n:  # one failure; the rollback's own writes go through
            raise self.exc
        return self.real(*a, **k)


@pytest.mark.parametrize("exc", [RuntimeError("mid-write"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("fail_at", [1, 2, 5])
def test_failure_inside_a_first_write_leaves_a_full_backup_and_rolls_back(monkeypatch, exc, fail_at):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(slot_math, "CHUNK_ELEMENTS", 16)  # several row blocks per slot
    a = make_lora(model, "a", seed=2, keys=["unet:down_attn_to_q"])
    b = make_lora(model, "b", seed=3, keys=["unet:down_attn_to_k", "unet:mid_ff", "te1:q"])
    p = Patcher(model)
    p.apply([ActiveLora(a)])
    after_a = model.snapshot()
    failing = FailingAddmm(fail_at, exc)
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda self, *a, **k: failing(self, *a, **k))
    with pytest.raises(type(exc)) as info:
        p.apply([ActiveLora(a), ActiveLora(b)])  # b's tensors are written (and backed up) for the first time
    assert isinstance(exc, KeyboardInterrupt) or isinstance(info.value, PatchError), info.value
    monkeypatch.setattr(torch.Tensor, "addmm_", failing.real)
    assert failing.calls >= fail_at  # it failed where meant to, not on a bad call
    assert_bitwise(model, after_a)
    assert p.backup_bytes == 8 * 8 * 2  # only a's tensor is still backed up
    p.apply([ActiveLora(a), ActiveLora(b)])
    p.restore()
    a2 = make_lora(model, "a", seed=2, keys=["unet:down_attn_to_q"])
    ref = FakeBinding(seed=1)
    assert_bitwise(model, ref.snapshot())
    del a2


def test_backup_taken_during_the_write_equals_the_original(monkeypatch):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(slot_math, "CHUNK_ELEMENTS", 16)
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=4)
    p = Patcher(model)
    p.apply([ActiveLora(lora)])
    checked = 0
    for name, t in model.tensors.items():
        backup = p._backups.get((id(t),))
        if backup is not None:  # fused q/k/v tensors are cloned, the others filled while written
            assert torch.equal(backup, w0[name]), name
            checked += 1
    assert checked >= 8
    p.restore()
    assert_bitwise(model, w0)


def test_backup_fill_completes_from_any_point():
    live = torch.arange(12, dtype=torch.float16).reshape(4, 3)
    fill = slot_math.BackupFill(torch.empty_like(live))
    fill.take(live, 2)
    live[2:] = -1  # must not happen before take(); shows complete() copies only the rest
    fill.complete(live)
    assert fill.tensor[:2].tolist() == live[:2].tolist() and (fill.tensor[2:] == -1).all()
    scalar = torch.tensor(3.0)
    f0 = slot_math.BackupFill(torch.empty_like(scalar))
    f0.complete(scalar)
    assert float(f0.tensor) == 3.0
