"""A long session: 1,000 random switches of LoRA stacks, weights and block weights on a tiny SD1
model through the Engine, with real files (diffusers+PEFT `save_lora_weights`, its kohya
conversion, and LyCORIS LoHa/LoKr/LoCon/OFT files written by the LyCORIS library) and an LRU cache
smaller than the set of files, so files are evicted and re-read all the time.

Afterwards: the weights equal the originals bit for bit; along the way, sampled stacks equal what
a fresh Engine gives for the same stack on a fresh model (no drift, no stale slot); resident
memory has not grown beyond a small bound; every LoraFile dropped from the cache (and not in the
active stack) has been released (weak references prove it)."""
from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from engine_makers import base_models, make_lora  # noqa: E402
from lycoris_files import make_unet_lycoris  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.formats import load_lora  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.patcher import LoraCache  # noqa: E402
from lora_core.targets import Binding  # noqa: E402

SWITCHES = 1000
CACHE_SIZE = 3
RSS_BOUND_MB = 48  # growth allowed between switch 100 and switch 1000
FIGURES = os.environ.get("LORA_CORE_RELIABILITY_FIGURES")  # optional: write the measured figures here


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    out = [make_lora(d, "peft_a", seed=61), make_lora(d, "peft_b", seed=62, with_te=False, rank=2, alpha=1.0),
           make_lora(d, "kohya_c", seed=63, kohya=True, rank=8, alpha=4.0)]
    parts = {"loha": ("down_blocks",), "lokr": ("mid_block",), "locon": ("down_blocks",), "diag-oft": ("mid_block",)}
    for i, (algo, where) in enumerate(parts.items()):  # a part of the UNet each: keeps 1,000 switches quick
        out.append(make_unet_lycoris(d, algo, seed=70 + i, parts=where))
    return out


def _snap(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _equal(modules, snaps) -> bool:
    return all(torch.equal(m.state_dict()[k], s[k]) for m, s in zip(modules, snaps) for k in s)


def _entry(rng: random.Random, path):
    bw = [rng.choice([0.0, 0.5, 1.0, 1.5]) for _ in range(26)] if rng.random() < 0.2 else None
    return ApplyRequest(path, rng.choice([0.0, 0.4, 1.0, -0.6]), rng.choice([0.3, 1.0, 0.75, -1.0]), None, bw)


def _next_stack(rng: random.Random, stack: list, files) -> list:
    """What a user does between generations: reweight one LoRA (most often), add or drop one,
    reorder, or write a whole new prompt."""
    stack = list(stack)
    roll = rng.random()
    unused = [f for f in files if f not in [s.path for s in stack]]
    if roll < 0.45 and stack:
        i = rng.randrange(len(stack))
        stack[i] = _entry(rng, stack[i].path)
    elif roll < 0.65 and unused and len(stack) < 4:
        stack.insert(rng.randint(0, len(stack)), _entry(rng, rng.choice(unused)))
    elif roll < 0.8 and stack:
        stack.pop(rng.randrange(len(stack)))
    elif roll < 0.85 and len(stack) > 1:
        rng.shuffle(stack)
    else:
        stack = [_entry(rng, path) for path in rng.sample(files, rng.randint(0, 4))]
    return stack


@pytest.fixture
def one_thread():
    """The tensors here are tiny: torch's intra-op threads only add synchronisation (measured 8x
    slower with 2 threads on a busy 2-core machine). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_thousand_switches_stay_exact_and_release_memory(files, one_thread):
    unet, te = base_models()
    w0 = _snap(unet, te)
    loaded: list[weakref.ref] = []

    def tracking_loader(path):
        lora = load_lora(path)
        loaded.append(weakref.ref(lora))
        return lora

    cache = LoraCache(max_count=CACHE_SIZE, loader=tracking_loader)
    engine = Engine(Binding.from_diffusers(unet, [te]), cache=cache)
    rng = random.Random(1234)
    start, cpu_start = time.perf_counter(), time.process_time()
    rss_warm = None
    checks = 0
    slots = 0
    stack: list = []
    for step in range(1, SWITCHES + 1):
        stack = _next_stack(rng, stack, files)
        report = engine.apply(stack)
        assert not [r for r in report.loras if r.refused], report.warnings
        slots += report.slots_recomputed
        if step % 100 == 0:
            # the live weights equal a fresh engine's for this stack on a fresh model
            unet2, te2 = base_models()
            Engine(Binding.from_diffusers(unet2, [te2])).apply(stack)
            assert _equal((unet, te), _snap(unet2, te2)), f"drift at switch {step}"
            checks += 1
            del unet2, te2
            # every loaded LoraFile is either cached or in the active stack; the rest are gone
            gc.collect()
            alive = sum(1 for ref in loaded if ref() is not None)
            assert alive <= CACHE_SIZE + len(stack), (step, alive)
        if step % 250 == 0:
            stack = []
            engine.apply(stack)
            assert _equal((unet, te), w0), f"not the originals after emptying the stack at {step}"
            assert engine.patcher.backup_bytes == 0
        if step == 100:
            gc.collect()
            rss_warm = rss_bytes()
    engine.restore()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert _equal((unet, te), w0)
    assert engine.patcher.backup_bytes == 0
    gc.collect()
    rss_end = rss_bytes()
    growth_mb = (rss_end - rss_warm) / 2**20
    print(f"\n{SWITCHES} switches in {seconds:.1f} s")
    assert growth_mb < RSS_BOUND_MB, f"RSS grew {growth_mb:.1f} MB over {SWITCHES - 100} switches"
    assert cache.misses > CACHE_SIZE * 10  # the cache really evicted and re-read
    in_cache = len(cache)
    cache.clear()
    gc.collect()
    alive = sum(1 for ref in loaded if ref() is not None)
    assert alive == 0, f"{alive} LoraFiles still alive after restore + cache clear"
    figures = {"switches": SWITCHES, "files": len(files), "cache_size": CACHE_SIZE, "loads": len(loaded),
               "cache_hits": cache.hits, "cache_misses": cache.misses, "slots_recomputed": slots,
               "fresh_engine_checks": checks, "rss_after_100_mb": round(rss_warm / 2**20, 1),
               "rss_after_1000_mb": round(rss_end / 2**20, 1), "rss_growth_mb": round(growth_mb, 2),
               "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "cached_at_end": in_cache}
    print("\nlong-session figures:", json.dumps(figures))
    if FIGURES:
        with open(FIGURES, "a") as fh:
            fh.write(json.dumps({"long_session": figures}) + "\n")
    assert seconds < 120, f"{SWITCHES} switches took {seconds:.0f} s (budget: 2 minutes)"
