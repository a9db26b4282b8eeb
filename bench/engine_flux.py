"""Engine benchmark on a Flux.1-structured transformer: lora_core vs diffusers+PEFT, side by side.

    python -m bench.engine_flux                  # CPU: 19 double + 38 single blocks, width 3072/8, bf16
    python -m bench.engine_flux --device cuda    # GPU: full size (12B transformer, bf16, 24 GB)
    python -m bench.engine_flux --quick          # tiny (2 + 2 blocks, width 32): seconds
    python -m bench.engine_flux --write-docs     # also update this bench's section of docs/BENCHMARKS.md

Model and LoRA files: bench/flux_fixtures.py (kohya files with fused qkv/linear1 and PEFT-layout
files, rank 16, attention + MLP + modulation). The scenarios and the two sides' flows are those of
bench.engine (SCENARIOS, OursSide, DiffusersSide, run_round), so its fairness rules hold: every
round starts with nothing loaded on either side, both keep what they read (column "files read"),
"same stack again" has no ratio, "held after" sums the tensors each side keeps beyond the model.
diffusers' side is FluxLoraLoaderMixin (what FluxPipeline uses): load_lora_weights (which converts
kohya files on load) + set_adapters + fuse_lora, after unfuse_lora; restore unfuse_lora +
unload_lora_weights.
A third column runs lora_core with W0 read back from the checkpoint file (patcher/checkpoint_w0.py):
the model is saved to a safetensors file first, as a host loads it; that side holds no W0 copies.
Timing: `--warmup` untimed load+apply one + restore of every side (the one-time costs: CUDA context,
cuBLAS, kernel caches, imports), then `--repeat` rounds interleaved side by side,
best of N per scenario, each call bracketed by device synchronisation. After each round the weights
are checked against the checkpoint (lora_core: bit for bit, or the run stops; diffusers' unfuse is
not exact, so its round ends by reloading the weights from the checkpoint, outside the timing, so
that every side starts from the same W0). Floors, same run, over the weights L1 touches: one
read+write of them (memory) and the bare B@A products (compute, fp32 and bf16).
Merge check (untimed): both sides apply the stack L1 0.8 + L2 0.3; lora_core's merged weights must
be within 1 ulp of diffusers+PEFT's merge computed exactly (fp32, from the adapters diffusers
loaded and fused), and it must change no weight diffusers leaves alone, or the run ends with status 1.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import tempfile
import time

import torch

from bench import flux_fixtures as fx
from bench.engine import (FAIRNESS, ORDER, PLAN, S2_REWEIGHTED, SAME_AGAIN, SAME_AGAIN_CALLS, SCENARIOS, DiffusersSide,
                          OursSide, Timer, floors, fmt_b, fmt_reads, fmt_s, quiet_diffusers_logs, run_round,
                          summarize, write_doc)

HEADINGS = {"cpu": "### Flux.1-structured transformer, on the CPU (issue 16)",
            "cuda": "### Flux.1-structured transformer, full size on a GPU (issue 16)"}
MARKERS = {d: (f"<!-- engine-flux-{d}:start -->", f"<!-- engine-flux-{d}:end -->") for d in HEADINGS}
OURS, FROM_FILE, THEIRS = "lora_core", "lora_core, W0 from checkpoint", "diffusers"
MAX_ULPS = 1.0  # lora_core vs the exact merge: one rounding of an fp32 sum (0.5 ulp, plus fp32 noise)


class FluxDiffusersSide(DiffusersSide):
    """bench.engine's diffusers flow on FluxLoraLoaderMixin; one weight per LoRA (no text encoder)."""

    make_host = staticmethod(lambda unet, te: fx.flux_host(unet))
    adapter_weight = staticmethod(lambda te, unet: unet)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- weights vs the checkpoint
def save_checkpoint(model, path: str) -> None:
    from safetensors.torch import save_file

    save_file({n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()}, path)


def _plain(name: str) -> str:
    return name.replace(".base_layer.", ".")  # PEFT's wrapper level, while diffusers' adapters are loaded


def checksums(model) -> dict:
    """Two position-weighted sums of every tensor's bit patterns, computed where the tensor lives: a
    bit-for-bit comparison without a second copy of a 24 GB model or hashing it on the host."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        view = {1: torch.int8, 2: torch.int16, 4: torch.int32}[p.element_size()]
        bits = p.detach().reshape(-1).view(view).to(torch.int64)
        weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 65521 + 1
        out[_plain(name)] = torch.stack([bits.sum(), (bits * weights).sum()])
    return out


def differing(model, sums: dict) -> list[str]:
    now = checksums(model)
    return [k for k in sums if k not in now or not torch.equal(now[k], sums[k])]


def reload_from(model, ckpt: str, names) -> None:
    """Copy the checkpoint's tensors `names` back into the model (after diffusers' inexact unfuse)."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    with safe_open(ckpt, framework="pt", device="cpu") as f, torch.no_grad():
        for name in names:
            params[name].copy_(f.get_tensor(name))


# ---------------------------------------------------------------------------- rounds
def run_rounds(model, files, ckpt, device, repeat, warmup, with_diffusers):
    """Interleaved rounds of every side; returns ({side: [round, ...]}, L1's touched weights, L1's
    factors, {side: state after restore})."""
    from lora_core.patcher.checkpoint_w0 import CheckpointW0

    sources = []  # the open checkpoint of the side in this round, closed after it

    def from_file():
        sources.append(CheckpointW0(ckpt))
        return OursSide(model, None, files, w0_source=sources[-1])

    sides = {OURS: lambda: OursSide(model, None, files), FROM_FILE: from_file}
    if with_diffusers:
        quiet_diffusers_logs()
        sides[THEIRS] = lambda: FluxDiffusersSide(model, None, files)
    sums = checksums(model)
    rounds = {name: [] for name in sides}
    state = {name: "not measured" for name in sides}
    grab: dict = {}
    for r in range(warmup + repeat):
        for name, make in sides.items():
            side = make()

            def hook(label, result, side=side):
                if not isinstance(side, OursSide) or label == SAME_AGAIN or result is None:
                    return
                if label == "load+apply one":
                    check_applied(result)
                    if "touched" not in grab:
                        patcher = side.engine.patcher
                        grab["touched"] = list({id(ref.tensor): ref.tensor for ref in patcher._slots.values()}.values())
                        grab["factors"] = [e.low_rank[:2] for p in patcher._plans.values()
                                           for e in p.entries if e.low_rank]

            if r >= warmup:
                rounds[name].append(run_round(side, Timer(name, lambda: _sync(device)), hook))
            else:  # the first apply pays the one-time costs (CUDA context, cuBLAS, kernel caches,
                # imports, PEFT's injection paths); a whole round more would cost minutes at full size
                timer = Timer(f"{name} (warm-up)", lambda: _sync(device))
                hook(ORDER[0], timer.run(ORDER[0], lambda s=side: s.apply(SCENARIOS[0][1])))
                timer.run("restore", side.restore)
            bad = differing(model, sums)
            if isinstance(side, OursSide):
                if bad:
                    raise SystemExit(f"{name} restore is not bit-exact: {len(bad)} tensors differ, e.g. {bad[0]}")
                state[name] = "bit for bit"
            else:
                if state[name] in ("not measured", "bit for bit"):
                    state[name] = f"{len(bad)} tensors differ from W0" if bad else "bit for bit"
                reload_from(model, ckpt, bad)  # every side starts from the checkpoint's W0
                if differing(model, sums):
                    raise SystemExit("reloading W0 from the checkpoint did not restore the model")
            for s in sources:
                s.close()
            sources.clear()
            del side
            gc.collect()
    return rounds, grab["touched"], grab["factors"], state


def check_applied(report) -> None:
    """The Engine leaves a refused LoRA out and says so in its report: a bench of nothing is no bench."""
    refused = [f"{r.name}: {r.refused}" for r in report.loras if r.refused] + list(report.warnings)
    if refused or not report.slots_recomputed or any(r.unmatched for r in report.loras):
        raise SystemExit(f"lora_core did not apply the whole LoRA: {refused or report.loras}")


def device_floors(weights, factors, device):
    """(memory floor, {fp32, bf16: compute floor}). The CPU takes bench.engine's floors (serial or
    spread over worker threads, the better); a GPU one device copy / one stream of products."""
    if device.type == "cpu":
        mem, comp = floors(weights, factors)
        return mem, {dt: comp[dt] for dt in (torch.float32, torch.bfloat16)}
    from bench.engine_gpu import memory_floor, timed

    mem = memory_floor(weights, device)
    comp = {}
    for dt in (torch.float32, torch.bfloat16):
        fs = [(u.to(device, dt), d.to(device, dt)) for u, d in factors]
        comp[dt] = timed(device, lambda fs=fs: [torch.mm(u, d) for u, d in fs], repeat=5)
        del fs
    return mem, comp


def _ulps(x: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """|x - ref| in units of `dtype`'s spacing at magnitude `scale` (elementwise)."""
    finfo = torch.finfo(dtype)
    spacing = torch.pow(2.0, torch.floor(torch.log2(scale.clamp_min(finfo.smallest_normal)))) * finfo.eps
    return (x - ref).abs() / spacing


def merge_check(model, files, ckpt, sums) -> dict:
    """Both sides apply S2_REWEIGHTED. The oracle is diffusers+PEFT's own merge done exactly: W0 (from
    the checkpoint) + Σ scaling·B@A in fp32 over the adapters PEFT fused into each layer, from the
    factors diffusers loaded (its conversion of the kohya file, its scales), so it owes nothing to
    lora_core's reading of the files. lora_core rounds once from fp32 (≤ 0.5 ulp expected, limit
    MAX_ULPS); diffusers' error is its own roundings (a bf16 add per adapter), shown, not limited.
    lora_core's merged weights wait in host memory, so the device holds one model at a time."""
    from safetensors import safe_open

    ours = OursSide(model, None, files)
    ours.apply(S2_REWEIGHTED)
    touched = {id(ref.tensor) for ref in ours.engine.patcher._slots.values()}
    mine = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if id(p) in touched}
    ours.restore()
    theirs = FluxDiffusersSide(model, None, files)
    theirs.apply(S2_REWEIGHTED)
    out = {"ours_ulps": 0.0, "theirs_ulps": 0.0, "between_ulps": 0.0, "tensors": 0, "only_ours": 0}
    with safe_open(ckpt, framework="pt", device="cpu") as f, torch.no_grad():
        for path, module in model.named_modules():
            fused = [a for a in getattr(module, "merged_adapters", ()) if a in getattr(module, "lora_A", {})]
            if not fused:
                continue
            name = f"{path}.weight"
            live = module.base_layer.weight.detach()
            w0 = f.get_tensor(name).to(live.device).float()
            exact, terms = w0.clone(), w0.abs()  # terms: the largest |term| of the sum, elementwise
            for a in fused:
                delta = module.scaling[a] * (module.lora_B[a].weight.float() @ module.lora_A[a].weight.float())
                exact += delta
                terms = torch.maximum(terms, delta.abs())
            got = mine.pop(name, None)
            got = got.to(live.device).float() if got is not None else w0
            other = live.float()
            # lora_core rounds once, at the value; where W0 + ΔW nearly cancels, the fp32 oracle's own
            # noise (a few fp32 ulps of the terms) sets the scale instead: 2^-10 of the largest term
            at_value = torch.maximum(torch.maximum(exact.abs(), got.abs()), terms * 2.0 ** -10)
            out["ours_ulps"] = max(out["ours_ulps"], float(_ulps(got, exact, at_value, live.dtype).max()))
            # PEFT rounds each adapter's ΔW to bf16 and adds it in bf16: its error scales with the terms
            at_terms = torch.maximum(at_value, terms)
            for key, x, y in (("theirs_ulps", other, exact), ("between_ulps", got, other)):
                out[key] = max(out[key], float(_ulps(x, y, at_terms, live.dtype).max()))
            out["tensors"] += 1
    out["only_ours"] = len(mine)  # weights lora_core changed that diffusers left alone: a mismatch
    theirs.restore()
    reload_from(model, ckpt, differing(model, sums))
    return out


def check_passed(check) -> bool:
    return check["ours_ulps"] <= MAX_ULPS and check["only_ours"] == 0 and check["tensors"] > 0


# ---------------------------------------------------------------------------- report
def table(times, floor_mem, floor_fp32) -> list[str]:
    ours, file, other = times[OURS], times[FROM_FILE], times.get(THEIRS)
    lines = ["| scenario | lora_core | ×mem floor | ×fp32 B@A floor | lora_core, W0 from checkpoint | ×mem floor "
             "| diffusers+PEFT | ×mem floor | diffusers / lora_core | files read (lora_core / diffusers) "
             "| held after: lora_core (W0 backups) | held after: W0 from checkpoint (W0 backups) "
             "| held after: diffusers+PEFT |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ORDER:
        o, c = ours["times"][k], file["times"][k]
        d = other["times"][k] if other else None
        if d is None:
            theirs = "- | - | -"
        elif k == SAME_AGAIN:  # lora_core's no-op check vs diffusers' re-fuse: no ratio
            theirs = f"{fmt_s(d)} (re-fuse) | {d / floor_mem:.2f} | no ratio"
        else:
            theirs = f"{fmt_s(d)} | {d / floor_mem:.2f} | {d / o:.1f}×"
        om, cm = ours["memory"][k], file["memory"][k]
        held = (f"{fmt_b(om['total'])} ({fmt_b(om['W0 backups'])}) | "
                f"{fmt_b(cm['total'])} ({fmt_b(cm['W0 backups'])}) | "
                + (fmt_b(other["memory"][k]["total"]) if other else "-"))
        lines.append(f"| {k} | {fmt_s(o)} | {o / floor_mem:.2f} | {o / floor_fp32:.2f} | {fmt_s(c)} | "
                     f"{c / floor_mem:.2f} | {theirs} | {fmt_reads(ours['reads'], other and other['reads'], k)} | "
                     f"{held} |")
    return lines


def report(meta, times, state, floor_mem, floor_comp, check) -> str:
    lines = [f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; {meta['machine']}; torch {torch.__version__}, {torch.get_num_threads()} "
             f"threads  ",
             f"Model: {meta['model']}  ",
             f"LoRAs (rank {meta['rank']}, bf16): L1, L5 kohya (fused qkv / linear1) on attention + MLP + "
             f"modulation of every block; L2 PEFT layout (to_q/to_k/to_v, diffusers' save format), the same "
             f"modules; L3 kohya, double blocks only; L4 PEFT, attention only.  ",
             f"Touched by L1: {meta['touched_tensors']} tensors, {meta['touched_mb']:.0f} MB. Floors: memory (one "
             f"read+write of them) {fmt_s(floor_mem)}; compute (bare B@A) fp32 {fmt_s(floor_comp[torch.float32])}, "
             f"bf16 {fmt_s(floor_comp[torch.bfloat16])}.", ""]
    lines += table(times, floor_mem, floor_comp[torch.float32])
    lines.append("")
    lines.append(FAIRNESS + "  ")
    lines.append(f"W0 from checkpoint: the same Engine with `w0_source` (the model was saved to a safetensors file "
                 f"and W0 is read back from it, memory-mapped, at each write and at restore): it holds no W0 "
                 f"copies; what that costs shows in its time column (restore included).  ")
    lines.append(f"Every side: {meta['warmup']} untimed warm-up(s) (load+apply one + restore), then best of "
                 f"{meta['repeat']} interleaved "
                 f"rounds, each starting with nothing loaded and from the checkpoint's W0; same stack again is the "
                 f"median of {SAME_AGAIN_CALLS['lora_core']} calls (lora_core) / {SAME_AGAIN_CALLS['diffusers']} "
                 f"(diffusers).  ")
    if meta["narrow"]:
        lines.append("At this width diffusers' kohya converter (fixed 3072/12288 split of linear1) is given the "
                     "linear1 rows at its fixed offsets and its parts are cut back (bench/flux_fixtures.py, "
                     "kohya_linear1_at_width): a few zero-filled tensors per kohya file on its side.  ")
    restore = "; ".join(f"{k}: {v}" for k, v in state.items())
    lines.append(f"Restore: {restore} (diffusers' unfuse + unload; its next round starts from W0 reloaded).  ")
    if check:
        lines.append(f"Merge check (stack L1 0.8 + L2 0.3, {check['tensors']} tensors; oracle: diffusers+PEFT's own "
                     f"merge in fp32, W0 + Σ scaling·B@A from the adapters it loaded and fused): lora_core within "
                     f"{check['ours_ulps']:.2f} ulp of bf16 at the value (limit {MAX_ULPS:g}; where W0 + ΔW nearly "
                     f"cancels, at 2^-10 of the largest term, the fp32 oracle's own noise); diffusers+PEFT within "
                     f"{check['theirs_ulps']:.2f} ulp and the two sides within {check['between_ulps']:.2f} ulp of "
                     f"each other, at the largest of the value, W0 and each ΔW (PEFT rounds each adapter's ΔW to "
                     f"bf16 and adds it in bf16); weights only lora_core changed: "
                     f"{check['only_ours']}{'' if check_passed(check) else '. CHECK FAILED'}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--quick", action="store_true", help="tiny model (2 + 2 blocks, width 32): seconds")
    ap.add_argument("--width-div", type=int, default=None,
                    help="divide Flux's 24 heads and embedding widths by this (default 8 on the CPU, 1 on a GPU)")
    ap.add_argument("--blocks", default=None, help="double,single block counts (default Flux's 19,38)")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16; 4 with --quick)")
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds per side, interleaved (best of N)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed load+apply one + restore per side before the timed rounds")
    ap.add_argument("--no-diffusers", action="store_true", help="measure lora_core only")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--write-docs", action="store_true", help="update this bench's section of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device here (the CPU case: --device cpu)")
        return 2
    if args.repeat < 1 or args.warmup < 0:
        print("error: --repeat must be at least 1 and --warmup at least 0")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        blocks = tuple(int(x) for x in args.blocks.split(",")) if args.blocks else None
        if blocks is not None and (len(blocks) != 2 or min(blocks) < 1):
            raise ValueError("two positive counts")
        width_div = args.width_div or (1 if device.type == "cuda" else 8)
        cfg = fx.flux_config(args.quick, width_div, blocks)
    except ValueError as exc:
        print(f"error: --blocks/--width-div: {exc}")
        return 2
    rank = args.rank or (4 if args.quick else 16)
    load_start = os.getloadavg()[0]

    t0 = time.perf_counter()
    model = fx.build_flux(cfg, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model built in {time.perf_counter() - t0:.1f} s ({params / 1e9:.2f} B params)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "flux.safetensors")
        save_checkpoint(model, ckpt)
        files = {n: fx.make_flux_lora(d, model, n, rank, seed=i + 1) for i, n in enumerate(PLAN)}
        print("checkpoint and LoRA files written", file=sys.stderr)
        import peft  # noqa: F401  (both sides' imports done before the first timing; then)
        gc.freeze()  # the objects of every import leave the collector's view: Timer's gc.collect() before
        # each timed call then takes milliseconds, not most of a second, and collects the same garbage
        try:
            rounds, touched, factors, state = run_rounds(model, files, ckpt, device, args.repeat, args.warmup,
                                                         not args.no_diffusers)
            times = {name: summarize(rs) for name, rs in rounds.items()}
            check = None if args.no_diffusers else merge_check(model, files, ckpt, checksums(model))
            floor_list = [device_floors(touched, factors, device) for _ in range(3)]
        finally:
            gc.unfreeze()  # main() may run inside a longer process (the tests)
    floor_mem = min(f[0] for f in floor_list)
    floor_comp = {dt: min(f[1][dt] for f in floor_list) for dt in (torch.float32, torch.bfloat16)}
    h = fx.hidden(cfg)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.machine()} {os.cpu_count()} CPUs, load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end")
    meta = {
        "command": "python -m bench.engine_flux" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": where,
        "model": (f"FluxTransformer2DModel, {cfg['num_layers']} double + {cfg['num_single_layers']} single blocks, "
                  f"hidden {h} ({cfg['num_attention_heads']} heads × {cfg['attention_head_dim']}), MLP {4 * h}"
                  + (" (Flux.1's full size)" if h == fx.FULL_HIDDEN and not blocks else
                     f" (Flux.1: hidden {fx.FULL_HIDDEN}, 19 + 38 blocks)")
                  + f", bf16, {params / 1e9:.2f} B params, {device}"),
        "rank": rank, "repeat": args.repeat, "warmup": args.warmup, "narrow": h != fx.FULL_HIDDEN,
        "touched_tensors": len(touched),
        "touched_mb": sum(t.numel() * t.element_size() for t in touched) / 1e6,
    }
    section = report(meta, times, state, floor_mem, floor_comp, check)
    print(section)
    if args.write_docs:
        start, end = MARKERS[device.type]
        write_doc(section, start, end, HEADINGS[device.type])
    if check and not check_passed(check):
        print("error: lora_core's merged weights do not match diffusers+PEFT's merge (see Merge check)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
