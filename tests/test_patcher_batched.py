"""Batched slot writes (the accelerator path, batched_writes.py), run here on CPU tensors by forcing
`Patcher(batched=True)`: the same weights as the per-slot path within fp32 rounding order, one
batched matmul per product shape, incremental and exactly reversible, rolled back on failure, and
chosen automatically only off the CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, assert_bitwise, make_lora, oracle, snapshot, ulp_distance  # noqa: E402

import lora_core.patcher.batched_writes as batched_module  # noqa: E402
from lora_core.patcher import ActiveLora, Patcher, PatchError  # noqa: E402
from lora_core.patcher.plan import pack_to  # noqa: E402


def mixed_stack(model):
    """Low-rank LoRAs of two ranks (so one stack has two product shapes per weight shape), a full
    ΔW that depends on W0, bias deltas, the fused q/k/v tensor and an fp32 weight."""
    a = make_lora(model, "a", seed=2, rank=2, full_keys=("unet:up_conv",), bias=True)
    b = make_lora(model, "b", seed=3, rank=3, keys=["unet:down_attn_to_q", "unet:down_attn_to_k", "unet:mid_ff",
                                                     "te2:k_proj", "te2:q_proj", "unet:up_fp32"])
    return [ActiveLora(a, te=0.7, unet=1.3), ActiveLora(b, unet=0.4, te=0.9)]


def count_bmm(monkeypatch):
    calls = []
    real = torch.bmm

    def spy(a, b, *args, **kw):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(batched_module.torch, "bmm", spy)
    return calls


def test_batched_matches_the_per_slot_path_and_the_oracle(monkeypatch):
    serial_model, batched_model = FakeBinding(seed=1), FakeBinding(seed=1)
    w0 = snapshot(batched_model)
    Patcher(serial_model, batched=False).apply(mixed_stack(serial_model))
    calls = count_bmm(monkeypatch)
    p = Patcher(batched_model, batched=True)
    stack = mixed_stack(batched_model)
    report = p.apply(stack)
    want = oracle(batched_model, w0, stack)
    serial = snapshot(serial_model)
    for k, v in batched_model.tensors.items():
        got = v.detach()
        assert ulp_distance(got, want[k]) <= (1.0 if got.dtype == torch.float16 else 64.0), k
        # fp32 rounding order may differ from the per-slot GEMM (W0 added inside vs after it)
        assert ulp_distance(got, serial[k]) <= (1.0 if got.dtype == torch.float16 else 64.0), k
    # one batched product per (weight shape, dtype, ranks of its contributions), not one per slot
    # a touches all 11 weights (up_conv with a full ΔW) and 2 biases, b a subset of those weights:
    # 10 low-rank slots; up_conv and the biases go one by one
    assert report.slots_recomputed == 13
    assert 0 < len(calls) < 10
    assert report.slots_recomputed == p.slot_writes
    p.restore()
    assert_bitwise(batched_model, w0)
    assert p.backup_bytes == 0


def test_incremental_reweight_and_same_stack_again(monkeypatch):
    model = FakeBinding(seed=4)
    w0 = snapshot(model)
    p = Patcher(model, batched=True)
    a, b = mixed_stack(model)
    p.apply([a, b])
    again = p.apply([a, b])
    assert again.slots_recomputed == 0
    b2 = ActiveLora(b.lora, unet=0.1, te=0.9)
    report = p.apply([a, b2])
    assert report.slots_recomputed == 4  # b's unet slots only: to_q, to_k, mid.ff, up.fp32
    want = oracle(model, w0, [a, b2])
    for k, v in model.tensors.items():
        assert ulp_distance(v.detach(), want[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), k
    p.apply([b2])  # a leaves: its slots go back to W0 + b only, untouched ones to W0
    want = oracle(model, w0, [b2])
    for k, v in model.tensors.items():
        assert ulp_distance(v.detach(), want[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), k
    p.apply([])
    assert_bitwise(model, w0)
    assert p.backup_bytes == 0


def test_small_batch_limit_gives_the_same_bits(monkeypatch):
    one, many = FakeBinding(seed=5), FakeBinding(seed=5)
    Patcher(one, batched=True).apply(mixed_stack(one))
    monkeypatch.setattr(batched_module, "BATCH_BYTES", 1)  # every slot its own batch
    calls = count_bmm(monkeypatch)
    report = Patcher(many, batched=True).apply(mixed_stack(many))
    assert len(calls) == report.slots_recomputed - 3 == 10  # all but up_conv and the 2 biases
    assert_bitwise(many, snapshot(one))


def test_split_batches_respects_the_byte_limit():
    runs = batched_module.split_batches(list(range(10)), slot_elements=100, limit_bytes=4 * 100 * 3)
    assert [len(r) for r in runs] == [3, 3, 3, 1]
    assert sum(runs, []) == list(range(10))
    assert batched_module.split_batches([1, 2], slot_elements=10 ** 9) == [[1], [2]]


@pytest.mark.parametrize("fail_batch", [0, 1, 2])  # the second apply has 3 batches
def test_a_failing_batch_rolls_everything_back(monkeypatch, fail_batch):
    model = FakeBinding(seed=6)
    first, second = mixed_stack(model)
    p = Patcher(model, batched=True)
    p.apply([first])
    before = snapshot(model)
    backups = p.backup_bytes
    real = batched_module.write_batch
    n = {"calls": 0}

    def failing(lives, w0s, delta):  # fails once, at batch `fail_batch` of the apply
        n["calls"] += 1
        if n["calls"] == fail_batch + 1:
            lives[0].fill_(123.0)  # a partial write must be undone too
            raise RuntimeError("CUDA out of memory (injected)")
        return real(lives, w0s, delta)

    monkeypatch.setattr(batched_module, "write_batch", failing)
    with pytest.raises(PatchError):
        p.apply([first, ActiveLora(second.lora, unet=0.2, te=0.5)])
    monkeypatch.setattr(batched_module, "write_batch", real)
    assert_bitwise(model, before)
    assert p.backup_bytes == backups
    assert p.stack == (first,)
    p.restore()
    assert_bitwise(model, FakeBinding(seed=6).snapshot())


def test_progress_counts_every_slot_once():
    model = FakeBinding(seed=7)
    calls = []
    report = Patcher(model, batched=True).apply(mixed_stack(model), progress=lambda d, t: calls.append((d, t)))
    n = report.slots_recomputed
    assert calls and calls[-1] == (n, n)
    assert [d for d, _t in calls] == sorted({d for d, _t in calls})  # strictly increasing
    assert {t for _d, t in calls} == {n}


def test_auto_choice_is_per_slot_on_the_cpu(monkeypatch):
    model = FakeBinding(seed=8)
    calls = count_bmm(monkeypatch)
    Patcher(model).apply(mixed_stack(model))
    assert calls == []


def test_one_shot_bake_without_backups():
    model = FakeBinding(seed=9)
    w0 = snapshot(model)
    stack = mixed_stack(model)
    p = Patcher(model, batched=True, keep_originals=False)
    p.apply(stack)
    want = oracle(model, w0, stack)
    for k, v in model.tensors.items():
        assert ulp_distance(v.detach(), want[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), k
    assert p.backup_bytes == 0


def test_pack_to_gives_contiguous_copies_in_one_buffer():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(3, 4, generator=g).half(), torch.randn(5, generator=g).half(), torch.randn(2, 2, 2, generator=g)]
    out = pack_to(ts, torch.float32, torch.device("cpu"))
    for t, o in zip(ts, out):
        assert o.dtype == torch.float32 and o.shape == t.shape and o.is_contiguous()
        assert torch.equal(o, t.float())
    base = out[0].untyped_storage().data_ptr()
    assert all(o.untyped_storage().data_ptr() == base for o in out)  # one buffer, one transfer


def test_when_the_batched_rollback_fails_too_it_falls_back_slot_by_slot(monkeypatch):
    model = FakeBinding(seed=10)
    first, second = mixed_stack(model)
    p = Patcher(model, batched=True)
    p.apply([first])
    before = snapshot(model)

    def broken(lives, w0s, delta):
        raise RuntimeError("device lost (injected)")

    monkeypatch.setattr(batched_module, "write_batch", broken)
    with pytest.raises(PatchError):
        p.apply([first, second])
    assert p.stack == (first,)
    for k, v in model.tensors.items():  # rebuilt by the per-slot formula: same values within rounding order
        assert ulp_distance(v.detach(), before[k]) <= (1.0 if v.dtype == torch.float16 else 64.0), k
    monkeypatch.undo()
    p.restore()
    assert_bitwise(model, FakeBinding(seed=10).snapshot())


def test_a_real_diffusers_model_batched_vs_per_slot(tmp_path):
    from bench.engine import PLAN, build_models, make_lora_file
    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding

    results = []
    for batched in (False, True):
        unet, te = build_models(quick=True)
        w0 = {n: p.detach().clone() for n, p in list(unet.named_parameters()) + list(te.named_parameters())}
        files = {n: make_lora_file(tmp_path, unet, te, n, 4, seed=i + 1) for i, n in enumerate(PLAN)}
        engine = Engine(Binding.from_diffusers(unet, [te]))
        engine.patcher.batched = batched
        report = engine.apply([ApplyRequest(files["L1"], 0.8, 0.8), ApplyRequest(files["L2"], 0.6, 0.6)])
        assert report.slots_recomputed > 20 and not report.warnings
        results.append({n: p.detach().clone() for n, p in list(unet.named_parameters()) + list(te.named_parameters())})
        engine.restore()
        for n, p in list(unet.named_parameters()) + list(te.named_parameters()):
            assert torch.equal(p.detach(), w0[n]), n
    changed = [n for n in results[0] if not torch.equal(results[0][n], w0[n])]
    assert len(changed) > 20
    for n in changed:
        assert ulp_distance(results[1][n], results[0][n]) <= 1.0, n


def test_tf32_is_off_while_batched_products_run_and_restored_after(monkeypatch):
    seen = []
    real = torch.bmm

    def spy(a, b, *args, **kw):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real(a, b, *args, **kw)

    monkeypatch.setattr(batched_module.torch, "bmm", spy)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as A1111 sets it for sampling
    try:
        model = FakeBinding(seed=11)
        Patcher(model, batched=True).apply(mixed_stack(model))
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
