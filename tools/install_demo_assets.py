#!/usr/bin/env python
"""Install a finished demo-model build as the app's embedded default.

    python tools/install_demo_assets.py /work/demo_build                       # -> lora_core/app/demo_assets
    python tools/install_demo_assets.py /work/demo_build --measure --screenshots docs/screenshots

Copies <build>/lora_core-demo.safetensors, <build>/configs/sd15/*.json and the demo LoRAs of
<build>/loras/ (all six trained by `lora_core train`: tools/train_demo_model.py --loras, recipes in
lora_core/demo/loras.py) into the asset folder, writes each LoRA's A1111 sidecar (<name>.json:
activation text, preferred weight, description labelled as demo) and a preview made by the demo
model itself, and (re)writes manifest.json (seed, steps, sha256 of every file, training facts; with
--measure also the held-out quality rate, timings, and every LoRA alone and stacked with each other
one on the example prompts: lora_core/demo/effects.py).
--screenshots DIR saves the README strip (no LoRA / style / concept / LoCon, same seed).
The new folder is assembled beside the old one and swapped in at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_core.demo import check as demo_check  # noqa: E402  (no torch at import)
from lora_core.app.demo_pack import ASSETS_DIR, MANIFEST_FORMAT, MANIFEST_NAME, sha256_of  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402  (no torch at import)

logger = logging.getLogger("install_demo_assets")

CHECKPOINT = "lora_core-demo.safetensors"
BUILD_MANIFEST = "lora_core-demo.json"
MAX_CHECKPOINT_BYTES = 30 * 1024 * 1024
PREVIEW_SEED = 7
STRIP_SEED = 7
STRIP_SCALE = 4  # 64 px pictures upscaled (nearest) so the README shows the pixels


class InstallError(Exception):
    pass


def _sidecar(recipe, example: str) -> dict:
    return {
        "description": f"Demo LoRA for lora_core's built-in demo model ({recipe.dataset.description}). "
                       f"Example: {example}",
        "activation text": recipe.activation_text,
        "preferred weight": recipe.preferred_weight,
        "sd version": "SD1",
        "notes": "Demo only: trained by `python -m lora_core train` on the tiny lora_core demo model; "
                 "it has no meaningful effect on real checkpoints.",
    }


def copy_build(build: Path, dest: Path) -> dict:
    """Copy the files into dest (a fresh folder) and return the manifest without measurements."""
    from lora_core.demo.loras import RECIPES, example_prompt

    built = json.loads((build / BUILD_MANIFEST).read_text())
    ckpt = build / built.get("file", CHECKPOINT)
    if not ckpt.is_file():
        raise InstallError(f"{ckpt}: not found (is the build finished?)")
    sha = sha256_of(ckpt)
    if sha != built.get("sha256"):
        raise InstallError(f"{ckpt}: sha256 {sha[:12]} differs from its build manifest's {str(built.get('sha256'))[:12]}")
    if ckpt.stat().st_size >= MAX_CHECKPOINT_BYTES:
        raise InstallError(f"{ckpt}: {ckpt.stat().st_size} bytes, over the 30 MB budget")
    shutil.copyfile(ckpt, dest / CHECKPOINT)
    for cfg in sorted((build / "configs" / "sd15").rglob("*.json")):
        target = dest / "configs" / cfg.relative_to(build / "configs")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg, target)
    (dest / "loras").mkdir()
    loras = []
    for recipe in RECIPES:
        src = build / "loras" / f"{recipe.name}.safetensors"
        if not src.is_file():
            raise InstallError(f"{src}: demo LoRA not found (was the build run with --loras?)")
        example = example_prompt(recipe)
        shutil.copyfile(src, dest / "loras" / src.name)
        (dest / "loras" / f"{recipe.name}.json").write_text(json.dumps(_sidecar(recipe, example), indent=2) + "\n")
        loras.append({
            "name": recipe.name, "kind": recipe.kind, "file": f"loras/{src.name}", "sha256": sha256_of(src),
            "bytes": src.stat().st_size, "activation_text": recipe.activation_text,
            "preferred_weight": recipe.preferred_weight, "sidecar": f"loras/{recipe.name}.json",
            "preview": None, "example_prompt": example,
            "algorithm": recipe.targets, "rank": recipe.rank, "steps": _lora_steps(src),
        })
    training = {k: v for k, v in built.items() if k not in ("file", "sha256", "bytes", "configs")}
    return {
        "format": MANIFEST_FORMAT,
        "name": built.get("name", "lora_core-demo"),
        "label": "lora_core demo model (tiny, trained on synthetic coloured shapes; not a real SD model)",
        "checkpoint": {"file": CHECKPOINT, "sha256": sha, "bytes": (dest / CHECKPOINT).stat().st_size},
        "configs": "configs",
        "default_size": int(built.get("arch", {}).get("size", 64)),
        "seed": built.get("seed"),
        "vae_steps": built.get("vae_steps"),
        "unet_steps": built.get("unet_steps"),
        "loras": loras,
        "training": training,
    }


def _lora_steps(path: Path):
    from lora_core.library import read_header

    _, meta, _ = read_header(path)
    try:
        return int(meta.get("ss_steps", ""))
    except ValueError:
        return None


def _write_manifest(dest: Path, manifest: dict) -> None:
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _load(dest: Path, data_dir: Path):
    from lora_core.app import demo
    from lora_core.app.demo_pack import load_verified_pack
    from lora_core.engine import Engine

    pack = load_verified_pack(dest)
    handle = demo.load_demo_handle(data_dir, assets=dest)
    if not demo.is_trained_demo(handle, pack):
        raise InstallError(f"the installed checkpoint did not load as the trained demo model: {handle.notes}")
    return pack, handle, Engine(handle.binding)


def _with_lora(handle, engine, path: Path | None, weight: float, prompt: str, seed: int):
    engine.apply([ApplyRequest(str(path), weight, weight, None, None)] if path else [])
    try:
        return demo_check.generate(handle, prompt, seed)
    finally:
        engine.apply([])


def write_previews(dest: Path, manifest: dict, handle, engine) -> None:
    for item in manifest["loras"]:
        image = _with_lora(handle, engine, dest / item["file"], item["preferred_weight"], item["example_prompt"],
                           PREVIEW_SEED)
        rel = f"loras/{item['name']}.preview.png"
        image.save(dest / rel, format="PNG")
        item["preview"] = rel
    engine.restore()


def measure(dest: Path, manifest: dict, handle, engine) -> dict:
    """Held-out quality of the base model and each LoRA's effect, on the measurement settings."""
    import time

    quality = demo_check.held_out_quality(handle)
    warm = demo_check.params("a small blue square on a yellow background, on the left", 3)
    handle.generate(warm)
    t = time.perf_counter()
    for _ in range(3):
        handle.generate(warm)
    per_image = (time.perf_counter() - t) / 3
    effects = measure_effects(dest, manifest, handle, engine)
    stacking = measure_stacking(dest, manifest, handle, engine)
    engine.restore()
    return {
        "stacking": stacking,
        "held_out": {k: v for k, v in quality.items() if k != "samples"},
        "held_out_failures": [s for s in quality["samples"] if not s["passed"]],
        "generation_s_per_image": per_image,
        "generation_settings": {"size": demo_check.SIZE, "steps": demo_check.STEPS, "sampler": demo_check.SAMPLER,
                                "cfg": demo_check.CFG, "threads": handle.num_threads},
        "lora_effects": effects,
    }


def measure_effects(dest: Path, manifest: dict, handle, engine, names=None) -> dict:
    """Stripe score, checker score and shape of the README example (8 seeds) without / with each
    style, concept and LoCon LoRA (names: only these)."""
    effects = {}
    for item in manifest["loras"]:
        if item["kind"] not in demo_check.EXAMPLES or (names is not None and item["name"] not in names):
            continue
        ex = demo_check.EXAMPLES[item["kind"]]
        rows = []
        for seed in range(20, 28):
            base = _with_lora(handle, engine, None, 0, ex.prompt, seed)  # same words, no LoRA
            with_lora = _with_lora(handle, engine, dest / item["file"], item["preferred_weight"], ex.prompt, seed)
            rows.append({
                "stripes": (demo_check.stripes(base), demo_check.stripes(with_lora)),
                "checker": (demo_check.checker(base), demo_check.checker(with_lora)),
                "shape": (demo_check.object_shape(base, "red", "white"),
                          demo_check.object_shape(with_lora, "red", "white")),
            })
        effects[item["name"]] = rows
    engine.restore()
    return effects


STACKING_SEEDS = (1, 2)
ALONE_SEEDS = (1, 2, 3, 4)  # as tests/test_demo_quality.py: 16 samples per LoRA alone


def measure_stacking(dest: Path, manifest: dict, handle, engine, seeds=STACKING_SEEDS,
                     alone_seeds=ALONE_SEEDS) -> dict:
    """Every demo LoRA alone (over alone_seeds) and stacked with each other one (over seeds) at the
    preferred weights, on the example prompts (lora_core.demo.effects): does its effect show, is
    the object recognisable."""
    from lora_core.demo import effects as demo_effects

    generate = demo_check.engine_generator(engine, handle,
                                           {item["name"]: dest / item["file"] for item in manifest["loras"]})

    infos = demo_effects.infos_from_manifest(manifest)
    combos = [demo_effects.measure_combo(generate, combo, seeds=alone_seeds if len(combo) == 1 else seeds)
              for combo in demo_effects.all_combos(infos)]
    for combo in combos:
        combo["samples"] = [{k: s[k] for k in ("prompt", "seed", "effects", "checks")} for s in combo["samples"]]
    return {"prompts": list(demo_effects.EXAMPLE_PROMPTS), "seeds": list(seeds), "alone_seeds": list(alone_seeds),
            "baseline": demo_effects.baseline(generate, seeds=alone_seeds), "combos": combos,
            "table": demo_effects.table(combos)}


def write_strip(out_dir: Path, manifest: dict, dest: Path, handle, engine) -> list[Path]:
    """docs/screenshots/demo_{base,style,concept,locon}.png and demo_strip.png (same seed)."""
    from PIL import Image, ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    by_kind = {item["kind"]: item for item in manifest["loras"]}
    tiles = [("no LoRA", _with_lora(handle, engine, None, 0, demo_check.EXAMPLES["style"].base_prompt, STRIP_SEED),
              "base")]
    for kind, label in (("style", "style (stripes)"), ("concept", "concept (lcshape)"), ("locon", "LoCon (checker)")):
        item = by_kind[kind]
        tiles.append((label, _with_lora(handle, engine, dest / item["file"], item["preferred_weight"],
                                        demo_check.EXAMPLES[kind].prompt, STRIP_SEED), kind))
    engine.restore()
    written = []
    side = demo_check.SIZE * STRIP_SCALE
    strip = Image.new("RGB", (side * len(tiles) + 8 * (len(tiles) - 1), side + 18), "white")
    draw = ImageDraw.Draw(strip)
    for i, (label, image, slug) in enumerate(tiles):
        big = image.resize((side, side), Image.Resampling.NEAREST)
        path = out_dir / f"demo_{slug}.png"
        big.save(path)
        written.append(path)
        x = i * (side + 8)
        strip.paste(big, (x, 0))
        draw.text((x + 4, side + 3), label, fill="black")
    strip.save(out_dir / "demo_strip.png")
    written.append(out_dir / "demo_strip.png")
    return written


def _kept_quality(dest: Path, manifest: dict) -> dict | None:
    """The measured quality of the installed manifest when its checkpoint is the one being installed
    (held-out rates and timings depend on the checkpoint only), with the LoRA measurements of LoRA
    files that are unchanged; None when there is nothing to keep."""
    try:
        old = json.loads((dest / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if old.get("checkpoint", {}).get("sha256") != manifest["checkpoint"]["sha256"] or "quality" not in old:
        return None
    quality = dict(old["quality"])
    old_sha = {lo.get("name"): lo.get("sha256") for lo in old.get("loras", [])}
    same = {lo["name"] for lo in manifest["loras"] if old_sha.get(lo["name"]) == lo["sha256"]}
    quality["lora_effects"] = {k: v for k, v in quality.get("lora_effects", {}).items() if k in same}
    quality.pop("stacking", None)
    return quality


def install(build, dest=ASSETS_DIR, data_dir=None, previews=True, do_measure=False, screenshots=None,
            keep_quality=False, measure_loras=False) -> dict:
    """keep_quality: carry the installed manifest's measurements over when the checkpoint is the same
    (a LoRA-only update); measure_loras: measure only the LoRAs alone and stacked (measure_stacking)."""
    build, dest = Path(build), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo_assets.", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the package folder must be readable by all
    try:
        manifest = copy_build(build, staging)
        kept = _kept_quality(dest, manifest) if keep_quality and not do_measure else None
        _write_manifest(staging, manifest)
        data = Path(data_dir) if data_dir else staging.parent / (staging.name + ".cache")
        _, handle, engine = _load(staging, data)
        if previews:
            write_previews(staging, manifest, handle, engine)
        if do_measure:
            manifest["quality"] = measure(staging, manifest, handle, engine)
        elif kept is not None:
            manifest["quality"] = kept
            if measure_loras:
                # the README-example effects of the LoRAs with none kept (their files changed),
                # then every LoRA alone and stacked
                missing = {lo["name"] for lo in manifest["loras"]} - set(kept.get("lora_effects", {}))
                kept.setdefault("lora_effects", {}).update(
                    measure_effects(staging, manifest, handle, engine, names=missing))
                manifest["quality"]["stacking"] = measure_stacking(staging, manifest, handle, engine)
                engine.restore()
        if screenshots:
            manifest["screenshots"] = [str(p) for p in write_strip(Path(screenshots), manifest, staging, handle,
                                                                    engine)]
        _write_manifest(staging, manifest)
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        cache = staging.parent / (staging.name + ".cache")
        if not data_dir and cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build", help="output folder of tools/train_demo_model.py --loras")
    p.add_argument("--dest", default=str(ASSETS_DIR), help=f"asset folder (default {ASSETS_DIR})")
    p.add_argument("--data-dir", default=None, help="tokenizer/hash cache folder (default: a temporary one)")
    p.add_argument("--no-previews", action="store_true", help="do not render the LoRA previews")
    p.add_argument("--measure", action="store_true", help="measure held-out quality, timing and LoRA effects")
    p.add_argument("--keep-quality", action="store_true",
                   help="without --measure: keep the installed manifest's measurements when the checkpoint is "
                        "the same (a LoRA-only update)")
    p.add_argument("--measure-loras", action="store_true",
                   help="with --keep-quality: measure the LoRAs alone and stacked on the example prompts "
                        "(and the README-example effects of the LoRA files that changed)")
    p.add_argument("--screenshots", default=None, help="folder for the README before/after strip")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = install(args.build, args.dest, args.data_dir, previews=not args.no_previews,
                           do_measure=args.measure, screenshots=args.screenshots,
                           keep_quality=args.keep_quality, measure_loras=args.measure_loras)
    except (InstallError, OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    summary = {"dest": args.dest, "sha256": manifest["checkpoint"]["sha256"],
               "bytes": manifest["checkpoint"]["bytes"], "loras": [x["name"] for x in manifest["loras"]]}
    if "quality" in manifest:
        q = manifest["quality"]
        summary["held_out_pass_rate"] = q["held_out"]["pass_rate"]
        summary["held_out_rates"] = q["held_out"]["rates"]
        summary["generation_s_per_image"] = round(q["generation_s_per_image"], 3)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
