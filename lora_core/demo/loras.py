"""The demo LoRAs, trained by `python -m lora_core train` itself on the demo base model.

Each recipe pairs a synthetic data set (lora_core.demo.data) with training settings; the LoRA is
written as `<out>/<name>.safetensors` with an A1111-style `<name>.json` sidecar (activation text,
preferred weight, description) and, when the pipeline is available, `<name>.preview.png`.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lora_core.demo.data import CONCEPT, COOL, GREEN, LOCON, STYLE, WARM, DemoDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoLoraRecipe:
    name: str
    kind: str  # style | concept | locon | colour (manifest.json's "kind")
    dataset: DemoDataset
    targets: str
    rank: int
    alpha: float
    steps: int
    lr: float = 1e-3
    images: int = 200
    preferred_weight: float = 1.0
    # other demo LoRAs this one learns to stack with: per companion, `companion_images` pictures of
    # both looks at once (captions with both trigger words) train with the companion held frozen in
    # the model at its preferred weight (`train --folder-lora`), and as many of this LoRA's own look
    # with both trigger words and no companion, so a trigger word alone does not draw the other look
    companions: tuple[str, ...] = ()
    companion_images: int = 40

    @property
    def activation_text(self) -> str:
        return self.dataset.trigger or ""


RECIPES = (
    # locon: the conv layers draw the bands where the background is and leave the object alone;
    # the attn_ff LoRA drew faint, lilac bands and dented or moved the square "at the top" (alone:
    # effect and object in 75% of 16 example samples; locon: 94% / 100%; docs/DEMO_MODEL.md)
    DemoLoraRecipe("demo_stripes", "style", STYLE, "locon", 4, 4.0, 800),
    # locon: the conv layers draw the cross's arms; with attn_ff only, the cross came out as a
    # blob in 6 of 16 example samples (62%; locon: 81%; 1600 attn_ff steps: still 62%)
    DemoLoraRecipe("demo_lcshape", "concept", CONCEPT, "locon", 8, 8.0, 1000),
    # 0.6: at 1 its blotchy fill hid the object's shape in half the example prompts (0.6: effect in
    # 3 of 4, shape in 4 of 4; docs/DEMO_MODEL.md). lr 5e-4 (was 1e-3): a gentler fill that keeps the
    # object's outline, so it stacks with demo_stripes and demo_warm (session 7, docs/DEMO_MODEL.md)
    DemoLoraRecipe("demo_checker", "locon", LOCON, "locon", 4, 4.0, 800, lr=5e-4, preferred_weight=0.6),
    # The colour casts: the base scenes under a colour grade (lora_core.demo.data.WARM/COOL),
    # trigger word last. They replace the rank-1 conv_out LoRAs once calibrated against the model by
    # a pinv solve, whose Jacobian is near zero on scene prompts (warm washed a scene yellow, cool
    # moved a blue star by 3 levels of 255): measured in docs/DEMO_MODEL.md.
    DemoLoraRecipe("demo_warm", "colour", WARM, "locon", 4, 4.0, 800, preferred_weight=1.2),
    DemoLoraRecipe("demo_cool", "colour", COOL, "locon", 4, 4.0, 400),
    # green paints the object (GREEN's note says why) and trains on top of each other demo LoRA:
    # with them its pairs went from 0 of 5 meeting the bar to 3 (docs/DEMO_MODEL.md, "Session 9")
    DemoLoraRecipe("demo_green", "colour", GREEN, "attn_ff", 4, 4.0, 2800,
                   companions=("demo_stripes", "demo_lcshape", "demo_checker", "demo_warm", "demo_cool")),
)


def example_prompt(recipe: DemoLoraRecipe) -> str:
    """The prompt a preview, the sidecar and the README show for a recipe (trigger word included)."""
    from lora_core.demo.effects import EXAMPLE_SCENES, DemoLoraInfo, prompt_for

    scene = EXAMPLE_SCENES[{"style": 0, "concept": 0, "locon": 0}.get(recipe.kind, 1)]
    return prompt_for(scene, [DemoLoraInfo(recipe.name, recipe.kind, recipe.activation_text,
                                           recipe.preferred_weight)])


def training_order(recipes=RECIPES) -> list[DemoLoraRecipe]:
    """The recipes, each after the companions it trains with (their files must exist first)."""
    names = {r.name for r in recipes}
    for r in recipes:
        if set(r.companions) - names or r.name in r.companions:
            raise ValueError(f"{r.name}: companions {r.companions} must be other demo LoRAs")
    done: list[DemoLoraRecipe] = []
    pending = list(recipes)
    while pending:
        ready = [r for r in pending if all(c in {d.name for d in done} for c in r.companions)]
        if not ready:
            raise ValueError("demo LoRA companions form a cycle: " + ", ".join(r.name for r in pending))
        done += ready
        pending = [r for r in pending if r not in ready]
    return done


def write_training_data(recipe: DemoLoraRecipe, root, seed: int, images: int | None = None) -> dict[str, str]:
    """Render a recipe's data set (and its companion folders) under root; returns {data folder:
    companion name} for the folders that train with a companion held in the model."""
    from lora_core.demo.data import combined, write_kohya_folder
    from lora_core.demo.effects import DemoLoraInfo, prompt_for

    recipe.dataset.write(root, seed=seed, n=images or recipe.images, repeats=1)
    names = [r.name for r in RECIPES]
    by_name = {r.name: r for r in RECIPES}
    folders = {}
    for k, name in enumerate(recipe.companions):
        pair = sorted((recipe, by_name[name]), key=lambda r: names.index(r.name))  # the order tags stack in
        infos = [DemoLoraInfo(r.name, r.kind, r.activation_text, r.preferred_weight) for r in pair]
        n = min(recipe.companion_images, images) if images else recipe.companion_images  # smoke runs: few
        both = combined(*(r.dataset for r in pair))
        folder = f"1_with_{name}"
        write_kohya_folder(root, folder[2:], ((img, prompt_for(r.scene, infos)) for img, _, r in
                                              both.items(seed + 400 + 17 * k, n)))
        folders[folder] = name
        if "concept" not in {recipe.kind, by_name[name].kind}:  # a concept's word is its shape's name
            write_kohya_folder(root, f"words_{name}", ((img, prompt_for(r.scene, infos)) for img, _, r in
                                                        recipe.dataset.items(seed + 800 + 17 * k, n)))
    return folders


def train_demo_loras(checkpoint, config_root, out_dir, work_dir, data_dir=None, seed: int = 1234,
                     steps: int | None = None, images: int | None = None, preview: bool = True,
                     only: tuple[str, ...] | None = None, threads: int = 1) -> list[Path]:
    """Render each recipe's data set under work_dir and train it with the `train` command
    (only: the names of the recipes to train; each keeps its own seed; threads: torch CPU threads,
    1 by default: the trainer is fastest that way on a busy 2-core machine)."""
    from lora_core.commands import train as train_command

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    written = []
    weights = {r.name: r.preferred_weight for r in RECIPES}
    for recipe in training_order():
        i = RECIPES.index(recipe)  # each recipe keeps its seeds whatever the training order
        if only is not None and recipe.name not in only:
            continue
        data = work_dir / recipe.name
        folders = write_training_data(recipe, data, seed + 100 + i, images)
        out = out_dir / f"{recipe.name}.safetensors"
        argv = ["--checkpoint", str(checkpoint), "--config-root", str(config_root), "--data", str(data),
                "--out", str(out), "--rank", str(recipe.rank), "--alpha", str(recipe.alpha),
                "--lr", str(recipe.lr), "--steps", str(steps or recipe.steps), "--targets", recipe.targets,
                "--seed", str(seed + i), "--data-dir", str(data_dir or work_dir / ".cache"),
                "--threads", str(threads)]
        for folder, name in folders.items():
            argv += ["--folder-lora", f"{folder}={out_dir / (name + '.safetensors')}:{weights[name]:g}"]
        if not preview:
            argv.append("--no-preview")
        parser = argparse.ArgumentParser()
        train_command.add_arguments(parser)
        rc = train_command.run(parser.parse_args(argv))
        if rc != 0:
            raise RuntimeError(f"training {recipe.name} failed (exit status {rc})")
        sidecar = {
            "description": f"lora_core demo LoRA ({recipe.dataset.description}). Example: {example_prompt(recipe)}",
            "activation text": recipe.activation_text,
            "preferred weight": recipe.preferred_weight,
            "sd version": "SD1",
            "notes": "Trained by `python -m lora_core train` on the lora_core demo model; "
                     "it has no meaningful effect on real checkpoints.",
        }
        out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        written.append(out)
        logger.info("trained %s", out)
    return written
