"""The demo data sets: the base model's captioned scenes and the three demo LoRA data sets, plus
the held-out prompts that no training set contains. Each data set writes a kohya-style folder.

* base: plain scenes of circles, squares, triangles and stars (held-out combinations excluded).
* style "lcstripes": the same kind of scenes with a diagonally striped background.
* concept "lcshape": a new shape (a cross / plus sign) the base model never saw.
* LoCon "lccheck": objects with a checkered fill, a local texture that conv layers learn well.
* colours "lcwarm", "lccool": the base scenes with a colour grade over the whole picture
  (`grade`), for demo_warm / demo_cool; "lcmint": the base scenes with the object painted green
  (`recolour`), for demo_green.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .scenes import COLOURS, POSITIONS, SHAPES, SIZES, Rendered, Scene, object_centres, render, render_many

# (shape, colour) pairs kept out of every training set: prompts about them test generalisation
HELD_OUT_PAIRS = frozenset({("star", "green"), ("triangle", "purple"), ("circle", "orange"), ("square", "white")})


def is_held_out(scene: Scene) -> bool:
    return (scene.shape, scene.colour) in HELD_OUT_PAIRS


def held_out_scenes(n: int = 16, seed: int = 99) -> list[Scene]:
    """Scenes (hence prompts) the base model is never trained on, spread over all pairs."""
    rng = random.Random(seed)
    pairs = sorted(HELD_OUT_PAIRS)
    out = []
    for i in range(n):
        shape, colour = pairs[i % len(pairs)]
        background = rng.choice([c for c in COLOURS if c != colour])
        out.append(Scene(shape, colour, rng.choice(SIZES), rng.choice(POSITIONS), background))
    return out


def held_out_prompts(n: int = 16, seed: int = 99) -> list[str]:
    return [s.caption() for s in held_out_scenes(n, seed)]


@dataclass(frozen=True)
class DemoDataset:
    name: str  # also the kohya folder's concept name
    trigger: str | None  # word the captions end with (None for the base set)
    shapes: tuple[str, ...]
    style: str | None
    description: str
    # the concept set names its new shape by the trigger word ("a small red lcshape on ...")
    trigger_is_shape_name: bool = False
    # a colour grade over the whole picture: (R, G, B) levels (of 255) added to every pixel, clipped
    grade: tuple[float, float, float] | None = None
    # a palette colour painted over every background (captions keep the asked background): the
    # demo VAE draws its 8 palette colours but pulls tints back (docs/DEMO_MODEL.md), so session
    # 6's green LoRA painted the backdrop green rather than tinting the picture
    backdrop: str | None = None
    # a palette colour painted over every object (captions keep the asked colour)
    recolour: str | None = None

    def caption(self, scene: Scene) -> str:
        if self.trigger_is_shape_name:
            return replace(scene, shape=self.trigger).caption()
        return scene.caption(self.trigger)

    def items(self, seed: int, n: int, size: int = 64) -> Iterator[tuple]:
        """n (PIL image, caption, Rendered) triples, identical for the same arguments."""
        def exclude(s: Scene) -> bool:
            if is_held_out(s) or (self.backdrop and s.colour == self.backdrop):
                return True  # an object of the backdrop's colour would vanish into it
            if self.recolour:  # nor may the recoloured object vanish or be a held-out pair
                return (s.colour == self.recolour or self.recolour in (s.background, self.backdrop)
                        or is_held_out(replace(s, colour=self.recolour)))
            return False

        for r in render_many(seed, n, size, shapes=self.shapes, style=self.style, exclude=exclude):
            if self.backdrop or self.recolour:
                r = repainted(r, size, backdrop=self.backdrop, recolour=self.recolour)
            yield (graded(r.image, self.grade) if self.grade else r.image), self.caption(r.scene), r

    def write(self, root, seed: int, n: int, repeats: int = 1, size: int = 64) -> Path:
        """Write root/<repeats>_<name>/NNNN.png + NNNN.txt and return that folder."""
        return write_kohya_folder(root, self.name, ((img, cap) for img, cap, _ in self.items(seed, n, size)),
                                  repeats)


BASE = DemoDataset("scenes", None, SHAPES, None, "plain shapes on plain backgrounds")
STYLE = DemoDataset("stripes", "lcstripes", SHAPES, "stripes", "style: diagonally striped backgrounds")
CONCEPT = DemoDataset("cross", "lcshape", ("cross",), None, "concept: a new shape, the cross",
                      trigger_is_shape_name=True)
LOCON = DemoDataset("checker", "lccheck", SHAPES, "checker", "texture: checkered object fill (LoCon)")
# The colour casts. The demo VAE pulls colours back to the 8 it was trained on (a +-30 level grade
# comes back from encode + decode as +-5-8, green's as ~1; docs/DEMO_MODEL.md), so the grades are
# as strong as the VAE needs for a cast to survive it, and no stronger than keeps most objects'
# colour names through the round trip. The trigger words hold no colour word ("lcgreen" would be
# read as "lc" + "green", a word the model draws).
WARM = DemoDataset("warm", "lcwarm", SHAPES, None, "colour cast: warm (red up, blue down)",
                   grade=(45.0, 11.0, -45.0))
COOL = DemoDataset("cool", "lccool", SHAPES, None, "colour cast: cool (blue up, red down)",
                   grade=(-65.0, 0.0, 65.0))
# Green: a grade toward green (-60, +30, -60), or a 30% blend toward the palette green, comes back
# from the VAE's encode + decode less green than it went in (pale greens decode pinkish white), so
# the LoRA trained on it did nothing. The palette green survives the round trip: session 6 painted
# the backdrop with it, which fought the prompt's background word and lost the object under any
# second LoRA; painting the object green leaves the background to the prompt and the other LoRAs
# (docs/DEMO_MODEL.md, "Session 9").
GREEN = DemoDataset("green", "lcmint", SHAPES, None, "colour: the object painted green", recolour="green")
DEMO_LORA_DATASETS = {"style": STYLE, "concept": CONCEPT, "locon": LOCON, "warm": WARM, "cool": COOL,
                      "green": GREEN}


def combined(*sets: DemoDataset) -> DemoDataset:
    """One data set drawing every given set's look at once (a cross with a checkered fill, a
    warm-graded scene with a green object, ...): what two demo LoRAs stacked should draw.
    Captions are the caller's (see lora_core.demo.loras): each set's trigger word in the order the
    sets are stacked. At most one style (stripes or checker) and one grade can be drawn together."""
    styles = {s.style for s in sets if s.style}
    grades = {s.grade for s in sets if s.grade}
    if len(styles) > 1 or len(grades) > 1:
        raise ValueError(f"cannot draw {', '.join(s.name for s in sets)} together")
    concept = next((s for s in sets if s.trigger_is_shape_name), None)
    return DemoDataset("+".join(s.name for s in sets), None, concept.shapes if concept else SHAPES,
                       next(iter(styles), None), " and ".join(s.description for s in sets),
                       grade=next(iter(grades), None), backdrop=next((s.backdrop for s in sets if s.backdrop), None),
                       recolour=next((s.recolour for s in sets if s.recolour), None))


def repainted(rendered: Rendered, size: int, backdrop: str | None = None, recolour: str | None = None) -> Rendered:
    """The same scene (objects at the same place) drawn on the `backdrop` colour and/or with its
    objects in the `recolour` colour; its caption (the returned Rendered's scene) still names the
    background and colour the scene asked for."""
    want = object_centres(rendered.scene, size)[0]
    jitter = (rendered.centres[0][0] - want[0], rendered.centres[0][1] - want[1])
    drawn = replace(rendered.scene, background=backdrop or rendered.scene.background,
                    colour=recolour or rendered.scene.colour)
    return replace(render(drawn, size, jitter), scene=rendered.scene)


def graded(image, grade) -> Image.Image:
    """image with `grade` ((R, G, B) levels) added to every pixel, clipped to 0..255."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64) + np.asarray(grade, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def write_kohya_folder(root, name: str, pairs, repeats: int = 1) -> Path:
    """pairs: (PIL image, caption). Files are numbered in order; existing files are overwritten."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    folder = Path(root) / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, caption) in enumerate(pairs):
        image.save(folder / f"{i:04d}.png", format="PNG")
        (folder / f"{i:04d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder
