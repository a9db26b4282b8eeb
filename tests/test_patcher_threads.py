"""Thread policy of the patcher for applies written on the calling thread (below
PARALLEL_MIN_ELEMENTS; larger ones use worker threads, see test_patcher_parallel.py): small slots
and planning with one intra-op thread, large slots as `Patcher.large_slot_threads` says (default
"free": torch's setting unless other processes keep the CPUs busy); torch's setting always restored."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, make_lora  # noqa: E402

import lora_core.cpu_threads as cpu_threads  # noqa: E402
import lora_core.patcher.patcher as patcher_module  # noqa: E402
from lora_core.patcher import ActiveLora, Patcher  # noqa: E402


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def spy_threads(monkeypatch):
    seen = []
    real = patcher_module.write_slot

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(patcher_module, "write_slot", spy)
    return seen


def test_small_slots_use_one_thread_and_the_setting_is_restored(two_threads, monkeypatch):
    model = FakeBinding(seed=1)  # every slot is tiny
    seen = spy_threads(monkeypatch)
    p = Patcher(model)
    p.apply([ActiveLora(make_lora(model, "a", seed=2))])
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    p.restore()


@pytest.mark.parametrize("elsewhere, expected", [(0, 2), (1, 1), (7, 1), (None, 2)])
def test_large_slots_follow_the_cpus_left_free(two_threads, monkeypatch, elsewhere, expected):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(patcher_module, "SMALL_SLOT_ELEMENTS", 0)  # every slot counts as large
    monkeypatch.setattr(cpu_threads, "runnable_elsewhere", lambda: elsewhere)
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 2)
    seen = spy_threads(monkeypatch)
    p = Patcher(model)
    p.apply([ActiveLora(make_lora(model, "a", seed=2))])
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("setting, expected", [("torch", 2), (1, 1), (2, 2)])
def test_large_slot_threads_setting(two_threads, monkeypatch, setting, expected):
    model = FakeBinding(seed=1)
    monkeypatch.setattr(patcher_module, "SMALL_SLOT_ELEMENTS", 0)
    monkeypatch.setattr(cpu_threads, "runnable_elsewhere", lambda: 7)  # busy: only "free" would care
    seen = spy_threads(monkeypatch)
    p = Patcher(model, large_slot_threads=setting)
    p.apply([ActiveLora(make_lora(model, "a", seed=2))])
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("setting", ["auto", 0, None])
def test_large_slot_threads_refuses_other_values(setting):
    with pytest.raises(ValueError):
        Patcher(FakeBinding(seed=1), large_slot_threads=setting)


def test_torch_threads_sets_and_restores(two_threads):
    with cpu_threads.torch_threads(1):
        assert torch.get_num_threads() == 1
        with cpu_threads.torch_threads(None):
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError):
        with cpu_threads.torch_threads(1):
            raise KeyError("inside")
    assert torch.get_num_threads() == 2


def test_threads_are_restored_when_a_write_fails(two_threads, monkeypatch):
    model = FakeBinding(seed=1)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(patcher_module, "write_slot", boom)
    with pytest.raises(Exception):
        Patcher(model).apply([ActiveLora(make_lora(model, "a", seed=2))])
    assert torch.get_num_threads() == 2


def test_runnable_elsewhere_reads_linux_counters():
    n = cpu_threads.runnable_elsewhere()
    if sys.platform.startswith("linux"):
        assert isinstance(n, int) and n >= 0
    else:
        assert n is None or n >= 0
    assert cpu_threads.usable_cpus() >= 1


def test_finite_check_restores_threads_on_refusal(two_threads, tmp_path):
    from safetensors.torch import save_file

    from lora_core.formats import LoraFormatError, load_lora

    m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    up = torch.zeros(8, 2)
    up[0, 0] = float("nan")
    save_file({f"{m}.lora_down.weight": torch.zeros(2, 8), f"{m}.lora_up.weight": up}, str(tmp_path / "n.safetensors"))
    with pytest.raises(LoraFormatError):
        load_lora(tmp_path / "n.safetensors")
    assert torch.get_num_threads() == 2
