"""What merging a LoRA into fp8 weights costs in accuracy, against the same merge in bf16.

    .venv/bin/python -m bench.fp8_rounding [--rows 3072 --cols 3072 --rank 16]

A Flux-sized linear layer (3072x3072) whose weights hold fp8 values (float8_e4m3fn and e5m2, as
fp8 Flux checkpoints store them) gets a rank-16 LoRA whose ΔW is 1-13 % of W0 (relative Frobenius
norm; typical LoRAs sit in this range). Each way of storing the merged layer is compared with the
exact merge W0 + ΔW (float64) on the layer's *outputs* for random inputs:

    error = ‖(W_stored − W_exact)·x‖ / ‖ΔW·x‖

i.e. how much of the LoRA's own effect the storage distorts (0: exact; 1: as large as the effect).
Ways compared, all from the same fp8-valued W0:
  * fp8, rounded to nearest once (what lora_core writes),
  * fp8, stochastic rounding (ComfyUI's choice for fp8 merges; seeded, unbiased on average),
  * bf16 (the same merge into a bf16 copy of the weights: the reference people compare with).
Also times lora_core's slot write for fp8 and bf16 weights (patcher/slot_math.write_slot).
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from lora_core.patcher.slot_math import write_slot


def stochastic_round(value: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """fp32 `value` into fp8 `dtype`, up or down at random so that the expected stored value equals
    `value` (the comparison point; lora_core itself rounds to nearest)."""
    limit = torch.finfo(dtype).max
    value = value.clamp(-limit, limit)
    nearest = value.to(dtype)
    near = nearest.float()
    diff = value - near
    bits = nearest.view(torch.uint8).to(torch.int16)
    negative = bits >= 0x80
    magnitude = bits & 0x7F
    # the fp8 neighbour on the far side of `value`: one step in magnitude (bit patterns of one sign
    # order like integers); from ±0 toward the other sign, the smallest subnormal of that sign
    away = (diff > 0) != negative
    other_bits = torch.where(away, bits + 1, torch.where(magnitude > 0, bits - 1, (bits ^ 0x80) + 1))
    other = other_bits.to(torch.uint8).view(dtype)
    gap = (other.float() - near).abs()
    chance = torch.where(gap > 0, diff.abs() / gap, torch.zeros_like(gap))
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(value.shape, generator=generator)
    return torch.where(draw < chance, other, nearest)


def _contribution(up: torch.Tensor, down: torch.Tensor):
    entry = SimpleNamespace(low_rank=(up.contiguous(), down.contiguous(), 1.0), part="weight")
    return [(entry, 1.0, None)]


def _time_write(w0: torch.Tensor, up, down, repeats: int = 5) -> float:
    live = w0.clone()
    contribs = _contribution(up, down)
    write_slot(live, w0, contribs, torch.float32)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        write_slot(live, w0, contribs, torch.float32)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=3072)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    w_base = torch.randn(args.rows, args.cols) * 0.03
    x = torch.randn(args.cols, args.inputs, dtype=torch.float64)
    print(f"layer {args.rows}x{args.cols}, rank {args.rank}, {args.inputs} random inputs; "
          "error = |(W_stored - W_exact) x| / |dW x|")
    print(f"{'W0 dtype':<14}{'|dW|/|W0|':>10}{'fp8 nearest':>13}{'fp8 stochastic':>16}{'bf16':>8}")
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        w0 = w_base.to(dtype)
        for scale in (0.01, 0.003, 0.001):
            up = torch.randn(args.rows, args.rank) * scale
            down = torch.randn(args.rank, args.cols) * 0.05
            delta = up.double() @ down.double()
            exact = w0.double() + delta
            effect = (delta @ x).norm()

            def error(stored: torch.Tensor) -> float:
                return float(((stored.double() - exact) @ x).norm() / effect)

            live = w0.clone()
            write_slot(live, w0, _contribution(up, down), torch.float32)  # lora_core's fp8 merge
            stoch = stochastic_round(exact.float(), dtype, seed=1)
            bf16 = exact.to(torch.bfloat16)
            rel = float(delta.norm() / w0.double().norm())
            print(f"{str(dtype).replace('torch.', ''):<14}{rel:>10.3f}{error(live):>13.3f}{error(stoch):>16.3f}"
                  f"{error(bf16):>8.3f}")
    up = torch.randn(args.rows, args.rank) * 0.003
    down = torch.randn(args.rank, args.cols) * 0.05
    t_fp8 = _time_write(w_base.to(torch.float8_e4m3fn), up, down)
    t_bf16 = _time_write(w_base.to(torch.bfloat16), up, down)
    print(f"slot write (lora_core write_slot, best of 5): fp8 {t_fp8 * 1e3:.1f} ms, bf16 {t_bf16 * 1e3:.1f} ms "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
