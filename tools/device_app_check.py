"""The standalone app on a GPU (run by tools/device_check.sh, step "app"): the demo model through
`python -m lora_core generate --device cuda` with and without a demo LoRA, each picture compared with
the CPU's for the same seed, and the wall time of each run. Prints a small report (app_check.txt)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = {
    "base": "a large blue star on a white background, in the center",
    "lora": "a large blue star on a white background, in the center, lccool <lora:demo_cool:1>",
}


def generate(prompt: str, device: str, out: Path, work: Path) -> tuple[np.ndarray, float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lora_core", "-v", "generate", prompt, "--seed", "1", "--steps", "20",
                           "--device", device, "--out", str(out), "--models-dir", str(work / "models"),
                           "--data-dir", str(work / "data")], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"generate --device {device} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.float64), seconds, proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpu-device", default="cuda", help="the device compared with the CPU (default cuda)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        for name, prompt in PROMPTS.items():
            cpu, t_cpu, _ = generate(prompt, "cpu", args.out / f"app_{name}_cpu.png", work)
            gpu, t_gpu, log = generate(prompt, args.gpu_device, args.out / f"app_{name}_gpu.png", work)
            placed = f"loaded on {args.gpu_device}" in log
            rows.append((name, np.abs(cpu - gpu).mean(), np.abs(cpu - gpu).max(), t_cpu, t_gpu, placed))
    print(f"| prompt | mean abs diff {args.gpu_device} vs cpu (0-255) | max | cpu wall s | {args.gpu_device} wall s | placed there |")
    print("|---|---:|---:|---:|---:|---|")
    for name, mean, mx, t_cpu, t_gpu, placed in rows:
        print(f"| {name} | {mean:.2f} | {mx:.0f} | {t_cpu:.1f} | {t_gpu:.1f} | {placed} |")
    bad = [r for r in rows if r[1] > 6 or not r[5]]
    print("VERDICT:", "FAIL" if bad else "PASS", "(mean difference above 6/255 or not placed on the GPU)" if bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
