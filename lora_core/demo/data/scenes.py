"""Captioned synthetic scenes: flat-coloured shapes on a plain background, drawn from a seed.

A scene is described by a `Scene` (what the caption says) and rendered to a small RGB image
together with its ground truth (the object mask), so tests can check that a caption and the
pixels agree, and later that a generated picture shows what its prompt asked for.
No torch here: numpy + Pillow only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# Named colours chosen far apart in RGB so a pixel's nearest name is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 225, 30),
    "purple": (140, 40, 190),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
COUNTS = (1, 2)
# Object diameter in pixels at 64x64 (scaled with the image size). The demo VAE maps 8x8 pixels to
# one latent pixel: an 18 px object (2 latent pixels) came back from encode + decode as a blob in
# most scenes (star 0/12, triangle 3/10), 24-26 px keeps most shapes (docs/DEMO_MODEL.md).
SIZE_PX = {"small": 24, "large": 36}
# Style textures, in pixels at 64x64. They have to be coarser than a latent pixel to survive the
# VAE: measured (correlation of luminance before and after encode + decode), stripes kept 0.17 at an
# 8 px period and ~0.7 at 32 px; checks 0.0 with 4 px cells, ~0.6 with 12 px cells.
STRIPE_PERIOD_PX = 32
CHECKER_CELL_PX = 12
POSITION_PHRASE = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "center": "in the center",
}
COUNT_WORD = {1: "a", 2: "two"}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "cross": "crosses", "lcshape": "lcshapes"}
SUPERSAMPLE = 4  # draw at 4x and box-filter down: smooth edges, deterministic


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str  # ignored when count == 2 (the pair sits left and right of the centre)
    background: str
    count: int = 1
    style: str | None = None  # None, "stripes" (background stripes), "checker" (checkered fill)

    def caption(self, trigger: str | None = None) -> str:
        article = "an" if self.background[0] in "aeiou" else "a"
        ground = f"on {article} {self.background} background"
        if self.count == 1:
            text = f"a {self.size} {self.colour} {self.shape} {ground}, {POSITION_PHRASE[self.position]}"
        else:
            text = f"two {self.size} {self.colour} {PLURAL.get(self.shape, self.shape + 's')} {ground}"
        # The trigger word goes last, where a card click puts activation text in a prompt. The text
        # encoder is causal, so the scene's own words then read as they do without it: led by an
        # unknown word, the demo model repainted the whole scene before any LoRA was applied.
        return f"{text}, {trigger}" if trigger else text

    def partial_captions(self) -> list[str]:
        """Shorter captions that each name a few of the scene's attributes ("a red circle", "a large
        circle", "a circle on a blue background", ...). Trained on now and then beside the full
        caption, they tie each word to its own attribute, which is what a held-out colour/shape pair
        needs; the full caption alone lets a small model learn each pair as a whole."""
        article = "an" if self.background[0] in "aeiou" else "a"
        ground = f"on {article} {self.background} background"
        if self.count != 1:
            plural = PLURAL.get(self.shape, self.shape + "s")
            return [f"two {self.colour} {plural}", f"two {plural} {ground}", f"two {self.size} {plural}"]
        # Each keeps the position phrase: trained without it, "a red circle" taught the model that
        # an unplaced object may sit anywhere, and held-out positions fell from 50% to 12.5%.
        where = POSITION_PHRASE[self.position]
        return [f"a {self.colour} {self.shape}, {where}", f"a {self.size} {self.shape}, {where}",
                f"a {self.shape} {ground}, {where}", f"a {self.size} {self.colour} {self.shape}, {where}"]


@dataclass
class Rendered:
    image: Image.Image
    scene: Scene
    mask: np.ndarray  # bool HxW: pixels at least half covered by an object
    centres: list[tuple[float, float]]  # (x, y) of each object, in pixels
    diameter: float  # object diameter in pixels


def object_centres(scene: Scene, size: int, jitter: tuple[float, float] = (0.0, 0.0)) -> list[tuple[float, float]]:
    """Where the objects sit for this scene (before the small random jitter is added)."""
    s = size / 64.0
    d = SIZE_PX[scene.size] * s
    margin = d / 2 + 3 * s
    mid = size / 2
    if scene.count == 2:
        off = max(d / 2 + 4 * s, size / 4)
        return [(mid - off + jitter[0], mid + jitter[1]), (mid + off + jitter[0], mid + jitter[1])]
    x, y = {
        "left": (margin, mid), "right": (size - margin, mid), "top": (mid, margin),
        "bottom": (mid, size - margin), "center": (mid, mid),
    }[scene.position]
    return [(x + jitter[0], y + jitter[1])]


def shape_polygon(shape: str, cx: float, cy: float, d: float) -> list[tuple[float, float]] | None:
    """Outline points of a polygonal shape of diameter d centred at (cx, cy); None for a circle."""
    r = d / 2
    if shape == "square":
        h = r * 0.86  # a square's area then matches a circle of diameter d more closely
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = -np.pi / 2 + i * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        return pts
    if shape == "cross":  # a plus sign whose arms are a third of the diameter wide
        a, b = r, r / 3
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, d: float, fill) -> None:
    poly = shape_polygon(shape, cx, cy, d)
    if poly is None:
        r = d / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    """A darker (factor < 1) or lighter version of a colour; used for stripes and checks."""
    if factor < 1:
        return tuple(int(c * factor) for c in rgb)
    return tuple(int(c + (255 - c) * (factor - 1)) for c in rgb)


def _dist(a, b) -> float:
    return float(np.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b))))


def contrast_shade(rgb, avoid) -> tuple[int, int, int]:
    """The darker or lighter shade of `rgb` that stands out most from both `rgb` itself and the
    colour `avoid` (the object for stripes, the background for checks), so masks stay clean."""
    candidates = [_shade(rgb, 0.55), _shade(rgb, 1.6)]
    return max(candidates, key=lambda c: min(_dist(c, rgb), _dist(c, avoid)))


def stripe_colour(background: str, colour: str) -> tuple[int, int, int]:
    """The colour of the background stripes of a striped scene."""
    return contrast_shade(COLOURS[background], COLOURS[colour])


def checker_colour(colour: str, background: str) -> tuple[int, int, int]:
    """The second colour of a checkered object."""
    return contrast_shade(COLOURS[colour], COLOURS[background])


def render(scene: Scene, size: int = 64, jitter: tuple[float, float] = (0.0, 0.0)) -> Rendered:
    """Draw a scene. jitter moves the objects by a few pixels (the caption stays true)."""
    ss = size * SUPERSAMPLE
    d = SIZE_PX[scene.size] * size / 64.0
    bg = COLOURS[scene.background]
    fg = COLOURS[scene.colour]
    img = Image.new("RGB", (ss, ss), bg)
    mask = Image.new("L", (ss, ss), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    if scene.style == "stripes":
        # diagonal stripes over the background (period measured along x)
        period = STRIPE_PERIOD_PX * ss / 64
        sc = stripe_colour(scene.background, scene.colour)
        for k in range(-ss, 2 * ss, int(period)):
            draw.polygon([(k, 0), (k + period / 2, 0), (k + period / 2 - ss, ss), (k - ss, ss)], fill=sc)
    centres = object_centres(scene, size, jitter)
    for cx, cy in centres:
        _draw_shape(draw, scene.shape, cx * SUPERSAMPLE, cy * SUPERSAMPLE, d * SUPERSAMPLE, fg)
        _draw_shape(mdraw, scene.shape, cx * SUPERSAMPLE, cy * SUPERSAMPLE, d * SUPERSAMPLE, 255)
    if scene.style == "checker":
        # a checkered fill inside the objects: squares of the colour and a contrasting shade
        cell = CHECKER_CELL_PX * SUPERSAMPLE * size // 64
        check = Image.new("RGB", (ss, ss), fg)
        cdraw = ImageDraw.Draw(check)
        alt = checker_colour(scene.colour, scene.background)
        for y in range(0, ss, cell):
            for x in range(0, ss, cell):
                if (x // cell + y // cell) % 2:
                    cdraw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=alt)
        img.paste(check, (0, 0), mask)
    img = img.resize((size, size), Image.Resampling.BOX)
    small_mask = np.asarray(mask.resize((size, size), Image.Resampling.BOX)) >= 128
    return Rendered(img, scene, small_mask, centres, d)


def random_scene(rng: random.Random, shapes=SHAPES, style: str | None = None,
                 exclude=None) -> Scene:
    """One scene drawn from rng; background and object colours always differ.

    exclude: a predicate Scene -> bool; scenes it accepts are drawn again (held-out prompts).
    """
    colour_names = list(COLOURS)
    while True:
        colour = rng.choice(colour_names)
        background = rng.choice([c for c in colour_names if c != colour])
        count = rng.choice(COUNTS) if rng.random() < 0.25 else 1
        size = "small" if count == 2 else rng.choice(SIZES)
        scene = Scene(shape=rng.choice(list(shapes)), colour=colour, size=size,
                      position="center" if count == 2 else rng.choice(POSITIONS),
                      background=background, count=count, style=style)
        if exclude is None or not exclude(scene):
            return scene


def scenes(seed: int, n: int, shapes=SHAPES, style: str | None = None, exclude=None) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, shapes, style, exclude) for _ in range(n)]


def render_many(seed: int, n: int, size: int = 64, shapes=SHAPES, style: str | None = None,
                exclude=None, jitter_px: float = 2.0):
    """Yield n Rendered scenes, identical for the same arguments (own RNG, global state untouched)."""
    rng = random.Random(seed ^ 0x5EED)
    for scene in scenes(seed, n, shapes, style, exclude):
        j = (rng.uniform(-jitter_px, jitter_px) * size / 64, rng.uniform(-jitter_px, jitter_px) * size / 64)
        yield render(scene, size, j)


def with_style(scene: Scene, style: str | None) -> Scene:
    return replace(scene, style=style)
