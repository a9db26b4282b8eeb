"""Engine benchmark: lora_core's Engine vs diffusers + PEFT, side by side in one run.

    python -m bench.engine            # full size: SD1.5 UNet + CLIP-L, fp16, rank-32 LoRAs (~5 GB RAM)
    python -m bench.engine --quick    # tiny models, seconds
    python -m bench.engine --write-docs   # also update the engine section of docs/BENCHMARKS.md

Models are built in code (random init, nothing downloaded). LoRAs are kohya files made with
diffusers' own `convert_state_dict_to_kohya` from PEFT-layout state dicts:
  L1, L3, L5: attention + feed-forward + proj_in/out + text encoder (q/k/v/out, fc1/fc2)
  L2: attention + text encoder attention          L4: feed-forward only
Scenarios (SCENARIOS: each measured once per round, in this order, on the same model for both sides):
  load+apply one (L1), switch (L1 -> L2), stack 2 (L1 0.8 + L2 0.6), stack 5, back to stack 2,
  change one weight in the stack of 2 (L2's unet weight 0.6 -> 0.3), same stack again, restore.
Fairness: every round starts with nothing loaded on either side, and both keep what they read
(lora_core's LoRA cache; diffusers keeps its adapters loaded), so both read each file once per round
(counted: column "files read"). "Same stack again" is lora_core's no-op check against diffusers'
cheapest equivalent (unfuse + set_adapters + fuse), shown without a ratio. "Held after": bytes each
side keeps beyond the model (lora_core: W0 backups + parsed files + factor copies; diffusers+PEFT:
resident adapter weights), summed from tensor sizes.
diffusers flow: `load_lora_weights(adapter_name=...)` once per file, then `set_adapters(names, weights)`
+ `fuse_lora()` after `unfuse_lora()`; restore: `unfuse_lora()` + `unload_lora_weights()`, on a host
object with the StableDiffusionLoraLoaderMixin (what StableDiffusionPipeline does, minus VAE/tokenizer).
Floors, measured in the same run over the weights L1 touches: one read+write of them (memory) and
the bare B@A products (compute, fp32 and bf16).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- engine-bench:start -->", "<!-- engine-bench:end -->"

ATTN = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
FF = ["ff.net.0.proj", "ff.net.2"]
PROJ = ["proj_in", "proj_out"]
TE_ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"]
TE_MLP = ["mlp.fc1", "mlp.fc2"]
PLAN = {  # LoRA name -> (unet module suffixes, te module suffixes)
    "L1": (ATTN + FF + PROJ, TE_ATTN + TE_MLP),
    "L2": (ATTN, TE_ATTN),
    "L3": (ATTN + FF + PROJ, TE_ATTN + TE_MLP),
    "L4": (FF, []),
    "L5": (ATTN + FF + PROJ, TE_ATTN + TE_MLP),
}


# ---------------------------------------------------------------------------- models and files
def build_models(quick: bool):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # init straight into fp16: no fp32 copy of 860M params
    try:
        if quick:
            unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                                        norm_num_groups=8, attention_head_dim=8, cross_attention_dim=64,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
            te_cfg = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=77)
        else:  # SD1.5: the diffusers default UNet config with SD1.5's context width; CLIP ViT-L/14 text
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                    projection_dim=768, hidden_act="quick_gelu")
        te = CLIPTextModel(te_cfg)
    finally:
        torch.set_default_dtype(old)
    unet.eval().requires_grad_(False)
    te.eval().requires_grad_(False)
    return unet, te


def lora_targets(unet, te, name):
    unet_suffixes, te_suffixes = PLAN[name]
    targets = []
    for prefix, model, suffixes in (("unet", unet, unet_suffixes), ("text_encoder", te, te_suffixes)):
        for mname, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and any(mname.endswith(s) for s in suffixes):
                targets.append((prefix, mname, module.weight.shape))
    return targets


def make_lora_file(directory, unet, te, name, rank, seed):
    """A kohya LoRA: PEFT-layout tensors -> diffusers' convert_state_dict_to_kohya, alpha = rank/2."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    peft = {}
    for prefix, mname, shape in lora_targets(unet, te, name):
        out_f, in_f = shape[0], shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
        # |ΔW| about 5-10 % of |W0|, like a trained LoRA at weight 1
        a = torch.randn(rank, in_f, generator=g) / in_f ** 0.5
        b = torch.randn(out_f, rank, generator=g) * (0.15 / (in_f ** 0.5))
        if len(shape) == 4:  # conv (SD1.5 proj_in/out are 1x1 convs): conv-shaped factors, as PEFT saves them
            a = a.reshape(rank, shape[1], shape[2], shape[3])
            b = b.reshape(out_f, rank, 1, 1)
        peft[f"{prefix}.{mname}.lora_A.weight"] = a.half()
        peft[f"{prefix}.{mname}.lora_B.weight"] = b.half()
    kohya = convert_state_dict_to_kohya(peft)
    for k in list(kohya):
        if k.endswith(".alpha"):
            kohya[k] = torch.tensor(float(rank) / 2)
    path = os.path.join(directory, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in kohya.items()}, path,
              metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})
    return path


# ---------------------------------------------------------------------------- helpers
class Timer:
    """Wall times of calls, bracketed by `sync()` (device synchronisation on a GPU)."""

    def __init__(self, side="", sync: Callable[[], None] | None = None):
        self.side = side
        self.sync = sync or (lambda: None)
        self.t = {}

    def run(self, label, fn):
        gc.collect()
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        self.t[label] = time.perf_counter() - t0
        print(f"  {self.side}: {label}: {fmt_s(self.t[label])}", file=sys.stderr, flush=True)
        return out

    def median(self, label, fn, calls):
        """Median of `calls` back-to-back calls (no collection in between)."""
        reps, out = [], None
        gc.collect()
        for _ in range(calls):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            reps.append(time.perf_counter() - t0)
        self.t[label] = statistics.median(reps)
        print(f"  {self.side}: {label}: {fmt_s(self.t[label])} (median of {calls})", file=sys.stderr, flush=True)
        return out


def touched_weights(engine):
    return [ref.tensor for ref in engine.patcher._slots.values()]


def _timed_both_ways(jobs):
    """Seconds for `jobs` (callables) run the two ways the machine's threads can share them: one
    after another with torch's intra-op threads, and spread over that many worker threads with one
    intra-op thread each (how lora_core writes slots); the better of the two, so a floor is a floor."""
    from lora_core.patcher.parallel_writes import run_parallel

    gc.collect()
    t0 = time.perf_counter()
    for job in jobs:
        job()
    serial = time.perf_counter() - t0
    threads = torch.get_num_threads()
    if threads < 2:
        return serial
    gc.collect()
    t0 = time.perf_counter()
    run_parallel(jobs, lambda job, _state: job(), workers=threads)
    return min(serial, time.perf_counter() - t0)


def floors(weights, factors):
    """(memory floor: one in-place read+write of `weights`, compute floors: bare B@A in fp32/bf16),
    each with the same thread count the two sides get (see _timed_both_ways)."""
    kept = []  # a copy into fresh memory, as a first apply's W0 backups are
    fresh = _timed_both_ways([lambda w=w: kept.append(w.clone()) for w in weights])
    kept.clear()  # give the copies back before the next measurement
    scratch = [torch.empty_like(w) for w in weights]
    for t in scratch:
        t.fill_(0)  # fault the pages in before timing
    with torch.no_grad():  # one read of every touched weight and one write of the same amount
        mem = _timed_both_ways([lambda t=t, w=w: t.copy_(w) for t, w in zip(scratch, weights)])
    del scratch
    comp = {}
    for dt in (torch.float32, torch.bfloat16):
        fs = [(u.to(dt), d.to(dt)) for u, d in factors]
        comp[dt] = _timed_both_ways([lambda u=u, d=d: torch.mm(u, d) for u, d in fs])
        del fs
    comp["fresh copy"] = fresh
    return mem, comp


def accuracy(binding, engine, w0_of, stack_spec, max_slots=None):
    """Max error of the merged fp16 weights against an fp32 oracle W0 + Σ m·s·B@A (unrounded),
    in units of the fp16 spacing at the oracle value (ulps)."""
    worst = 0.0
    total = 0
    ulps_hist = [0, 0, 0]  # <=0.5, <=1, >1
    for key, ref in list(engine.patcher._slots.items())[:max_slots]:
        contribs = engine.patcher._contribs[key]
        w0 = ref.view(w0_of[id(ref.tensor)]).float()
        oracle = w0.reshape(w0.shape[0], -1).clone()
        for entry, m, dyn in contribs:
            up, down, scale = entry.adapter.low_rank(dyn)
            oracle += (m * scale) * (up.float().reshape(up.shape[0], -1) @ down.float().reshape(down.shape[0], -1))
        got = ref.view(ref.tensor.detach()).float().reshape(oracle.shape)
        spacing = torch.pow(2.0, torch.floor(torch.log2(oracle.abs().clamp_min(2.0 ** -14)))) * 2.0 ** -10
        err = ((got - oracle).abs() / spacing)
        worst = max(worst, float(err.max()))
        total += err.numel()
        ulps_hist[0] += int((err <= 0.5).sum())
        ulps_hist[1] += int(((err > 0.5) & (err <= 1)).sum())
        ulps_hist[2] += int((err > 1).sum())
    return worst, [h / max(total, 1) for h in ulps_hist]


# ---------------------------------------------------------------------------- scenarios, both sides
# A stack is ((LoRA name, te weight, unet weight), ...); None means restore. Both sides run exactly
# this list, in this order, on the same model, starting each round with nothing loaded.
S2 = (("L1", 0.8, 0.8), ("L2", 0.6, 0.6))
S2_REWEIGHTED = (("L1", 0.8, 0.8), ("L2", 0.6, 0.3))  # L2's unet weight changes, its te weight does not
SCENARIOS = [
    ("load+apply one", (("L1", 1.0, 1.0),)),
    ("switch", (("L2", 1.0, 1.0),)),
    ("stack 2", S2),
    ("stack 5", tuple((n, 0.5, 0.5) for n in PLAN)),
    ("back to stack 2", S2),
    ("change one weight", S2_REWEIGHTED),
    ("same stack again", S2_REWEIGHTED),
    ("restore", None),
]
ORDER = [label for label, _stack in SCENARIOS]
SAME_AGAIN = "same stack again"
# "same stack again" is a median of this many calls in each round (its first call is no different
# from the others on either side); every other scenario is one call per round.
SAME_AGAIN_CALLS = {"lora_core": 200, "diffusers": 3}


def _bytes(tensors, exclude=()) -> int:
    """Bytes of `tensors`, each distinct (pointer, size) counted once, those in `exclude` not at all."""
    seen = set(exclude)
    total = 0
    for t in tensors:
        key = (t.device, t.data_ptr(), t.numel() * t.element_size())
        if key in seen or not key[2]:
            continue
        seen.add(key)
        total += key[2]
    return total


def _keys(tensors) -> set:
    return {(t.device, t.data_ptr(), t.numel() * t.element_size()) for t in tensors}


class OursSide:
    """lora_core: one Engine (fresh per round, so its LoRA cache starts cold like diffusers' adapters)."""

    name = "lora_core"

    def __init__(self, unet, te, files, compute_dtype=torch.float32, batched=None, w0_source=None):
        from lora_core.engine import Engine
        from lora_core.targets import Binding

        # te None: a denoiser-only binding (bench/engine_flux.py's LoRAs touch the transformer only);
        # w0_source: W0 read back from the checkpoint file instead of copies (bench/engine_flux.py)
        self.engine = Engine(Binding.from_diffusers(unet, [te]), cache_size=8, compute_dtype=compute_dtype,
                             w0_source=w0_source)
        self.engine.patcher.batched = batched
        self.files = files

    def apply(self, stack):
        from lora_core.request import ApplyRequest

        return self.engine.apply([ApplyRequest(self.files[n], te, unet) for n, te, unet in stack])

    def restore(self):
        self.engine.restore()

    def file_reads(self) -> int:
        return self.engine.cache.misses  # every miss reads and parses one file

    def memory(self) -> dict:
        """Bytes this engine holds beyond the model: W0 backups, the parsed files in its cache
        (memory-mapped, file-backed pages) and the factor copies of the active stack's plans."""
        patcher, cache = self.engine.patcher, self.engine.cache
        backups = list(patcher._backups.values())
        files = [t for _stamp, lora in list(cache._entries.values())
                 for a in lora.adapters.values() for t in a.tensors.values()]
        files += [t for p in patcher._plans.values() for a in p.lora.adapters.values() for t in a.tensors.values()]
        factors = [t for p in patcher._plans.values() for e in p.entries
                   for t in ((e.low_rank[0], e.low_rank[1]) if e.low_rank else ()) + (
                       (e.bias_delta,) if e.bias_delta is not None else ())]
        w0 = _bytes(backups)
        parsed = _bytes(files, exclude=_keys(backups))
        copies = _bytes(factors, exclude=_keys(backups) | _keys(files))
        return {"total": w0 + parsed + copies, "W0 backups": w0, "parsed files": parsed, "factor copies": copies}


class DiffusersSide:
    """diffusers + PEFT the way its docs combine LoRAs: `load_lora_weights(adapter_name=...)` once per
    file, then `set_adapters` + `fuse_lora` for each stack (after `unfuse_lora`). Adapters stay loaded
    between stacks (the counterpart of lora_core's cache of parsed files): neither side reads a file
    twice in a round. `restore` is `unfuse_lora` + `unload_lora_weights`."""

    name = "diffusers"

    def __init__(self, unet, te, files):
        self.pipe = self.make_host(unet, te)
        self.files = files
        self.loaded: list[str] = []
        self.fused = False
        self._models = tuple(m for m in (unet, te) if m is not None)
        self._base = _keys(self._tensors())  # the model's own tensors, before any adapter

    def apply(self, stack):
        pipe = self.pipe
        if self.fused:
            pipe.unfuse_lora()
            self.fused = False
        names = [n for n, _te, _unet in stack]
        for n in names:
            if n not in self.loaded:
                pipe.load_lora_weights(self.files[n], adapter_name=n)
                self.loaded.append(n)
        pipe.set_adapters(names, [self.adapter_weight(te, unet) for _n, te, unet in stack])
        pipe.fuse_lora(adapter_names=names)
        self.fused = True

    @staticmethod
    def make_host(unet, te):
        return diffusers_host(unet, te)

    @staticmethod
    def adapter_weight(te, unet):
        """set_adapters' weight for one LoRA: per component when the two differ."""
        return unet if te == unet else {"unet": unet, "text_encoder": te}

    def restore(self):
        if self.fused:
            self.pipe.unfuse_lora()
            self.fused = False
        self.pipe.unload_lora_weights()
        self.loaded.clear()

    def file_reads(self) -> int:
        return self.pipe.file_reads

    def _tensors(self):
        for model in self._models:
            yield from model.parameters()
            yield from model.buffers()
            for module in model.modules():  # PEFT's ad hoc per-layer caches (DoRA norms), if any
                for value in (getattr(module, "_caches", None) or {}).values():
                    if isinstance(value, torch.Tensor):
                        yield value

    def memory(self) -> dict:
        """Bytes held beyond the model's own tensors: the resident adapters' lora_A/lora_B (and
        anything else PEFT keeps on the layers; fuse adds W0 + ΔW in place and keeps no copy)."""
        adapters = _bytes(self._tensors(), exclude=self._base)
        return {"total": adapters, "adapters": adapters}


def run_round(side, timer, hook=None) -> dict:
    """SCENARIOS on `side`, each timed by `timer`; returns {"times", "reads", "memory"} by scenario.
    `hook(label, result)` runs after each scenario, outside the timing."""
    times, reads, memory = {}, {}, {}
    for label, stack in SCENARIOS:
        fn = side.restore if stack is None else (lambda s=stack: side.apply(s))
        before = side.file_reads()
        if label == SAME_AGAIN:
            result = timer.median(label, fn, SAME_AGAIN_CALLS[side.name])
        else:
            result = timer.run(label, fn)
        reads[label] = side.file_reads() - before
        times[label] = timer.t[label]
        memory[label] = side.memory()
        if hook:
            hook(label, result)
    return {"times": times, "reads": reads, "memory": memory}


def run_ours(unet, te, files, compute_dtype):
    """One round of lora_core, plus what the report needs from it (floors' inputs, accuracy, ...)."""
    side = OursSide(unet, te, files, compute_dtype)
    engine = side.engine
    T = Timer(f"lora_core {str(compute_dtype).replace('torch.', '')}")
    info, grab = {}, {}

    def hook(label, result):
        if label == "load+apply one":
            grab["w0_of"] = {id(ref.tensor): engine.patcher._backups[ref.group]
                             for ref in engine.patcher._slots.values()}
            grab["touched"] = list({id(t): t for t in touched_weights(engine)}.values())
            grab["factors"] = [e.low_rank[:2] for p in engine.patcher._plans.values()
                               for e in p.entries if e.low_rank]
            info.update(write_threads=result.write_threads, first_patch_s=result.seconds)
        elif label == "change one weight":
            info.update(reweight_slots=result.slots_recomputed, stack2_slots=len(engine.patcher._slots))
        elif label == SAME_AGAIN:
            grab["acc"] = accuracy(None, engine, grab["w0_of"], None)

    rnd = run_round(side, T, hook)
    info["first_total_s"] = rnd["times"]["load+apply one"]
    # L2's share: the same reweight costs, relative to L2 applied alone (warm cache) and restored
    l2 = Timer("lora_core")
    l2.run("L2 alone", lambda: side.apply((("L2", 0.6, 0.3),)))
    side.restore()
    info["L2 alone"] = l2.t["L2 alone"]
    return rnd, grab["touched"], grab["factors"], grab["acc"], info


def run_ours_bf16(unet, te, files):
    """bf16 products: how long the stack of 2 takes (warm files) and what accuracy it keeps."""
    side = OursSide(unet, te, files, torch.bfloat16)
    engine = side.engine
    for n in ("L1", "L2"):
        engine.cache.get(files[n])  # parse outside the timing: this measures the math only
    T = Timer("lora_core bf16")
    T.run("stack 2", lambda: side.apply(S2_REWEIGHTED))
    w0_of = {id(ref.tensor): engine.patcher._backups[ref.group] for ref in engine.patcher._slots.values()}
    acc = accuracy(None, engine, w0_of, None)
    side.restore()
    return {"stack 2": T.t["stack 2"], "accuracy": acc}


def quiet_diffusers_logs():
    import logging
    import warnings

    # PEFT's notes on the flow itself (a second adapter in the model; unfuse of a layer that one of
    # the adapters does not touch), once per layer: expected here, and they drown the progress lines
    warnings.filterwarnings("ignore", message="Already unmerged", category=UserWarning)
    warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)

    for name in ("diffusers", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass


def diffusers_host(unet, te):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    class Host(StableDiffusionLoraLoaderMixin):
        """What StableDiffusionPipeline brings to LoRA loading, without VAE/tokenizer/scheduler."""

        hf_device_map = None

        def __init__(self):
            self.unet, self.text_encoder = unet, te
            self.file_reads = 0

        @property
        def components(self):
            return {"unet": self.unet, "text_encoder": self.text_encoder}

        def load_lora_weights(self, *args, **kwargs):
            self.file_reads += 1  # each call reads its file (a path, never a state dict, here)
            return super().load_lora_weights(*args, **kwargs)

    return Host()


def run_diffusers(unet, te, files):
    quiet_diffusers_logs()
    return run_round(DiffusersSide(unet, te, files), Timer("diffusers"))


# ---------------------------------------------------------------------------- report
def fmt_s(x):
    return f"{x * 1000:.2f} ms" if x < 0.1 else f"{x:.2f} s"


def fmt_b(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10e6 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def fmt_reads(ours_reads, their_reads, k):
    return f"{ours_reads[k]} / {their_reads[k]}" if their_reads else f"{ours_reads[k]} / -"


def memory_note(ours_mem, their_mem, k="stack 5"):
    m = ours_mem[k]
    text = (f"after {k}, lora_core holds {fmt_b(m['total'])}: W0 backups {fmt_b(m['W0 backups'])}, parsed files "
            f"{fmt_b(m['parsed files'])}, factor copies {fmt_b(m['factor copies'])}")
    if their_mem:
        text += f"; diffusers+PEFT {fmt_b(their_mem[k]['total'])} of resident adapters"
    return text


FAIRNESS = (
    "Same work on both sides: each round starts with nothing loaded (a new Engine; diffusers after "
    "unload_lora_weights) and both keep what they read, as a host does between two generations: "
    "lora_core's cache keeps parsed files, diffusers keeps every loaded adapter (switch does not delete L1). "
    "So stack 2 and back to stack 2 read no file on either side (column files read). "
    "Same stack again is not a ratio: lora_core's apply() of the stack already applied checks the files' "
    "size/mtime, finds the stack unchanged and does no tensor work; diffusers has no such check, and its "
    "cheapest way to make sure the model carries that stack is unfuse + set_adapters + fuse (shown); a host that "
    "tracks its own stack can skip the call with either. "
    "Held after: bytes each side keeps beyond the model's weights once the scenario is done, summed from "
    "tensor sizes (not RSS): lora_core = W0 backups of the touched tensors (what makes restore bit for bit and "
    "reweighting drift-free) + the parsed files in its cache (memory-mapped, file-backed pages) + the "
    "factor copies of the active stack; diffusers+PEFT = lora_A/lora_B of every loaded adapter (fuse writes "
    "W0 + ΔW in place and keeps no copy; unfuse subtracts ΔW again, hence its restore is not bit for bit)."
)


def report(meta, ours, ours_bf16, theirs, floor_mem, floor_comp, acc32, acc16, info, diffusers_exact):
    """`ours`/`theirs`: {"times": best of the rounds, "reads", "memory"} by scenario (theirs may be None)."""
    ot, tt = ours["times"], theirs["times"] if theirs else None
    lines = []
    lines.append(f"Command: `{meta['command']}`  ")
    lines.append(f"Date: {meta['date']}; {meta['machine']}; torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads; {meta['size']}  ")
    how = (f"{info['write_threads']} worker threads with one intra-op thread each" if info["write_threads"] > 1
           else "the calling thread")
    lines.append(f"Threads: torch's intra-op setting is {torch.get_num_threads()} for both sides and the floors; "
                 f"lora_core wrote the slots of load+apply one on {how}, diffusers+PEFT ran its ops on the "
                 f"{torch.get_num_threads()} intra-op thread(s); each floor is the better of those two ways.  ")
    lines.append(f"Load+apply one (lora_core, round {meta['repeat']}): reading and parsing the file "
                 f"{fmt_s(info['first_total_s'] - info['first_patch_s'])}, mapping and writing the slots "
                 f"{fmt_s(info['first_patch_s'])}. Its W0 backups are a copy into fresh memory: the same copy "
                 f"of the touched weights takes {fmt_s(floor_comp['fresh copy'])} into new allocations "
                 f"(page faults) vs {fmt_s(floor_mem)} into memory already mapped.  ")
    lines.append(f"Touched by L1: {meta['touched_tensors']} tensors, {meta['touched_mb']:.0f} MB fp16. "
                 f"Floors: memory (one read+write) {fmt_s(floor_mem)}; compute (bare B@A) "
                 f"fp32 {fmt_s(floor_comp[torch.float32])}, bf16 {fmt_s(floor_comp[torch.bfloat16])}.")
    lines.append("")
    lines.append("| scenario | lora_core | ×mem floor | ×fp32 B@A floor | diffusers+PEFT | ×mem floor | "
                 "×fp32 B@A floor | diffusers / lora_core | files read (lora_core / diffusers) | "
                 "held after: lora_core (W0 backups) | held after: diffusers+PEFT |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fc = floor_comp[torch.float32]
    for k in ORDER:
        o = ot[k]
        d = tt.get(k) if tt else None
        if d is None:
            theirs_cells = "- | - | - | -"
        elif k == SAME_AGAIN:  # different operations on the two sides: no ratio
            theirs_cells = f"{fmt_s(d)} (re-fuse) | {d / floor_mem:.2f} | {d / fc:.2f} | no ratio"
        else:
            theirs_cells = f"{fmt_s(d)} | {d / floor_mem:.2f} | {d / fc:.2f} | {d / o:.1f}×"
        om = ours["memory"][k]
        held = (f"{fmt_b(om['total'])} ({fmt_b(om['W0 backups'])}) | "
                + (fmt_b(theirs["memory"][k]["total"]) if theirs else "-"))
        lines.append(f"| {k} | {fmt_s(o)} | {o / floor_mem:.2f} | {o / fc:.2f} | {theirs_cells} | "
                     f"{fmt_reads(ours['reads'], theirs and theirs['reads'], k)} | {held} |")
    lines.append("")
    lines.append(FAIRNESS + "  ")
    lines.append(f"Memory: {memory_note(ours['memory'], theirs and theirs['memory'])}.  ")
    lines.append(f"Change one weight (L2's unet weight 0.6 -> 0.3 in a stack of L1+L2, te weights unchanged; "
                 f"diffusers gets the same per-component weights): {info['reweight_slots']} of "
                 f"{info['stack2_slots']} slots recomputed; L2 applied alone takes {fmt_s(info['L2 alone'])}, "
                 f"the reweight {fmt_s(ot['change one weight'])}.  ")
    lines.append(f"Both sides: best of {meta['repeat']} interleaved rounds (the first round pays first-touch page "
                 f"faults and imports); same stack again is the median of "
                 f"{SAME_AGAIN_CALLS['lora_core']} calls (lora_core) and {SAME_AGAIN_CALLS['diffusers']} calls "
                 f"(diffusers) in each round.  ")
    lines.append(f"Accuracy of the merged fp16 weights (stack L1 0.8 + L2 0.3) against an fp32 oracle "
                 f"W0 + Σ m·s·B@A, in fp16 ulps at the oracle value: fp32 compute max {acc32[0]:.2f} ulp "
                 f"({acc32[1][0] * 100:.2f} % ≤ 0.5 ulp, {acc32[1][2] * 100:.4f} % > 1 ulp); bf16 compute max "
                 f"{acc16[0]:.2f} ulp ({acc16[1][0] * 100:.2f} % ≤ 0.5, {acc16[1][2] * 100:.4f} % > 1 ulp), for a stack-2 "
                 f"apply of {fmt_s(ours_bf16['stack 2'])} (files already parsed). fp32 is the default: bf16 products "
                 f"lose up to hundreds of ulps where W0+ΔW is near zero.  ")
    lines.append(f"Restore: lora_core bit for bit (checked each round); diffusers unfuse+unload: {diffusers_exact} "
                 f"(the next round starts from those weights).  ")
    if tt:
        verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        a = tt["load+apply one"] / ot["load+apply one"]
        sw = tt["switch"] / ot["switch"]
        share = ot["stack 2"] * info["reweight_slots"] / info["stack2_slots"]
        lines.append(
            f"Goals: load+apply ≥3× faster than diffusers: {a:.1f}× ({verdict(a >= 3)}); switch ≥3×: {sw:.1f}× "
            f"({verdict(sw >= 3)}); same stack again < 1 ms: {fmt_s(ot[SAME_AGAIN])} "
            f"({verdict(ot[SAME_AGAIN] < 1e-3)}); change one weight ≤ that LoRA's share of the stack "
            f"(stack 2 × its {info['reweight_slots']}/{info['stack2_slots']} slots = {fmt_s(share)}): "
            f"{fmt_s(ot['change one weight'])} ({verdict(ot['change one weight'] <= share)}).")
    return "\n".join(lines)


HEADING = "## Engine: apply / switch / stack (lora_core vs diffusers+PEFT)"


def write_doc(section: str, start: str = START, end: str = END, heading: str = HEADING):
    """Replace this benchmark's section of docs/BENCHMARKS.md (other sections are left alone);
    bench/engine_flux.py writes its own section with its own markers."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{start}\n{heading}\n\n{section}\n{end}"
    # the section runs from its start marker (or, if another writer dropped it, its heading) to its end marker
    pattern = "(?:" + re.escape(start) + "\n)?" + re.escape(heading) + ".*?" + re.escape(end)
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _m: block, text, count=1, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models (seconds), for a smoke test")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default 32; 4 with --quick)")
    ap.add_argument("--no-diffusers", action="store_true", help="measure lora_core only")
    ap.add_argument("--repeat", type=int, default=2, help="rounds per side, interleaved (best of N is reported)")
    ap.add_argument("--write-docs", action="store_true", help="update the engine section of docs/BENCHMARKS.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for both sides (default: torch's, one per core)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank = args.rank or (4 if args.quick else 32)

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    unet, te = build_models(args.quick)
    print(f"models built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    snapshot = fingerprints(unet, te)  # hashes, not copies: a second 2 GB model would not fit the budget
    with tempfile.TemporaryDirectory() as d:
        files = {n: make_lora_file(d, unet, te, n, rank, seed=i + 1) for i, n in enumerate(PLAN)}
        print("LoRA files written", file=sys.stderr)

        runs, their_runs, exact = [], [], "not measured"
        # best of N per scenario on both sides (the machine is shared), rounds interleaved so that
        # neither side alone gets the warm page cache or a quiet moment
        for _ in range(args.repeat):
            runs.append(run_ours(unet, te, files, torch.float32))
            assert_same(unet, te, snapshot, "lora_core restore")
            if not args.no_diffusers:
                their_runs.append(run_diffusers(unet, te, files))
                round_exact = diff_count(unet, te, snapshot)
                exact = round_exact if exact in ("not measured", "bit for bit") else exact
                if round_exact != "bit for bit":  # our next restore is checked against these weights
                    snapshot = fingerprints(unet, te)
        ours = summarize([r[0] for r in runs])
        theirs = summarize(their_runs) if their_runs else None
        _r, touched, factors, acc32, info = runs[0]
        last = runs[-1][4]  # round 1 also pays one-time imports: describe load+apply one by the last round
        info.update({k: last[k] for k in ("write_threads", "first_patch_s", "first_total_s")})
        ours16 = run_ours_bf16(unet, te, files)
        assert_same(unet, te, snapshot, "lora_core restore (bf16)")
        acc16 = ours16["accuracy"]
        floor_list = [floors(touched, factors) for _ in range(max(3, args.repeat))]
        floor_mem = min(f[0] for f in floor_list)
        floor_comp = {dt: min(f[1][dt] for f in floor_list) for dt in (torch.float32, torch.bfloat16, "fresh copy")}
    meta = {
        "command": "python -m bench.engine" + (" --quick" if args.quick else "")
                   + (f" --repeat {args.repeat}" if args.repeat != 1 else "")
                   + (f" --threads {args.threads}" if args.threads else "") + (" --write-docs" if args.write_docs else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load average {load_start:.1f} at the start, "
                   f"{os.getloadavg()[0]:.1f} at the end",
        "size": ("tiny UNet + CLIP (--quick)" if args.quick else "SD1.5 UNet + CLIP-L, fp16, random init")
                + f", rank {rank}",
        "repeat": args.repeat,
        "touched_tensors": len(touched),
        "touched_mb": sum(t.numel() * t.element_size() for t in touched) / 1e6,
    }
    section = report(meta, ours, ours16, theirs, floor_mem, floor_comp, acc32, acc16, info, exact)
    print(section)
    if args.write_docs:
        write_doc(section)
        print(f"\nwrote {DOC}", file=sys.stderr)
    return 0


def best(runs):
    return {k: min(r[k] for r in runs) for k in runs[0]}


def summarize(rounds):
    """Rounds of run_round -> best time per scenario; file reads and memory of the last round (both
    are the same in every round: each starts from nothing loaded)."""
    return {"times": best([r["times"] for r in rounds]), "reads": rounds[-1]["reads"],
            "memory": rounds[-1]["memory"]}


def assert_same(unet, te, snapshot, what):
    bad = diff_count(unet, te, snapshot)
    if bad != "bit for bit":
        raise SystemExit(f"{what} is not bit-exact: {bad}")


def fingerprints(unet, te):
    """sha256 of every tensor's bytes: bit-exact comparison without holding a copy of the model."""
    import hashlib

    out = {}
    for prefix, model in (("", unet), ("te.", te)):
        for k, v in model.state_dict().items():
            data = v.detach().contiguous().view(torch.uint8).cpu().numpy()
            out[prefix + k] = hashlib.sha256(data).hexdigest()
    return out


def diff_count(unet, te, snapshot):
    current = fingerprints(unet, te)
    missing = [k for k in snapshot if k not in current]
    differ = [k for k in snapshot if k in current and current[k] != snapshot[k]]
    if not missing and not differ:
        return "bit for bit"
    return f"{len(differ)} tensors differ from the original" + (f", {len(missing)} missing" if missing else "")


if __name__ == "__main__":
    sys.exit(main())
