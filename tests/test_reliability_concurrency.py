"""Concurrency and interruption.

* Two (and three) generations with different LoRA stacks requested at the same moment from
  threads through the standalone Session: every image equals the one the same request gives when
  run alone, and afterwards the model restores to its original weights bit for bit.
* A patch interrupted midway (an exception, or KeyboardInterrupt, raised inside the patcher's
  slot loop after some slots were already rewritten) leaves the model exactly at the previous
  stack's weights, and restore still gives the originals bit for bit; the same through the
  Session, where it becomes a message and the next generation is right.
* A generation cancelled midway leaves the merged weights of its stack intact (not half a stack),
  and the next request with another stack is right.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import base_models, make_lora  # noqa: E402

import lora_core.patcher.patcher as patcher_module  # noqa: E402
from lora_core.engine import Engine  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.patcher import PatchError  # noqa: E402
from lora_core.targets import Binding  # noqa: E402

PROMPTS = {
    "warm": "<lora:demo_warm:1> a red house",
    "cool+green": "<lora:demo_cool:0.7> <lora:demo_green:0.5> a red house",
    "none": "a red house",
}


def _snap(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module, snap) -> bool:
    return all(torch.equal(module.state_dict()[k], snap[k]) for k in snap)


class FailAfter:
    """Wraps the patcher's write_slot: the n-th call raises `exc`; every other call goes through
    (so the rollback, which writes slots again, works)."""

    def __init__(self, real, n: int, exc: BaseException):
        self.real, self.n, self.exc, self.calls, self.fired = real, n, exc, 0, False

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n and not self.fired:
            self.fired = True
            raise self.exc
        return self.real(*args, **kwargs)


# ------------------------------------------------------------------------------ Session level
@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from lora_core.app.session import Session

    root = tmp_path_factory.mktemp("rel_session")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    s = Session(root / "models", root / "data")
    s.library.wait_for_hashes(120)
    yield s
    s.close()
    mp.undo()


def _gen(session, key, seed=3, **kw):
    images, _info, messages = session.txt2img(PROMPTS[key], steps=4, seed=seed, width=64, height=64,
                                              sampler="Euler", **kw)
    return images, messages


def _pixels(images):
    assert images, "no image"
    return np.asarray(images[0]).copy()


def test_parallel_generations_match_sequential_runs(session):
    unet = session.pipeline.pipe.unet
    session.engine.apply([])
    w0 = _snap(unet)
    alone = {}
    for key in PROMPTS:
        images, messages = _gen(session, key)
        assert not [m for m in messages if "could not" in m.lower() or "not found" in m.lower()], messages
        alone[key] = _pixels(images)
    assert not np.array_equal(alone["warm"], alone["cool+green"])
    assert not np.array_equal(alone["warm"], alone["none"])

    results, errors = {}, []
    for round_no in range(3):
        keys = list(PROMPTS) if round_no else ["warm", "cool+green"]
        barrier = threading.Barrier(len(keys))

        def worker(key, r=round_no, b=barrier):
            try:
                b.wait()
                results[(r, key)] = _pixels(_gen(session, key)[0])
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        for key in keys:
            assert np.array_equal(results[(round_no, key)], alone[key]), (round_no, key)
    session.engine.restore()
    assert _same(unet, w0)


def test_patch_failure_inside_a_generation_is_a_message_and_changes_nothing(session, monkeypatch):
    unet = session.pipeline.pipe.unet
    warm = _pixels(_gen(session, "warm")[0])
    after_warm = _snap(unet)
    # the demo LoRAs patch one slot each: fail on the first write (the rollback writes it again)
    failing = FailAfter(patcher_module.write_slot, 1, RuntimeError("injected failure in the slot loop"))
    monkeypatch.setattr(patcher_module, "write_slot", failing)
    images, messages = _gen(session, "cool+green")
    assert failing.fired and failing.calls >= 2
    assert images == [] and any("could not be applied" in m and "injected" in m for m in messages), messages
    assert _same(unet, after_warm)
    monkeypatch.undo()
    assert np.array_equal(_pixels(_gen(session, "warm")[0]), warm)


def test_cancelled_generation_keeps_its_stack_exact_and_the_next_one_is_right(session):
    unet = session.pipeline.pipe.unet
    _gen(session, "warm")
    warm_weights = _snap(unet)
    cool = _pixels(_gen(session, "cool+green")[0])
    _gen(session, "warm")
    cancel = threading.Event()

    def progress(done, total):
        if done >= 2:
            cancel.set()

    images, messages = _gen(session, "warm", progress=progress, cancel=cancel)
    assert images == [] and any("Cancelled" in m for m in messages)
    assert _same(unet, warm_weights)
    assert np.array_equal(_pixels(_gen(session, "cool+green")[0]), cool)


# ------------------------------------------------------------------------------- Engine level
@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel_conc")
    return [make_lora(d, f"l{i}", seed=40 + i, kohya=i % 2 == 1) for i in range(3)]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "KeyboardInterrupt"])
@pytest.mark.parametrize("fail_at", [1, 7, 40])
def test_interrupted_patch_leaves_the_previous_stack_exact(lora_files, monkeypatch, exc, fail_at):
    unet, te = base_models()
    w0_unet, w0_te = _snap(unet), _snap(te)
    engine = Engine(Binding.from_diffusers(unet, [te]))
    first = [ApplyRequest(lora_files[0], 0.8, 1.0)]
    engine.apply(first)
    s1_unet, s1_te = _snap(unet), _snap(te)
    failing = FailAfter(patcher_module.write_slot, fail_at, exc)
    monkeypatch.setattr(patcher_module, "write_slot", failing)
    second = [ApplyRequest(lora_files[1], 1.0, 0.6), ApplyRequest(lora_files[2], 0.5, 1.2),
              ApplyRequest(lora_files[0], 0.3, 0.3)]
    with pytest.raises(type(exc)) as info:
        engine.apply(second)
    if isinstance(exc, Exception):
        assert isinstance(info.value, PatchError) and "rolled back" in str(info.value)
    assert failing.fired
    assert _same(unet, s1_unet) and _same(te, s1_te)  # bit for bit the previous stack
    assert [a.lora.path for a in engine.patcher.stack] == [lora_files[0]]
    monkeypatch.undo()
    # the engine goes on from there: the same stack then gives the same weights as a fresh engine
    engine.apply(second)
    unet2, te2 = base_models()
    Engine(Binding.from_diffusers(unet2, [te2])).apply(second)
    assert _same(unet, _snap(unet2)) and _same(te, _snap(te2))
    engine.restore()
    assert _same(unet, w0_unet) and _same(te, w0_te)
    assert engine.patcher.backup_bytes == 0
