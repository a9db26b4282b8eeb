"""Exact restore with W0 copies vs W0 read back from the checkpoint file, side by side.

    .venv/bin/python -m bench.restore_w0            # SD1.5 UNet + CLIP-L, fp16, rank-32 LoRAs (~6 GB RAM)
    .venv/bin/python -m bench.restore_w0 --quick    # tiny models, seconds

The model is saved to a safetensors checkpoint and loaded from it (as a host does); two Engines on
two copies of it run the same requests: one keeps W0 copies (the default for models under 8 GB),
one reads W0 back from the checkpoint (patcher/checkpoint_w0.py; A1111/Forge setting "Exact
restore", default for models of 8 GB and more). Printed: the memory each holds for exact restore
after one LoRA and after a stack of two, and the wall time of a first apply, a switch, a new weight
and the restore, best of --repeats. Both end bit-identical after every step (checked). The file is
read from the page cache here (it was just written); from a cold disk, add its read time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from bench.engine import build_models, make_lora_file


def _loaded_copy(path):
    from safetensors.torch import load_file

    return {k: torch.nn.Parameter(v, requires_grad=False) for k, v in load_file(path).items()}


def _model_from(unet, te, tensors):
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.data = tensors[name].data
        for name, p in te.named_parameters():
            p.data = tensors[name].data
    return unet, te


def main(argv=None) -> None:
    from lora_core.engine import Engine
    from lora_core.patcher.checkpoint_w0 import CheckpointW0
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        unet, te = build_models(args.quick)
        ckpt = os.path.join(tmp, "model.safetensors")
        state = {n: p.detach().contiguous() for n, p in unet.named_parameters()}
        state.update({n: p.detach().contiguous() for n, p in te.named_parameters()})
        save_file(state, ckpt)
        files = [make_lora_file(tmp, unet, te, name, 32 if not args.quick else 4, seed)
                 for seed, name in enumerate(("L1", "L3"))]
        del state
        sides = {}
        for label, source in (("copies", None), ("checkpoint", CheckpointW0(ckpt))):
            u, t = build_models(args.quick)
            _model_from(u, t, _loaded_copy(ckpt))
            sides[label] = (Engine(Binding.from_diffusers(u, [t]), w0_source=source), u, t)

        steps = [("first apply", [(files[0], 1.0)]), ("new weight", [(files[0], 0.5)]),
                 ("switch", [(files[1], 1.0)]), ("stack of 2", [(files[0], 1.0), (files[1], 0.7)]),
                 ("restore", None)]
        times = {label: {s: [] for s, _ in steps} for label in sides}
        held = {label: {} for label in sides}
        for _ in range(args.repeats):
            for step, stack in steps:
                for label, (engine, u, t) in sides.items():
                    t0 = time.perf_counter()
                    if stack is None:
                        engine.restore()
                    else:
                        engine.apply([ApplyRequest(p, te=w, unet=w) for p, w in stack])
                    times[label][step].append(time.perf_counter() - t0)
                    held[label][step] = engine.patcher.backup_bytes
                a, b = sides["copies"][1:], sides["checkpoint"][1:]
                for m1, m2 in zip(a, b):
                    for (n, x), (_n, y) in zip(m1.named_parameters(), m2.named_parameters()):
                        assert torch.equal(x, y), f"{step}: {n} differs between the two ways"
        touched = sum(p.numel() * p.element_size() for p in sides["copies"][1].parameters())
        touched += sum(p.numel() * p.element_size() for p in sides["copies"][2].parameters())
        print(f"model {touched / 2**30:.2f} GiB ({'tiny' if args.quick else 'SD1.5 UNet + CLIP-L'}, fp16), "
              f"{torch.get_num_threads()} threads, best of {args.repeats}; identical weights after every step")
        print(f"{'step':<13}{'copies: time':>14}{'held':>11}{'checkpoint: time':>18}{'held':>8}")
        for step, _stack in steps:
            c, k = min(times["copies"][step]), min(times["checkpoint"][step])
            print(f"{step:<13}{c * 1e3:>12.0f}ms{held['copies'][step] / 2**20:>9.0f}MB"
                  f"{k * 1e3:>16.0f}ms{held['checkpoint'][step] / 2**20:>6.0f}MB")


if __name__ == "__main__":
    main()
