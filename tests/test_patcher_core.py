"""Patcher on a tiny fake model (contract-following fakes): values, incremental work, restore,
rollback, thread safety, block weights, family checks, LoraCache."""
from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import (  # noqa: E402
    BLOCK_IDS, FakeBinding, FullAdapter, make_lora, oracle, ulp_distance,
)

from lora_core.patcher import ActiveLora, LoraCache, Patcher, PatchError  # noqa: E402
import lora_core.patcher.slot_math as slot_math  # noqa: E402


def assert_bitwise(binding, snap):
    for k, v in binding.tensors.items():
        assert torch.equal(v.detach(), snap[k]), k
        assert v.dtype == snap[k].dtype


def assert_matches_oracle(binding, w0, stack):
    """fp16 weights: within 1 ulp of the float64 oracle (fp32 math, one rounding); fp32 weights
    hold a few ulps of fp32 matmul/accumulation error."""
    want = oracle(binding, w0, stack)
    for k, v in binding.tensors.items():
        d = ulp_distance(v.detach(), want[k])
        limit = 1.0 if v.dtype == torch.float16 else 64.0
        assert d <= limit, f"{k}: {d} ulps from the float64 oracle"


@pytest.fixture
def model():
    return FakeBinding(seed=1)


def test_apply_matches_oracle_and_restore_is_bitwise(model):
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=2, full_keys=("unet:up_conv",), bias=True)
    p = Patcher(model)
    report = p.apply([ActiveLora(lora, te=0.7, unet=1.3)])
    assert report.loras[0].matched == len(model.map)
    assert report.loras[0].unmatched == 0
    assert report.slots_recomputed > len(model.map)  # weights + the ff/norm biases
    assert_matches_oracle(model, w0, [ActiveLora(lora, te=0.7, unet=1.3)])
    for k in w0:
        assert not torch.equal(model.tensors[k], w0[k]), f"{k} was not patched"
    # the fused in_proj is backed up once for its three slots
    assert report.backed_up_tensors == len(model.tensors)
    p.restore()
    assert_bitwise(model, w0)
    assert p.backup_bytes == 0


def test_untouched_tensors_are_not_backed_up(model):
    lora = make_lora(model, "a", seed=3, keys=["unet:down_attn_to_q", "te2:k_proj"])
    p = Patcher(model)
    r = p.apply([ActiveLora(lora)])
    assert r.backed_up_tensors == 2
    assert p.backup_bytes == (8 * 8 + 24 * 8) * 2


def test_long_random_sequence_stays_exact_and_restores_bitwise(model):
    w0 = model.snapshot()
    loras = [make_lora(model, f"l{i}", seed=10 + i, full_keys=("unet:mid_ff",) if i == 2 else (), bias=i == 1)
             for i in range(4)]
    rng = random.Random(0)
    p = Patcher(model)
    for step in range(200):
        n = rng.randint(0, 3)
        stack = [ActiveLora(lora, te=rng.choice([0, 0.5, 1.0, -0.3]), unet=rng.choice([0.25, 1.0, 1.7]),
                            dyn=rng.choice([None, None, 1]))
                 for lora in rng.sample(loras, n)]
        p.apply(stack)
        if step % 20 == 0 or step > 190:
            assert_matches_oracle(model, w0, stack)
        if step % 50 == 49:
            p.apply([])
            assert_bitwise(model, w0)
    p.restore()
    assert_bitwise(model, w0)
    assert p.backup_bytes == 0


def test_unchanged_stack_does_no_tensor_work(model, monkeypatch):
    a, b = make_lora(model, "a", seed=4), make_lora(model, "b", seed=5)
    p = Patcher(model)
    p.apply([ActiveLora(a), ActiveLora(b, unet=0.5)])
    calls = []
    for name in ("mm", "add", "cat"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *x, _r=real, _n=name, **k: (calls.append(_n), _r(*x, **k))[1])
    monkeypatch.setattr("lora_core.patcher.patcher.write_slot", lambda *a, **k: calls.append("write_slot"))
    monkeypatch.setattr(torch.Tensor, "clone", lambda *a, **k: calls.append("clone"))
    resolves = model.resolve_calls
    writes = p.slot_writes
    # an equal (not identical) stack object: same LoraFile objects, same numbers
    r = p.apply([ActiveLora(a), ActiveLora(b, unet=0.5)])
    assert r.slots_recomputed == 0
    assert p.slot_writes == writes
    assert calls == []
    assert model.resolve_calls == resolves
    assert r.loras[0].matched == len(model.map)


def test_changing_one_weight_touches_only_that_loras_slots(model):
    w0 = model.snapshot()
    a = make_lora(model, "a", seed=6, keys=["unet:down_attn_to_q", "unet:mid_ff", "te1:q"])
    b = make_lora(model, "b", seed=7, keys=["unet:up_conv", "unet:mid_ff", "te2:v_proj"])
    p = Patcher(model)
    p.apply([ActiveLora(a), ActiveLora(b)])
    # unet weight of b: its unet slots (up_conv, mid_ff) only; te2:v_proj keeps its multiplier
    r = p.apply([ActiveLora(a), ActiveLora(b, unet=0.3)])
    assert r.slots_recomputed == 2
    # te weight of a: only te1:q
    r = p.apply([ActiveLora(a, te=0.2), ActiveLora(b, unet=0.3)])
    assert r.slots_recomputed == 1
    assert_matches_oracle(model, w0, [ActiveLora(a, te=0.2), ActiveLora(b, unet=0.3)])
    # dropping b: its 3 slots (mid_ff recomputed with a only)
    r = p.apply([ActiveLora(a, te=0.2)])
    assert r.slots_recomputed == 3
    assert r.backed_up_tensors == 3


def test_low_rank_loras_on_a_slot_share_one_matmul(model, monkeypatch):
    w0 = model.snapshot()
    loras = [make_lora(model, f"x{i}", seed=20 + i, keys=["unet:mid_ff"], rank=2 + i) for i in range(3)]
    shapes = []
    real = slot_math._write_low_rank_chunked

    def spy(live, w0_, up, down, **kw):
        shapes.append((tuple(up.shape), tuple(down.shape)))
        return real(live, w0_, up, down, **kw)

    monkeypatch.setattr(slot_math, "_write_low_rank_chunked", spy)
    stack = [ActiveLora(lo, unet=0.5 + i) for i, lo in enumerate(loras)]
    Patcher(model).apply(stack)
    assert shapes == [((16, 2 + 3 + 4), (2 + 3 + 4, 8))]  # one product of the concatenated ranks
    assert_matches_oracle(model, w0, stack)


def test_exception_midway_rolls_back_exactly(model):
    a = make_lora(model, "a", seed=8)
    b = make_lora(model, "b", seed=9, keys=["unet:down_attn_to_q", "unet:up_conv", "te1:q"])
    p = Patcher(model)
    p.apply([ActiveLora(a, unet=0.8)])
    before = model.snapshot()
    backups = p.backup_bytes
    bad = make_lora(model, "bad", seed=10, keys=["unet:down_attn_to_k", "unet:up_fp32"])
    bad.adapters["unet:up_fp32"] = FullAdapter("unet:up_fp32", torch.zeros(8, 8), fail=True)
    writes = p.slot_writes
    with pytest.raises(PatchError) as err:
        # many slots change (a's weight, b added) before the failing one
        p.apply([ActiveLora(a, unet=0.3), ActiveLora(b), ActiveLora(bad)])
    assert p.slot_writes - writes >= 6  # several slots were rewritten, then rolled back
    assert err.value.lora is bad
    assert err.value.module == "unet:up_fp32"
    assert "rolled back" in str(err.value)
    assert_bitwise(model, before)
    assert p.backup_bytes == backups
    assert [x.lora for x in p.stack] == [a]
    # and the patcher still works from that state
    p.apply([ActiveLora(a, unet=0.3), ActiveLora(b)])
    p.restore()


def test_exception_in_first_apply_leaves_no_backups(model):
    w0 = model.snapshot()
    bad = make_lora(model, "bad", seed=11)
    bad.adapters["unet:up_fp32"] = FullAdapter("unet:up_fp32", torch.zeros(8, 8), fail=True)
    p = Patcher(model)
    with pytest.raises(PatchError):
        p.apply([ActiveLora(bad)])
    assert_bitwise(model, w0)
    assert p.backup_bytes == 0


def test_concurrent_applies_never_interleave(model, monkeypatch):
    w0 = model.snapshot()
    loras = [make_lora(model, f"t{i}", seed=30 + i) for i in range(3)]
    p = Patcher(model)
    active = [0]
    overlap = []
    real = slot_math.write_slot

    def guarded(*args, **kw):
        active[0] += 1
        if active[0] > 1:
            overlap.append(True)
        time.sleep(0.0005)  # widen the window a race would need
        try:
            return real(*args, **kw)
        finally:
            active[0] -= 1

    monkeypatch.setattr("lora_core.patcher.patcher.write_slot", guarded)
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(15):
                p.apply([ActiveLora(lo, unet=rng.choice([0.5, 1.0])) for lo in rng.sample(loras, rng.randint(0, 3))])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not overlap
    assert_matches_oracle(model, w0, list(p.stack))
    p.restore()
    assert_bitwise(model, w0)


def test_block_weights_and_te_base(model):
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=12)
    bw = [1.0] * 26
    bw[BLOCK_IDS.index("IN01")] = 0.0      # down_attn_to_q untouched
    bw[BLOCK_IDS.index("M00")] = 0.5
    bw[BLOCK_IDS.index("BASE")] = 0.25     # text encoders
    stack = [ActiveLora(lora, te=0.8, unet=1.0, block_weights=bw)]
    Patcher(model).apply(stack)
    assert torch.equal(model.tensors["down.attn.to_q.weight"], w0["down.attn.to_q.weight"])
    assert_matches_oracle(model, w0, stack)


def test_short_lbw_vector_is_spread_like_the_extension():
    a = ActiveLora(object(), unet=2.0, block_weights=[1] + [0.5] * 6 + [0.25] + [1] * 9)  # 17 values
    assert a.multiplier("unet", "IN01") == 1.0
    assert a.multiplier("unet", "IN00") == 0.0   # not listed in the 17-value layout
    assert a.multiplier("unet", "M00") == 0.5
    assert a.multiplier("te1", "BASE") == 1.0


def test_family_mismatch_is_refused_with_both_names(model):
    w0 = model.snapshot()
    xl = make_lora(model, "xl_style", seed=13, family="sdxl")
    ok = make_lora(model, "ok", seed=14, keys=["te1:q"])
    r = Patcher(model).apply([ActiveLora(xl), ActiveLora(ok)])
    assert r.loras[0].refused and "sdxl" in r.loras[0].refused and "sd1" in r.loras[0].refused
    assert any("xl_style" in w and "sdxl" in w and "sd1" in w for w in r.warnings)
    assert r.loras[1].applied
    changed = [k for k in w0 if not torch.equal(model.tensors[k], w0[k])]
    assert changed == ["te.q.weight"]


def test_partial_match_reports_counts(model):
    lora = make_lora(model, "part", seed=15, keys=["te1:q", "unet:mid_ff"])
    lora.adapters["unet:not_in_model"] = lora.adapters["te1:q"]
    lora.unclaimed = ["lora_unet_weird_thing"]
    r = Patcher(model).apply([ActiveLora(lora)])
    assert (r.loras[0].matched, r.loras[0].unmatched) == (2, 2)
    assert any("2 of 4 modules" in w for w in r.warnings)


def test_shape_mismatch_is_unmatched_not_fatal(model):
    lora = make_lora(model, "shape", seed=16, keys=["te1:q"])
    ad = lora.adapters["te1:q"]
    ad.up = torch.zeros(5, 2, dtype=torch.half)
    r = Patcher(model).apply([ActiveLora(lora)])
    assert r.loras[0].matched == 0 and r.loras[0].unmatched == 1
    assert r.slots_recomputed == 0


def test_reorder_and_duplicates_stay_consistent(model):
    w0 = model.snapshot()
    a, b = make_lora(model, "a", seed=17), make_lora(model, "b", seed=18)
    p = Patcher(model)
    p.apply([ActiveLora(a), ActiveLora(b)])
    p.apply([ActiveLora(b), ActiveLora(a)])
    assert_matches_oracle(model, w0, [ActiveLora(b), ActiveLora(a)])
    p.apply([ActiveLora(a), ActiveLora(a, unet=0.5)])
    assert_matches_oracle(model, w0, [ActiveLora(a), ActiveLora(a, unet=0.5)])
    p.restore()
    assert_bitwise(model, w0)


def test_one_shot_bake_needs_no_backup(model):
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=19)
    p = Patcher(model, keep_originals=False)
    r = p.apply([ActiveLora(lora)])
    assert r.backup_bytes == 0
    assert_matches_oracle(model, w0, [ActiveLora(lora)])
    with pytest.raises(RuntimeError):
        p.restore()


# ---------------------------------------------------------------- LoraCache
class _Loader:
    def __init__(self):
        self.loads = []

    def __call__(self, path):
        self.loads.append(path)
        return type("L", (), {"path": path, "nbytes": os.path.getsize(path)})()


def _touch(path: Path, n: int):
    path.write_bytes(b"x" * n)


def test_cache_lru_by_count_and_size(tmp_path):
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for f in files:
        _touch(f, 400_000)
    loader = _Loader()
    c = LoraCache(max_count=2, loader=loader)
    a = c.get(files[0])
    assert c.get(files[0]) is a and c.hits == 1
    c.get(files[1])
    c.get(files[0])          # 0 is now most recent
    c.get(files[2])          # evicts 1
    assert files[1] not in c and files[0] in c and len(c) == 2
    c2 = LoraCache(max_mb=1, loader=loader)   # 1 MiB: two 400 kB files fit, three do not
    for f in files[:3]:
        c2.get(f)
    assert len(c2) == 2 and files[0] not in c2


def test_cache_reloads_a_changed_file(tmp_path):
    f = tmp_path / "a.safetensors"
    _touch(f, 10)
    loader = _Loader()
    c = LoraCache(loader=loader)
    first = c.get(f)
    _touch(f, 20)   # size changes, so the stamp changes even within the mtime resolution
    second = c.get(f)
    assert second is not first and len(loader.loads) == 2 and len(c) == 1


def test_cache_propagates_load_errors(tmp_path):
    def bad(path):
        raise ValueError(f"{path}: not a LoRA")

    f = tmp_path / "a.safetensors"
    _touch(f, 10)
    c = LoraCache(loader=bad)
    with pytest.raises(ValueError, match="not a LoRA"):
        c.get(f)
    assert len(c) == 0


def test_host_replacing_param_data_keeps_state_consistent(model):
    """Hosts move models between devices (module.to / lowvram): the Parameter object stays, its
    storage is replaced. The patcher must still recompute from the right W0 and restore it."""
    w0 = model.snapshot()
    a, b = make_lora(model, "a", seed=40), make_lora(model, "b", seed=41)
    p = Patcher(model)
    p.apply([ActiveLora(a)])
    for t in model.tensors.values():
        t.data = t.data.clone()  # new storage, same Parameter object
    p.apply([ActiveLora(a), ActiveLora(b, unet=0.5)])
    assert_matches_oracle(model, w0, [ActiveLora(a), ActiveLora(b, unet=0.5)])
    p.restore()
    assert_bitwise(model, w0)


def test_chunked_writes_match_the_oracle(model, monkeypatch):
    """Large slots are written in row blocks; force tiny blocks so every slot takes that path."""
    monkeypatch.setattr(slot_math, "CHUNK_ELEMENTS", 16)
    w0 = model.snapshot()
    a, b = make_lora(model, "a", seed=50), make_lora(model, "b", seed=51, rank=3)
    p = Patcher(model)
    stack = [ActiveLora(a, unet=0.9), ActiveLora(b, te=0.4, unet=-0.6)]
    p.apply(stack)
    assert_matches_oracle(model, w0, stack)
    p.restore()
    assert_bitwise(model, w0)
