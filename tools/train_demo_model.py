#!/usr/bin/env python
"""Train lora_core's tiny SD1-family demo base model from the synthetic scenes.

    python tools/train_demo_model.py --out build/demo_model            # full run (see --help for sizes)
    python tools/train_demo_model.py --out /tmp/smoke --smoke           # a few steps, to check the plumbing

Writes <out>/lora_core-demo.safetensors (A1111/LDM single-file layout, fp16), <out>/configs/sd15/...
(diffusers configs: `load_checkpoint(path, data_dir, config_root=<out>/configs)` loads it) and
<out>/lora_core-demo.json (manifest: seed, steps, sha256, timings, losses). Deterministic for a seed
(same machine type and torch version). --loras then trains the demo LoRAs with `lora_core train`.

    python tools/train_demo_model.py --out build/demo_loras --from-installed --loras --only demo_stripes
        # a LoRA-only rebuild: the installed checkpoint and the other LoRAs, copied; demo_stripes retrained

Time (measured on the 2-core dev machine, 1 thread): ~1.0 s per VAE step (batch 32) and ~0.66 s
per UNet step (batch 64): the defaults (1200 + 4000 steps) take about 65 minutes; the demo LoRAs
add ~0.1 s per step, ~5 minutes for the three.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_core.demo.model import DemoArch, DemoTrainSettings, train_demo_model  # noqa: E402  (no torch at import)
from lora_core.demo.refine import RefineSettings, refine_demo_model  # noqa: E402


def build_from_installed(out: Path) -> dict:
    """Fill `out` as a finished build of the installed demo assets (same checkpoint, configs and
    LoRAs, and a build manifest from the installed one), for a LoRA-only retrain; returns the
    build manifest."""
    import shutil

    from lora_core.app.demo_pack import ASSETS_DIR, MANIFEST_NAME, sha256_of

    installed = json.loads((ASSETS_DIR / MANIFEST_NAME).read_text())
    ckpt = ASSETS_DIR / installed["checkpoint"]["file"]
    if sha256_of(ckpt) != installed["checkpoint"]["sha256"]:
        raise SystemExit(f"{ckpt}: sha256 differs from {ASSETS_DIR / MANIFEST_NAME}; reinstall the demo assets first")
    (out / "loras").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt, out / ckpt.name)
    shutil.copytree(ASSETS_DIR / installed.get("configs", "configs"), out / "configs", dirs_exist_ok=True)
    for item in installed["loras"]:
        shutil.copyfile(ASSETS_DIR / item["file"], out / "loras" / Path(item["file"]).name)
    manifest = {**installed["training"], "file": ckpt.name, "sha256": installed["checkpoint"]["sha256"],
                "bytes": installed["checkpoint"]["bytes"], "name": installed.get("name"),
                "seed": installed.get("seed"), "vae_steps": installed.get("vae_steps"),
                "unet_steps": installed.get("unet_steps")}
    (out / "lora_core-demo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    defaults = DemoTrainSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--images", type=int, default=defaults.n_images, help="rendered training scenes")
    p.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    p.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    p.add_argument("--vae-batch", type=int, default=defaults.vae_batch)
    p.add_argument("--unet-batch", type=int, default=defaults.unet_batch)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="torch CPU threads (default 1: predictable on a shared machine; 0: torch's default)")
    p.add_argument("--data-dir", default=None, help="tokenizer cache folder (default: <out>/.cache)")
    p.add_argument("--loras", action="store_true",
                   help="then train the demo LoRAs (style, concept, LoCon) with `lora_core train` into <out>/loras")
    p.add_argument("--from-installed", action="store_true",
                   help="no base-model training: start <out> from the installed demo assets (checkpoint, configs, "
                        "LoRAs), so --loras --only NAME retrains some LoRAs for install_demo_assets.py --keep-quality")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="with --loras: train only this demo LoRA (repeatable; default all six)")
    p.add_argument("--lora-steps", type=int, default=None, help="override each demo LoRA's step count")
    p.add_argument("--vae-object-weight", type=float, default=defaults.vae_object_weight,
                   help="extra loss weight on (and 2 px around) the object when training the VAE (0: plain loss)")
    p.add_argument("--vae-extra-shapes", default=",".join(defaults.vae_extra_shapes),
                   help="comma-separated shapes the VAE also learns to draw, e.g. cross (the concept LoRA's)")
    p.add_argument("--vae-styled-fraction", type=float, default=defaults.vae_styled_fraction,
                   help="fraction of the VAE's scenes drawn striped or checkered (the style LoRAs' textures)")
    p.add_argument("--partial-captions", type=float, default=defaults.partial_caption_rate,
                   help="share of UNet samples trained on a partial caption (\"a red circle\", ...) of their scene")
    p.add_argument("--refine", metavar="STAGE1_CKPT", default=None,
                   help="run stage 2 (sharper decoder + longer UNet, lora_core/demo/refine.py) on a stage-1 "
                        "checkpoint written by this script; its configs/ and .json manifest are read next to it")
    p.add_argument("--decoder-steps", type=int, default=RefineSettings.decoder_steps, help="stage 2 decoder steps")
    p.add_argument("--refine-unet-steps", type=int, default=RefineSettings.unet_steps, help="stage 2 UNet steps")
    p.add_argument("--serial", action="store_true", help="stage 2: one process instead of two")
    p.add_argument("--smoke", action="store_true", help="2 steps of each phase on 64 images (plumbing check)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = replace(defaults, seed=args.seed, n_images=args.images, vae_steps=args.vae_steps,
                       unet_steps=args.unet_steps, vae_batch=args.vae_batch, unet_batch=args.unet_batch,
                       threads=args.threads, vae_object_weight=args.vae_object_weight,
                       vae_extra_shapes=tuple(x.strip() for x in args.vae_extra_shapes.split(",") if x.strip()),
                       vae_styled_fraction=args.vae_styled_fraction,
                       partial_caption_rate=args.partial_captions)
    if args.smoke:
        settings = replace(settings, n_images=64, vae_steps=2, unet_steps=2, warmup=1)
    if args.from_installed:
        manifest = build_from_installed(Path(args.out))
    elif args.refine:
        src = Path(args.refine)
        stage1_json = src.with_suffix(".json")
        stage1 = json.loads(stage1_json.read_text()) if stage1_json.is_file() else None
        refine = RefineSettings(decoder_steps=args.decoder_steps, unet_steps=args.refine_unet_steps,
                                parallel=not args.serial, threads=max(1, args.threads))
        if args.smoke:
            refine = replace(refine, n_images=64, decoder_steps=2, unet_steps=2, warmup=1)
        manifest = refine_demo_model(src, src.parent / "configs", args.out, refine, data_dir=args.data_dir,
                                     progress=not args.no_progress, stage1=stage1)
    else:
        manifest = train_demo_model(args.out, DemoArch(), settings, data_dir=args.data_dir,
                                    progress=not args.no_progress)
    print(json.dumps({k: manifest[k] for k in ("file", "bytes", "sha256", "seed", "vae_steps", "unet_steps",
                                                  "timings", "seconds")}, indent=2))
    if args.loras:
        from lora_core.demo.loras import train_demo_loras

        out = Path(args.out)
        written = train_demo_loras(out / manifest["file"], out / "configs", out / "loras", out / "lora_data",
                                   data_dir=args.data_dir, seed=args.seed,
                                   steps=2 if args.smoke else args.lora_steps, images=8 if args.smoke else None,
                                   preview=not args.smoke, only=tuple(args.only) if args.only else None)
        print("demo LoRAs: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
