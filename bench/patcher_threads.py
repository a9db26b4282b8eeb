"""Patcher.large_slot_threads: applies written on the calling thread (below PARALLEL_MIN_ELEMENTS) with
large slots, timed per setting ("torch", 1, "free") in interleaved rounds. CPU only, synthetic weights.

    python -m bench.patcher_threads                       # 2 x 1280x1280 and 8 x 640x640, fp16, rank 32
    python -m bench.patcher_threads --shapes 640x640,640x640 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import torch

from lora_core.patcher import ActiveLora, Patcher

SETTINGS = {"torch": "torch", "1": 1, "free": "free"}


class _Binding:
    family = "sd1"

    def __init__(self, tensors):
        self.tensors = tensors

    def resolve(self, key, part="weight"):
        if part != "weight":
            return None
        t = self.tensors[key.split(":")[1]]
        return SimpleNamespace(tensor=t, rows=None, shape=tuple(t.shape), component="unet", block="IN04")


class _LowRank:
    def __init__(self, key, rows, cols, rank):
        self.key = key
        self.up = torch.randn(rows, rank, dtype=torch.float16) * 0.01
        self.down = torch.randn(rank, cols, dtype=torch.float16) * 0.01

    def low_rank(self, dyn=None):
        return self.up, self.down, 1.0


def measure(shapes: list[tuple[int, int]], rounds: int, rank: int = 32) -> dict[str, list[float]]:
    torch.manual_seed(0)
    tensors = {f"m{i}": torch.randn(*s, dtype=torch.float16) for i, s in enumerate(shapes)}
    lora = SimpleNamespace(name="x", path="x", family="sd1", unclaimed=[],
                           adapters={f"unet:m{i}": _LowRank(f"unet:m{i}", *s, rank) for i, s in enumerate(shapes)})
    patchers = {name: Patcher(_Binding(tensors), large_slot_threads=v) for name, v in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(rounds):
        for name, p in patchers.items():
            t0 = time.perf_counter()
            p.apply([ActiveLora(lora, unet=0.7)])
            p.restore()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", action="append", help="comma-separated ROWSxCOLS slots (repeatable); "
                                                          "default: 1280x1280,1280x1280 and 8 x 640x640")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    specs = args.shapes or ["1280x1280,1280x1280", ",".join(["640x640"] * 8)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start; apply + restore, median / min of {args.rounds}")
    for spec in specs:
        shapes = [tuple(int(x) for x in s.split("x")) for s in spec.split(",")]
        times = measure(shapes, args.rounds)
        cells = ", ".join(f"{name}: {statistics.median(t) * 1e3:.1f} / {min(t) * 1e3:.1f} ms" for name, t in times.items())
        print(f"{len(shapes)} x {shapes[0][0]}x{shapes[0][1]} ({sum(r * c for r, c in shapes) / 1e6:.2f}M elements): {cells}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
