"""Client half of tools/forge_flux_check.sh: txt2img requests against Forge running the tiny Flux,
with Forge's Flux settings (Euler, Simple schedule, CFG 1, distilled CFG 3.5), 64x64, 2 steps, seed 1.

    python requests_check.py run URL OUT_DIR          # the request sequence; PNGs + run.json
    python requests_check.py compare DIR_A DIR_B      # per step: largest pixel difference (0-255)

Runs with the webui's own Python (stdlib, numpy, Pillow); nothing from this project.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "a photo of a cat"
KOHYA, PEFT = "flux_kohya", "flux_peft"
# (step, prompt); steps named base* have no tag and must all give the first base image
SEQUENCE = [
    ("base_0", PROMPT),
    ("kohya_1", f"{PROMPT} <lora:{KOHYA}:1>"),
    ("base_1", PROMPT),
    ("peft_1", f"{PROMPT} <lora:{PEFT}:1>"),
    ("base_2", PROMPT),
    ("stack", f"{PROMPT} <lora:{KOHYA}:1> <lora:{PEFT}:0.7>"),
    ("kohya_05", f"{PROMPT} <lora:{KOHYA}:0.5>"),
    ("base_3", PROMPT),
]
SD1_LORA = "test_lora"   # the rig's SD1.5 LoRA: on Flux it must be refused (image = base_0)
PAYLOAD = dict(width=64, height=64, steps=2, sampler_name="Euler", scheduler="Simple", cfg_scale=1.0,
               distilled_cfg_scale=3.5, seed=1, save_images=False, send_images=True)


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def _get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.load(r)


def run(url: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    listed = sorted(x.get("name", "") for x in _get(url, "/sdapi/v1/loras"))
    result = {"loras_listed": listed, "steps": {}}
    sequence = SEQUENCE + ([("sd1_on_flux", f"{PROMPT} <lora:{SD1_LORA}:1>")] if SD1_LORA in listed else [])
    for step, prompt in sequence:
        t0 = time.time()
        d = _post(url, "/sdapi/v1/txt2img", dict(PAYLOAD, prompt=prompt))
        seconds = round(time.time() - t0, 2)
        png = base64.b64decode(d["images"][0])
        (out / f"{step}.png").write_bytes(png)
        info = json.loads(d.get("info") or "{}")
        result["steps"][step] = {"seconds": seconds, "lora_hashes": info.get("extra_generation_params", {}).get("Lora hashes")}
    images = {s: _img(out / f"{s}.png") for s, _ in sequence}
    base = images["base_0"]
    for step, img in images.items():
        result["steps"][step]["mean_abs_diff_vs_base_0"] = round(float(np.abs(img - base).mean()), 3)
        result["steps"][step]["equal_base_0"] = bool((img == base).all())
    result["stack_vs_kohya_1"] = round(float(np.abs(images["stack"] - images["kohya_1"]).mean()), 3)
    result["kohya_05_vs_kohya_1"] = round(float(np.abs(images["kohya_05"] - images["kohya_1"]).mean()), 3)
    (out / "run.json").write_text(json.dumps(result, indent=1))
    return result


def _img(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def compare(a: Path, b: Path) -> dict:
    steps = sorted({p.stem for p in a.glob("*.png")} & {p.stem for p in b.glob("*.png")})
    return {s: int(np.abs(_img(a / f"{s}.png") - _img(b / f"{s}.png")).max()) for s in steps}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("url")
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    res = run(args.url.rstrip("/"), args.out) if args.cmd == "run" else compare(args.a, args.b)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
