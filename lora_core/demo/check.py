"""Measure what the embedded demo model and its trained LoRAs draw, from pixels.

Used by tools/install_demo_assets.py (numbers written into the asset manifest, previews, README
strip) and by the quality tests. The checks themselves are lora_core.demo.data's pixel readers
(background/object colour, shape by fill ratio, stripe and texture scores).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

# generation settings every measurement uses: the demo's native size, the app's default sampler
SIZE = 64
STEPS = 20
CFG = 7.0
SAMPLER = "Euler a"

# the recipes' names (lora_core.demo.loras.RECIPES) -> what kind of demo each is
LORA_KINDS = {"demo_stripes": "style", "demo_lcshape": "concept", "demo_checker": "locon"}


@dataclass(frozen=True)
class Example:
    """One before/after example for a demo LoRA: the prompt with and without the LoRA."""
    kind: str
    lora: str
    prompt: str  # with the trigger word, no tag
    base_prompt: str  # the same picture asked of the base model


# The README strip and the previews: one scene, same seed, each LoRA's own wording.
SCENE_TEXT = "a large {colour} {shape} on a {background} background, in the center"
_RED_CIRCLE = SCENE_TEXT.format(colour="red", shape="circle", background="white")
# trigger words last, as the demo LoRAs were trained (and as a card click adds them)
EXAMPLES = {
    "style": Example("style", "demo_stripes", _RED_CIRCLE + ", lcstripes", _RED_CIRCLE),
    "concept": Example("concept", "demo_lcshape", SCENE_TEXT.format(colour="red", shape="lcshape",
                                                                    background="white"), _RED_CIRCLE),
    "locon": Example("locon", "demo_checker", _RED_CIRCLE + ", lccheck", _RED_CIRCLE),
}


def params(prompt: str, seed: int, steps: int = STEPS):
    from lora_core.app.pipeline import GenerationParams

    return GenerationParams(prompt=prompt, steps=steps, cfg=CFG, seed=seed, width=SIZE, height=SIZE,
                            sampler=SAMPLER)


def generate(handle, prompt: str, seed: int, steps: int = STEPS):
    return handle.generate(params(prompt, seed, steps))[0]


def engine_generator(engine, handle, files: dict):
    """generate(prompt, seed, [(name, weight)]) for lora_core.demo.effects: the LoRAs (files: name ->
    path) applied through `engine` at those weights, the model restored after each picture;
    pictures cached per (prompt, seed, loras), as the alone and stacked checks share many."""
    from lora_core.request import ApplyRequest

    cache = {}

    def gen(prompt, seed, loras):
        key = (prompt, seed, tuple(loras))
        if key not in cache:
            engine.apply([ApplyRequest(str(files[n]), w, w, None, None) for n, w in loras])
            try:
                cache[key] = generate(handle, prompt, seed)
            finally:
                engine.apply([])
        return cache[key]

    return gen


def held_out_quality(handle, n: int = 16, seed: int = 1000, steps: int = STEPS) -> dict:
    """Generate the n held-out prompts (shape/colour pairs no training set had) and read each
    picture back. A sample passes when both the requested colour and shape are there.
    Returns {"n", "pass_rate", "rates": {attribute: rate}, "samples": [...], "s_per_image"}."""
    from lora_core.demo.data import check_scene, held_out_scenes

    scenes = held_out_scenes(n)
    samples, totals = [], {}
    started = time.perf_counter()
    for i, scene in enumerate(scenes):
        image = generate(handle, scene.caption(), seed + i, steps)
        checks = check_scene(image, scene)
        for k, v in checks.items():
            totals[k] = totals.get(k, 0) + int(v)
        samples.append({"prompt": scene.caption(), "seed": seed + i, "checks": checks,
                        "passed": bool(checks.get("colour") and checks.get("shape"))})
    elapsed = time.perf_counter() - started
    return {
        "n": n, "steps": steps, "seed": seed, "sampler": SAMPLER, "cfg": CFG,
        "pass_rate": sum(s["passed"] for s in samples) / n,
        "rates": {k: v / n for k, v in sorted(totals.items())},
        "samples": samples,
        "s_per_image": elapsed / n,
    }


def object_shape(image, colour: str, background: str) -> str | None:
    """The shape of the largest object of `colour` on a plain `background` (None: no object)."""
    from lora_core.demo.data import components, object_mask, shape_of
    from lora_core.demo.data.measure import as_array, object_mask_by_colour

    arr = as_array(image)
    parts = components(object_mask(arr, background) & object_mask_by_colour(arr, colour))
    if not parts:
        return None
    return shape_of(max(parts, key=lambda p: p.sum()))


def stripes(image) -> float:
    """Stripe score of the image's border frame (high for striped backgrounds)."""
    from lora_core.demo.data import stripe_score

    return stripe_score(image)


def checker(image, colour: str = "red", background: str = "white") -> float:
    """Texture score inside the object (high for a checkered fill). The object is what differs from
    both the background and its stripe shade, so a striped background does not count as texture."""
    import numpy as np

    from lora_core.demo.data import components, object_mask, texture_score
    from lora_core.demo.data.measure import as_array
    from lora_core.demo.data.scenes import stripe_colour

    arr = as_array(image)
    mask = object_mask(arr, background) & object_mask(arr, stripe_colour(background, colour))
    parts = components(mask)
    if not parts:
        return 0.0
    union = np.zeros_like(mask)
    for part in parts:
        union |= part
    return texture_score(arr, union)
