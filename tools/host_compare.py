"""Client half of tools/host_compare.sh: one fixed sequence of txt2img requests against a running
AUTOMATIC1111 or Forge server, timed from the client; the images and times go to OUT_DIR.

    python tools/host_compare.py run URL OUT_DIR --loras L1,L2 [--label NAME] [--pid SERVER_PID]
    python tools/host_compare.py compare DIR_A DIR_B [--tolerance 1] [--markdown FILE]

The sequence covers what a user does with LoRAs between generations: a first apply, the same tag
again, a new weight, a switch, a stack of two, the same stack again, different text-encoder and
UNet weights, then no LoRA. Base requests (no tag) before and after give the base time that each
request's extra time is measured against: wall-clock seconds seen by the client and, with
--pid, CPU seconds the server process spent (user + system, all threads), which stay comparable
when other jobs share the machine. Runs with the webui's own Python (stdlib,
numpy and Pillow only), so it needs nothing from this project.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
import urllib.request

PROMPT = "a photo of a cat"


def sequence(l1: str, l2: str) -> list[tuple[str, str]]:
    """(step name, prompt); names starting with "base" have no tag."""
    return [
        ("base_warmup", PROMPT),
        ("base_0", PROMPT),
        ("first_apply", f"{PROMPT} <lora:{l1}:1>"),
        ("same_again", f"{PROMPT} <lora:{l1}:1>"),
        ("change_weight", f"{PROMPT} <lora:{l1}:0.5>"),
        ("switch", f"{PROMPT} <lora:{l2}:1>"),
        ("stack_2", f"{PROMPT} <lora:{l1}:1> <lora:{l2}:0.7>"),
        ("same_stack_again", f"{PROMPT} <lora:{l1}:1> <lora:{l2}:0.7>"),
        ("te_unet_differ", f"{PROMPT} <lora:{l1}:1:0.4>"),
        ("base_1", PROMPT),  # the LoRAs removed
        ("base_2", PROMPT),
    ]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` and its threads so far (Linux /proc)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lbw_sequence(l1: str) -> list[tuple[str, str]]:
    """lora_core only (the built-in reads no lbw): block weights ALL must give the first apply's
    image, NONE the base image, INALL something in between."""
    return [("lbw_all", f"{PROMPT} <lora:{l1}:1:lbw=ALL>"), ("lbw_none", f"{PROMPT} <lora:{l1}:1:lbw=NONE>"),
            ("lbw_inall", f"{PROMPT} <lora:{l1}:1:lbw=INALL>"), ("lbw_base", PROMPT)]


def txt2img(url: str, prompt: str) -> tuple[float, bytes, str]:
    payload = {"prompt": prompt, "negative_prompt": "", "width": 64, "height": 64, "steps": 2,
               "sampler_name": "Euler", "scheduler": "Automatic", "seed": 1, "cfg_scale": 7,
               "save_images": False}
    request = urllib.request.Request(url.rstrip("/") + "/sdapi/v1/txt2img", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as r:
        reply = json.load(r)
    seconds = time.perf_counter() - t0
    info = json.loads(reply.get("info") or "{}")
    infotext = (info.get("infotexts") or [""])[0]
    return seconds, base64.b64decode(reply["images"][0]), infotext


def run(url: str, out_dir: str, l1: str, l2: str, label: str, pid: int | None = None, lbw: bool = False) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    steps = []
    for name, prompt in sequence(l1, l2) + (lbw_sequence(l1) if lbw else []):
        cpu0 = cpu_seconds(pid)
        seconds, png, infotext = txt2img(url, prompt)
        cpu = cpu_seconds(pid) - cpu0
        with open(os.path.join(out_dir, f"{name}.png"), "wb") as f:
            f.write(png)
        steps.append({"step": name, "prompt": prompt, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                      "infotext": infotext})
        print(f"{label:>10} {name:>16} {seconds:7.2f} s  cpu {cpu:7.2f} s", flush=True)
    # base_1 is "remove the LoRAs" (the built-in restores its weights in that request), so the
    # base time comes from the no-LoRA requests with nothing to remove
    bases = [s for s in steps if s["step"] in ("base_0", "base_2")]
    base = statistics.median(s["seconds"] for s in bases)
    base_cpu = statistics.median(s["cpu_seconds"] for s in bases)
    for s in steps:
        s["extra_seconds"] = round(s["seconds"] - base, 3)
        s["extra_cpu_seconds"] = round(s["cpu_seconds"] - base_cpu, 3)
    result = {"label": label, "url": url, "base_seconds": base, "base_cpu_seconds": base_cpu, "steps": steps}
    if lbw:
        result["lbw_checks"] = check_lbw(out_dir)
        print("block weights:", result["lbw_checks"], flush=True)
    with open(os.path.join(out_dir, "times.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def check_lbw(out_dir: str) -> dict:
    def same(a: str, b: str) -> bool:
        return bool((_pixels(os.path.join(out_dir, a + ".png")) == _pixels(os.path.join(out_dir, b + ".png"))).all())

    return {"ALL equals the plain tag": same("lbw_all", "first_apply"),
            "NONE equals no LoRA": same("lbw_none", "base_0"),
            "INALL differs from both": not same("lbw_inall", "first_apply") and not same("lbw_inall", "base_0"),
            "no tag afterwards equals no LoRA": same("lbw_base", "base_0")}


def _pixels(path: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def compare(dir_a: str, dir_b: str, tolerance: int) -> tuple[bool, list[dict]]:
    """Per step: the largest pixel difference between the two runs (in 1/255 units) and the
    extra seconds of each. OK when every image is within `tolerance`."""
    a = json.load(open(os.path.join(dir_a, "times.json")))
    b = json.load(open(os.path.join(dir_b, "times.json")))
    rows = []
    ok = True
    base_a = _pixels(os.path.join(dir_a, "base_0.png"))
    for sa, sb in zip(a["steps"], b["steps"]):  # the common sequence (b may add lbw steps)
        pa, pb = _pixels(os.path.join(dir_a, sa["step"] + ".png")), _pixels(os.path.join(dir_b, sb["step"] + ".png"))
        diff = int(abs(pa - pb).max())
        effect = float(abs(pa - base_a).mean())
        ok &= diff <= tolerance
        cpu_a, cpu_b = sa.get("extra_cpu_seconds"), sb.get("extra_cpu_seconds")
        cpu_ratio = (cpu_a / cpu_b) if cpu_a is not None and cpu_b is not None and cpu_b > 0.05 else None
        rows.append({"step": sa["step"], "max_diff": diff, "lora_effect_a": round(effect, 2),
                     "extra_a": sa["extra_seconds"], "extra_b": sb["extra_seconds"],
                     "cpu_a": cpu_a, "cpu_b": cpu_b, "cpu_ratio": cpu_ratio})
    return ok, rows


def markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    """Extra = the request's time minus the median of the base requests (no LoRA), wall clock and
    server CPU; the ratio is of the CPU extras (the wall clock also carries other jobs' noise)."""
    lines = [f"| request | max pixel diff (1/255) | mean change vs base | {label_a} extra s (wall / cpu) | "
             f"{label_b} extra s (wall / cpu) | cpu ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['cpu_ratio']:.0f}x" if r["cpu_ratio"] else "(under 0.05 s)"
        cpu_a = "" if r["cpu_a"] is None else f" / {r['cpu_a']:+.2f}"
        cpu_b = "" if r["cpu_b"] is None else f" / {r['cpu_b']:+.2f}"
        lines.append(f"| {r['step']} | {r['max_diff']} | {r['lora_effect_a']} | {r['extra_a']:+.2f}{cpu_a} | "
                     f"{r['extra_b']:+.2f}{cpu_b} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("url")
    r.add_argument("out_dir")
    r.add_argument("--loras", required=True, help="two LoRA names, L1,L2")
    r.add_argument("--label", default="run")
    r.add_argument("--pid", type=int, help="server process id: also count its CPU seconds")
    r.add_argument("--lbw", action="store_true", help="also check lora_core's block weights (not the built-in's)")
    c = sub.add_parser("compare")
    c.add_argument("dir_a")
    c.add_argument("dir_b")
    c.add_argument("--tolerance", type=int, default=1)
    c.add_argument("--markdown")
    args = parser.parse_args(argv)
    if args.command == "run":
        l1, l2 = args.loras.split(",")
        result = run(args.url, args.out_dir, l1, l2, args.label, args.pid, args.lbw)
        return 0 if all(result.get("lbw_checks", {}).values()) else 1
    ok, rows = compare(args.dir_a, args.dir_b, args.tolerance)
    label_a = json.load(open(os.path.join(args.dir_a, "times.json")))["label"]
    label_b = json.load(open(os.path.join(args.dir_b, "times.json")))["label"]
    text = markdown(rows, label_a, label_b)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    print("IMAGES: " + ("SAME" if ok else "DIFFERENT") + f" within {args.tolerance}/255")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
