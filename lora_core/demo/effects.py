"""What each demo LoRA does to the example prompts, alone and stacked with each other one, read
back from pixels: does its effect show, and is the prompt's object still recognisable?

Used by tools/install_demo_assets.py (--measure: the table in manifest.json and docs/DEMO_MODEL.md)
and by tests/test_demo_quality.py. numpy + Pillow only here; the caller brings a `generate(prompt,
seed, loras)` function (loras: [(name, weight)]), e.g. the app's prompt tags or an Engine.

* effect, alone: the LoRA's image against the same prompt (trigger words included) without it;
  stacked with B: the A+B image against B alone, same prompt (both trigger words). So two casts
  that pull opposite ways each still have to show on top of the other.
  style: stripe score of the background up by STRIPE_EFFECT; locon: texture score inside the
  object up by CHECKER_EFFECT; concept: the object is a cross; colour: the picture's mean colour
  moved by COLOUR_EFFECT levels (of 255) in the LoRA's direction.
* recognisable: an object stands out from the (possibly cast, striped or repainted) background,
  with the prompt's shape (a cross with the concept LoRA), size and position. Its colour name is
  counted apart (`colour`): a colour LoRA is meant to move colours (demo_green paints the object
  green), and the demo palette's blue and purple, or red, orange and yellow, lie close together.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from lora_core.demo.data import Scene
from lora_core.demo.data.measure import (_NAMES, as_array, border_mask, colour_names, components, erode,
                                         position_of, shape_of, size_of, stripe_score, texture_score)
from lora_core.demo.data.scenes import COLOURS, stripe_colour

# Prompts the demo model draws reliably (docs/DEMO_MODEL.md, "LoRAs alone and stacked"), covering
# the four shapes, three colours, two backgrounds and two positions; the README's examples and the tests use them.
EXAMPLE_SCENES = (
    Scene("circle", "red", "large", "center", "white"),
    Scene("star", "blue", "large", "center", "white"),
    Scene("triangle", "black", "large", "center", "yellow"),
    Scene("square", "red", "large", "top", "white"),
)
EXAMPLE_PROMPTS = tuple(s.caption() for s in EXAMPLE_SCENES)

STRIPE_EFFECT = 4.0  # stripe score gain (drawn stripes ~26, plain backgrounds < 2)
CHECKER_EFFECT = 3.0  # texture score gain inside the object (plain generated fills ~7, checks 14+)
COLOUR_EFFECT = 10.0  # mean colour change along the cast's direction, in levels of 255
# a repainted backdrop: frame pixels within this distance of a palette colour, covering this share
BACKDROP_TOLERANCE = 60.0
BACKDROP_SHARE = 0.25
_PALETTE_ARRAY = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)

# the direction each colour cast moves (R, G, B), as a unit vector in 0..255 space
CAST_DIRECTIONS = {
    "demo_warm": (1.0, 0.0, -1.0),
    "demo_cool": (-1.0, 0.0, 1.0),
    "demo_green": (-0.5, 1.0, -0.5),
}


@dataclass(frozen=True)
class DemoLoraInfo:
    """What measuring needs to know of one demo LoRA (from manifest.json or the recipes)."""
    name: str
    kind: str  # style | concept | locon | colour
    trigger: str  # "" for none
    weight: float  # preferred weight


def infos_from_manifest(manifest: dict) -> list[DemoLoraInfo]:
    return [DemoLoraInfo(item["name"], item["kind"], item.get("activation_text") or "",
                         float(item.get("preferred_weight", 1.0))) for item in manifest["loras"]]


# ------------------------------------------------------------------------------- prompts
def scene_for(scene: Scene, loras) -> Scene:
    """The scene as asked with these LoRAs: the concept LoRA's trigger word names the shape."""
    if any(lo.kind == "concept" for lo in loras):
        scene = replace(scene, shape=next(lo.trigger for lo in loras if lo.kind == "concept"))
    return scene


def prompt_for(scene: Scene, loras) -> str:
    """The prompt a user gets by clicking these LoRAs' cards after the scene: each trigger word at
    the end (the concept LoRA's replaces the shape word instead)."""
    text = scene_for(scene, loras).caption()
    for lo in loras:
        if lo.trigger and lo.kind != "concept":
            text += f", {lo.trigger}"
    return text


# --------------------------------------------------------------------------- pixel reading
def dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        p = np.pad(out, 1, constant_values=False)
        out = out | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def background_references(arr: np.ndarray, scene: Scene, striped: bool) -> list[np.ndarray]:
    """The colours the background may take: its named colour (and the stripes' shade) and the same
    moved by whatever cast the picture's frame shows."""
    refs = [np.asarray(COLOURS[scene.background], dtype=np.float64)]
    if striped:
        refs.append(np.asarray(stripe_colour(scene.background, scene.colour), dtype=np.float64))
    frame = arr[border_mask(arr.shape)]
    nearest = np.argmin(np.stack([((frame - r) ** 2).sum(-1) for r in refs]), axis=0)
    moved = []
    for i, r in enumerate(refs):
        mine = frame[nearest == i]
        if len(mine) >= 8:
            median = np.median(mine, axis=0)
            if np.sqrt(((median - r) ** 2).sum()) < 120:
                moved.append(median)
    # A LoRA may repaint the whole backdrop in another palette colour (session 6's demo_green
    # painted it green: the demo VAE draws palette colours, not tints): a palette colour covering a
    # quarter of the frame is background too. Objects sit inside the frame, so it is never theirs.
    names = colour_names(frame)
    close = np.sqrt(((frame - _PALETTE_ARRAY[names]) ** 2).sum(-1)) < BACKDROP_TOLERANCE
    for k in np.unique(names[close]):
        mine = frame[close & (names == k)]
        if len(mine) >= BACKDROP_SHARE * len(frame):
            moved.append(np.median(mine, axis=0))
    return refs + moved


def find_object(image, scene: Scene, striped: bool = False, tol: float = 80.0):
    """(biggest object mask, union of all objects) or (None, None): pixels far from every
    background reference colour, in connected regions of 12+ pixels."""
    arr = as_array(image)
    refs = background_references(arr, scene, striped)
    far = np.ones(arr.shape[:2], dtype=bool)
    for r in refs:
        far &= np.sqrt(((arr - r) ** 2).sum(-1)) > tol
    parts = components(far)
    if not parts:
        return None, None
    union = np.zeros_like(far)
    for p in parts:
        union |= p
    return max(parts, key=lambda p: p.sum()), union


def object_checks(image, scene: Scene, striped: bool = False, checkered: bool = False) -> dict[str, bool]:
    """shape / size / position of the biggest object, its colour name, and `recognisable` (an object
    with the asked shape, size and position). scene.shape "lcshape" means the cross."""
    arr = as_array(image)
    biggest, union = find_object(arr, scene, striped)
    if biggest is None:
        return {"found": False, "shape": False, "size": False, "position": False, "colour": False,
                "recognisable": False}
    want = "cross" if scene.shape == "lcshape" else scene.shape
    names = colour_names(arr[union])
    share = float((names == _NAMES.index(scene.colour)).mean())
    counts = np.bincount(names, minlength=len(_NAMES))
    out = {
        "found": True,
        "shape": shape_of(biggest) == want,
        "size": size_of(biggest) == scene.size,
        "position": scene.count != 1 or position_of(biggest) == scene.position,
        # a checkered fill is half a shade of the colour
        "colour": bool(counts.argmax() == _NAMES.index(scene.colour) or (checkered and share >= 0.3)),
    }
    out["recognisable"] = out["shape"] and out["size"] and out["position"]
    return out


def effect_value(kind: str, name: str, before, after, scene: Scene, striped: bool) -> float:
    """How much `after` shows the LoRA's effect over `before` (same prompt and seed): see the module
    docstring; compare with `effect_threshold`."""
    a, b = as_array(before), as_array(after)
    if kind == "concept":
        biggest, _ = find_object(b, scene, striped)
        return float(biggest is not None and shape_of(biggest) == "cross")
    if kind == "colour":
        direction = np.asarray(CAST_DIRECTIONS[name], dtype=np.float64)
        direction /= np.linalg.norm(direction)
        return float((b.reshape(-1, 3).mean(0) - a.reshape(-1, 3).mean(0)) @ direction)
    _, obj_a = find_object(a, scene, striped)
    _, obj_b = find_object(b, scene, striped)
    if kind == "style":
        objects = np.zeros(a.shape[:2], dtype=bool)
        for o in (obj_a, obj_b):
            if o is not None:
                objects |= o
        objects = dilate(objects, 2)
        return stripe_score(b, objects) - stripe_score(a, objects)
    if kind == "locon":
        inside = [texture_score(x, o) if o is not None and erode(o, 2).sum() >= 8 else 0.0
                  for x, o in ((a, obj_a), (b, obj_b))]
        return inside[1] - inside[0]
    raise ValueError(f"unknown demo LoRA kind {kind!r}")


def effect_threshold(kind: str) -> float:
    return {"style": STRIPE_EFFECT, "locon": CHECKER_EFFECT, "concept": 0.5, "colour": COLOUR_EFFECT}[kind]


# ----------------------------------------------------------------------------- measuring
def measure_combo(generate, combo, scenes=EXAMPLE_SCENES, seeds=(1, 2, 3, 4)) -> dict:
    """One LoRA alone (combo of 1) or two stacked, at their preferred weights, over scenes x seeds.

    Returns {"loras": names, "samples": [{prompt, seed, effects: {name: value}, shows: {name: bool},
    checks: {...}}], "effect_rate": {name: share}, "recognisable_rate", "colour_rate"}."""
    combo = list(combo)
    striped = any(lo.kind == "style" for lo in combo)
    checkered = any(lo.kind == "locon" for lo in combo)
    samples = []
    for scene in scenes:
        asked = scene_for(scene, combo)
        prompt = prompt_for(scene, combo)
        for seed in seeds:
            full = generate(prompt, seed, [(lo.name, lo.weight) for lo in combo])
            effects = {}
            for lo in combo:
                rest = [(o.name, o.weight) for o in combo if o is not lo]
                before = generate(prompt, seed, rest)
                effects[lo.name] = effect_value(lo.kind, lo.name, before, full, asked, striped)
            samples.append({
                "prompt": prompt, "seed": seed, "effects": effects,
                "shows": {lo.name: effects[lo.name] >= effect_threshold(lo.kind) for lo in combo},
                "checks": object_checks(full, asked, striped, checkered),
            })
    n = len(samples)
    return {
        "loras": [lo.name for lo in combo],
        "weights": [lo.weight for lo in combo],
        "samples": samples,
        "effect_rate": {lo.name: sum(s["shows"][lo.name] for s in samples) / n for lo in combo},
        "effect_mean": {lo.name: float(np.mean([s["effects"][lo.name] for s in samples])) for lo in combo},
        "recognisable_rate": sum(s["checks"]["recognisable"] for s in samples) / n,
        "colour_rate": sum(s["checks"]["colour"] for s in samples) / n,
    }


def baseline(generate, scenes=EXAMPLE_SCENES, seeds=(1, 2, 3, 4)) -> dict:
    """The plain prompts without any LoRA: how often the object is recognisable to begin with."""
    checks = [object_checks(generate(s.caption(), seed, []), s) for s in scenes for seed in seeds]
    return {"recognisable_rate": sum(c["recognisable"] for c in checks) / len(checks),
            "colour_rate": sum(c["colour"] for c in checks) / len(checks)}


def all_combos(infos):
    """Each LoRA alone, then every pair."""
    infos = list(infos)
    return [(lo,) for lo in infos] + list(combinations(infos, 2))


def table(results) -> str:
    """A markdown table of measure_combo results."""
    lines = ["| LoRAs (weight) | effect shows | mean effect | recognisable | colour name |",
             "|---|---|---|---|---|"]
    for r in results:
        names = " + ".join(f"`{n}`:{w:g}" for n, w in zip(r["loras"], r["weights"]))
        shows = ", ".join(f"{int(round(v * 100))}%" for v in r["effect_rate"].values())
        means = ", ".join(f"{v:.1f}" for v in r["effect_mean"].values())
        lines.append(f"| {names} | {shows} | {means} | {int(round(r['recognisable_rate'] * 100))}% | "
                     f"{int(round(r['colour_rate'] * 100))}% |")
    return "\n".join(lines)
