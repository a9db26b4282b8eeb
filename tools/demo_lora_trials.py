#!/usr/bin/env python
"""Try a variant of one demo LoRA recipe and measure it alone and stacked, before changing the recipe.

    python tools/demo_lora_trials.py train demo_stripes build/trials/st_locon.safetensors --targets locon
    python tools/demo_lora_trials.py measure --set demo_stripes=build/trials/st_locon.safetensors \\
        --alone demo_stripes --pairs demo_stripes --seeds 1,2

`train` renders the recipe's own data set with its own seeds, and its companion folders (as
lora_core/demo/loras.py does), and trains it with `lora_core train` against the installed demo
checkpoint, with the recipe's settings except those given (`--with NAME[=PATH]`: train on top of
these demo LoRAs instead of the recipe's companions). `measure` runs
lora_core.demo.effects.measure_combo through Engine.apply, as tools/install_demo_assets.py does, with the installed LoRAs except those replaced by --set
(NAME=PATH, or NAME=PATH@WEIGHT for another weight than the preferred one). docs/DEMO_MODEL.md
("Session 7" to "Session 9") records what these found.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_core.app.demo_pack import ASSETS_DIR, MANIFEST_NAME  # noqa: E402  (no torch at import)

SEED = 1234  # tools/train_demo_model.py's default, which the committed LoRAs were trained with
BAR = 0.75  # tests/test_demo_quality.py's ALONE_MIN / STACKED_MIN


def train(args) -> int:
    from lora_core.commands import train as train_command
    from lora_core.demo.loras import RECIPES, write_training_data

    names = [r.name for r in RECIPES]
    if args.name not in names:
        print(f"error: no demo LoRA recipe {args.name!r} (one of {', '.join(names)})")
        return 2
    i = names.index(args.name)
    changes = {k: v for k, v in (("targets", args.targets), ("rank", args.rank), ("alpha", args.alpha),
                                 ("steps", args.steps), ("lr", args.lr), ("companion_images", args.companion_images))
               if v is not None}
    companion_files = {}
    if args.companions is not None:  # --with NAME[=PATH] (repeatable; --with none: no companions)
        for spec in args.companions:
            name, _, path = spec.partition("=")
            if name == "none":
                continue
            if name not in names or name == args.name or (path and not Path(path).is_file()):
                print(f"error: --with {spec}: want another demo LoRA's name, and an existing file if PATH is given")
                return 2
            companion_files[name] = Path(path) if path else None
        changes["companions"] = tuple(companion_files)
    recipe = replace(RECIPES[i], **changes)
    work = Path(tempfile.mkdtemp(prefix="demo_lora_trial."))
    data = work / "data"
    folders = write_training_data(recipe, data, SEED + 100 + i)  # as train_demo_loras
    manifest = json.loads((ASSETS_DIR / MANIFEST_NAME).read_text())
    installed = {item["name"]: (ASSETS_DIR / item["file"], item.get("preferred_weight", 1.0)) for item in manifest["loras"]}
    argv = ["--checkpoint", str(ASSETS_DIR / "lora_core-demo.safetensors"), "--config-root", str(ASSETS_DIR / "configs"),
            "--data", str(data), "--out", str(args.out), "--rank", str(recipe.rank), "--alpha", str(recipe.alpha),
            "--lr", str(recipe.lr), "--steps", str(recipe.steps), "--targets", recipe.targets,
            "--seed", str(SEED + i), "--data-dir", str(args.data_dir or work / ".cache"), "--threads", "1",
            "--no-preview"]
    for folder, name in folders.items():
        path = companion_files.get(name) or installed[name][0]
        argv += ["--folder-lora", f"{folder}={path}:{installed[name][1]:g}"]
    if args.te_lr is not None:
        argv += ["--te-lr", str(args.te_lr)]
    if args.no_train_te:
        argv.append("--no-train-te")
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    return train_command.run(parser.parse_args(argv))


def measure(args) -> int:
    import torch

    from lora_core.app import demo
    from lora_core.demo import check as demo_check
    from lora_core.demo import effects
    from lora_core.engine import Engine

    torch.set_num_threads(1)
    manifest = json.loads((ASSETS_DIR / MANIFEST_NAME).read_text())
    infos = {lo.name: lo for lo in effects.infos_from_manifest(manifest)}
    files = {item["name"]: ASSETS_DIR / item["file"] for item in manifest["loras"]}
    for spec in args.set:
        name, _, rest = spec.partition("=")
        path, _, weight = rest.partition("@")
        if name not in infos or not Path(path).is_file():
            print(f"error: --set {spec}: want NAME=PATH[@WEIGHT] with a demo LoRA name and an existing file")
            return 2
        files[name] = Path(path)
        if weight:
            infos[name] = replace(infos[name], weight=float(weight))
    handle = demo.load_demo_handle(Path(args.data_dir or tempfile.mkdtemp(prefix="demo_lora_trial.")), assets=ASSETS_DIR)
    generate = demo_check.engine_generator(Engine(handle.binding), handle, files)

    seeds = tuple(int(s) for s in args.seeds.split(","))
    alone_seeds = tuple(int(s) for s in args.alone_seeds.split(","))
    results = [effects.measure_combo(generate, [infos[n]], seeds=alone_seeds) for n in args.alone]
    names = list(infos)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if {a, b} & set(args.pairs):
                results.append(effects.measure_combo(generate, [infos[a], infos[b]], seeds=seeds))
    print(effects.table(results))
    for r in results:
        meets = min(r["effect_rate"].values()) >= BAR and r["recognisable_rate"] >= BAR
        print(f"{' + '.join(r['loras'])}: {'meets' if meets else 'short of'} the bar ({BAR:.0%} each effect and the object)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a variant of one recipe")
    t.add_argument("name")
    t.add_argument("out")
    t.add_argument("--targets", choices=("attn", "attn_ff", "locon"))
    t.add_argument("--rank", type=int)
    t.add_argument("--alpha", type=float)
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--te-lr", type=float)
    t.add_argument("--with", dest="companions", action="append", default=None, metavar="NAME[=PATH]",
                   help="train to stack with this demo LoRA (the installed file unless PATH; repeatable; "
                        "replaces the recipe's companions; --with none: no companions)")
    t.add_argument("--companion-images", type=int)
    t.add_argument("--no-train-te", action="store_true")
    t.add_argument("--data-dir", default=None, help="tokenizer cache folder")
    m = sub.add_parser("measure", help="measure LoRAs alone and stacked on the example prompts")
    m.add_argument("--set", action="append", default=[], metavar="NAME=PATH[@WEIGHT]")
    m.add_argument("--alone", nargs="*", default=[], metavar="NAME")
    m.add_argument("--pairs", nargs="*", default=[], metavar="NAME", help="every pair with one of these")
    m.add_argument("--seeds", default="1", help="pair seeds (the test: 1; the install tool: 1,2)")
    m.add_argument("--alone-seeds", default="1,2,3,4")
    m.add_argument("--data-dir", default=None, help="tokenizer cache folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return train(args) if args.command == "train" else measure(args)


if __name__ == "__main__":
    sys.exit(main())
