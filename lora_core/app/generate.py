"""`python -m lora_core generate "PROMPT <lora:x:0.8>" --out a.png`: one-shot txt2img from the command line.

Writes PNGs with the A1111 `parameters` text chunk. Heavy imports happen inside run().
Exit status: 0 written, 1 no image, 2 the --checkpoint given cannot be loaded or the --device cannot be used.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lora_core.app import placement

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='prompt, may contain <lora:name:weight> tags')
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--out", default="output.png",
                        help="output PNG; with --batch-count N > 1, files are named out-1.png, out-2.png, ...")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file, diffusers-format Flux/SD3 folder, or name under "
                             "models/Stable-diffusion ('demo' for the built-in demo model; default: the first "
                             "checkpoint found, else the demo model)")
    from lora_core.library.locations import add_location_arguments

    add_location_arguments(parser)
    parser.add_argument("--data-dir", default="data", help="index, caches (default: data)")
    parser.add_argument("--seed", type=int, default=-1, help="seed (-1: random)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=None,
                        help="CFG scale (default: the model's, 7.0; Flux: 3.5, its distilled guidance)")
    parser.add_argument("--sampler", default=None,
                        help="Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DDIM (default: Euler a); "
                             "Flux/SD3 models: Euler (default), DPM++ 2M")
    parser.add_argument("--width", type=int, default=None, help="default: the model's native size (64 for the demo)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--batch-count", type=int, default=1)
    placement.add_arguments(parser)


def _out_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}") for i in range(n)]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lora_core.app.infotext import PNG_KEY, png_info
    from lora_core.app.placement import PlacementError, from_args
    from lora_core.app.session import CheckpointLoadError, Session
    from lora_core.library.locations import lora_dirs, models_dir

    try:
        # an explicit --checkpoint must load: no silent fall-back to the demo model
        session = Session(models_dir(args), args.data_dir, checkpoint=args.checkpoint,
                          lora_dirs=lora_dirs(args), strict=args.checkpoint is not None,
                          placement=from_args(args))
    except (CheckpointLoadError, PlacementError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        # session.messages (the demo model's description, demo LoRAs written, a checkpoint that
        # could not be loaded) were logged by the session as they arose: not repeated here.
        bar = tqdm(total=args.steps * args.batch_count, desc="Sampling", unit="step", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        images, infotext, messages = session.txt2img(
            args.prompt, args.negative, steps=args.steps, cfg=args.cfg, seed=args.seed, width=args.width,
            height=args.height, sampler=args.sampler, batch_count=args.batch_count, progress=progress,
        )
        bar.close()
        for m in messages:
            logger.warning("%s", m)
        if not images:
            logger.error("no image was generated")
            return 1
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for image, path in zip(images, _out_paths(out, len(images))):
            image.save(path, format="PNG", pnginfo=png_info(image.info.get(PNG_KEY, infotext)))
            print(path)
        print(infotext)
        return 0
    finally:
        session.close()
