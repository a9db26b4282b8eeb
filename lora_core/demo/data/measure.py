"""Pixel measurements that read a scene back from an image (generated or drawn).

They answer the questions a caption asks: which colour is the background, which colour is the
object, how large it is, where it sits, how many there are, whether the background is striped or
the object checkered. Quality tests compare these against the prompt; the generator's own ground
truth checks them first (tests/test_train_demo_data.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .scenes import CHECKER_CELL_PX, COLOURS, SIZE_PX, STRIPE_PERIOD_PX

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)


def as_array(image) -> np.ndarray:
    """HxWx3 float64 RGB 0..255 from a PIL image or an array."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an RGB image, got shape {arr.shape}")
    return arr[..., :3]


def nearest_colour(rgb) -> str:
    """The palette name closest to an RGB triple."""
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float64)) ** 2).sum(1)
    return _NAMES[int(d.argmin())]


def colour_names(arr: np.ndarray) -> np.ndarray:
    """Index into COLOURS (in insertion order) of the nearest named colour, per pixel."""
    d = ((arr[..., None, :] - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def dominant_colour(image, region=None) -> tuple[str, float]:
    """(name, fraction) of the most common named colour in region.

    region: None (whole image), a bool mask HxW, or a box (x0, y0, x1, y1) in pixels.
    """
    arr = as_array(image)
    if region is None:
        pixels = arr.reshape(-1, 3)
    elif isinstance(region, np.ndarray):
        pixels = arr[region.astype(bool)]
    else:
        x0, y0, x1, y1 = (int(round(v)) for v in region)
        pixels = arr[max(0, y0):y1, max(0, x0):x1].reshape(-1, 3)
    if len(pixels) == 0:
        raise ValueError("empty region")
    idx = colour_names(pixels)
    counts = np.bincount(idx, minlength=len(_NAMES))
    best = int(counts.argmax())
    return _NAMES[best], float(counts[best] / len(idx))


def border_mask(shape, width: int = 3) -> np.ndarray:
    h, w = shape[:2]
    m = np.zeros((h, w), dtype=bool)
    m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
    return m


def background_colour(image) -> tuple[str, float]:
    """The background's named colour: the dominant colour of a 3-pixel frame around the image
    (objects never touch the edge)."""
    arr = as_array(image)
    return dominant_colour(arr, border_mask(arr.shape))


def object_mask(image, background=None, tol: float = 90.0) -> np.ndarray:
    """Pixels that are not background. background: a colour name or RGB; default: measured.

    With a striped background, pass the stripe-aware `object_mask_by_colour` instead."""
    arr = as_array(image)
    if background is None:
        background = background_colour(arr)[0]
    bg = np.asarray(COLOURS[background] if isinstance(background, str) else background, dtype=np.float64)
    return np.sqrt(((arr - bg) ** 2).sum(-1)) > tol


def object_mask_by_colour(image, colour: str) -> np.ndarray:
    """Pixels whose nearest named colour is `colour`."""
    return colour_names(as_array(image)) == _NAMES.index(colour)


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected (4-neighbour) regions of a 2-D bool mask: (labels, n), labels 1..n numbered in the
    order of each region's first pixel in row-major order, 0 off the mask.

    Union-find over horizontal runs: two runs on adjacent rows join when their columns overlap."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(edges == 1)   # run starts (row, first column)
    _, ends_c = np.nonzero(edges == -1)           # run ends, same order: exclusive column
    runs = len(starts_r)
    parent = list(range(runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(starts_r, np.arange(h + 1))  # runs of row y: row_first[y]..row_first[y+1]
    for y in range(1, h):
        a, a_end = int(row_first[y - 1]), int(row_first[y])
        b, b_end = a_end, int(row_first[y + 1])
        while a < a_end and b < b_end:
            if starts_c[a] < ends_c[b] and starts_c[b] < ends_c[a]:  # columns overlap
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends_c[a] < ends_c[b]:
                a += 1
            else:
                b += 1
    labels = np.zeros((h, w), dtype=np.int32)
    numbers: dict[int, int] = {}
    for i in range(runs):
        n = numbers.setdefault(find(i), len(numbers) + 1)
        labels[starts_r[i], starts_c[i]:ends_c[i]] = n
    return labels, len(numbers)


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross, `iterations` times; outside the image counts as
    off, so pixels on the border are removed."""
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        padded = np.pad(out, 1, constant_values=False)
        out = (out & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return out


def components(mask: np.ndarray, min_pixels: int = 12) -> list[np.ndarray]:
    """Connected (4-neighbour) regions of a bool mask with at least min_pixels pixels."""
    labels, n = label(mask)
    out = []
    for i in range(1, n + 1):
        part = labels == i
        if part.sum() >= min_pixels:
            out.append(part)
    return out


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask")
    return float(xs.mean()), float(ys.mean())


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a mask, x1/y1 exclusive."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def position_of(mask: np.ndarray) -> str:
    """left/right/top/bottom/center from the centre of a mask's bounding box (a triangle's
    centroid sits low, its box does not)."""
    h, w = mask.shape
    x0, y0, x1, y1 = bbox(mask)
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    dx, dy = x / w - 0.5, y / h - 0.5
    # 0.09 of the width: a centred object moves at most ~2 px (jitter), a large triangle at the
    # bottom has its box centre only ~9 px below the middle (its top point reaches up)
    if max(abs(dx), abs(dy)) < 0.09:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def size_of(mask: np.ndarray) -> str:
    """small/large from one object's extent (the larger side of its bounding box), which unlike
    the area does not depend on the shape."""
    h, w = mask.shape
    x0, y0, x1, y1 = bbox(mask)
    # between a small circle's extent (its diameter) and a large square's (0.86 of its diameter):
    # the narrowest large and the widest small shape
    threshold = (SIZE_PX["small"] + 0.86 * SIZE_PX["large"]) / 2 * w / 64.0
    return "large" if max(x1 - x0, y1 - y0) > threshold else "small"


def fill_ratio(mask: np.ndarray) -> float:
    """Object area over its bounding-box area: ~1 square, ~0.79 circle, ~0.5 triangle, ~0.35 star."""
    if not mask.any():
        return 0.0
    x0, y0, x1, y1 = bbox(mask)
    return float(mask.sum() / ((x1 - x0) * (y1 - y0)))


def _offset(arr: np.ndarray, px_at_64: int) -> int:
    return max(1, int(round(px_at_64 * arr.shape[1] / 64.0)))


def centre_free_mask(shape, radius_px: float = 21.0) -> np.ndarray:
    """Everything but a central disc (radius in pixels at 64x64): the background of a scene whose
    one large object sits in the center (36 px across, plus blur)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = radius_px * w / 64.0
    return (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 > r * r


def stripe_score(image, mask=None) -> float:
    """How strongly the background shows the style's diagonal stripes (bands running from top
    right to bottom left): the mean absolute luminance difference between background pixels a
    quarter period apart across the bands (x+k, y+k: opposite bands) minus the same along them
    (x-k, y+k: the same band). Drawn stripes score their full contrast, a flat fill 0, and a
    blotchy or noisy background about 0 too, since it differs alike in both directions.

    mask: the object (its complement is the background); default: a central disc, for scenes with
    one large object in the center."""
    arr = as_array(image)
    lum = arr @ np.array([0.299, 0.587, 0.114])
    bg = ~mask if mask is not None else centre_free_mask(arr.shape)
    k = _offset(arr, STRIPE_PERIOD_PX // 4)
    a, a_ok = lum[:-k, :], bg[:-k, :]  # (x, y) for pairs with y + k
    below, below_ok = lum[k:, :], bg[k:, :]
    across = np.abs(below[:, k:] - a[:, :-k])[(below_ok[:, k:] & a_ok[:, :-k])]
    along = np.abs(below[:, :-k] - a[:, k:])[(below_ok[:, :-k] & a_ok[:, k:])]
    if not across.size or not along.size:
        return 0.0
    return float(across.mean() - along.mean())


def texture_score(image, mask: np.ndarray) -> float:
    """Mean absolute luminance difference between pixels half a checker cell apart (along x and
    along y) inside a mask, eroded so the object's edge does not count: a checkered fill scores
    about half its contrast, a flat or smoothly shaded one near 0. Half a cell, not a whole one,
    so that a small object still has pairs of pixels to compare."""
    arr = as_array(image)
    lum = arr @ np.array([0.299, 0.587, 0.114])
    inner = erode(mask, iterations=2)
    k = _offset(arr, CHECKER_CELL_PX // 2)
    diffs = [np.abs(lum[:, k:] - lum[:, :-k])[inner[:, k:] & inner[:, :-k]],
             np.abs(lum[k:] - lum[:-k])[inner[k:] & inner[:-k]]]
    values = np.concatenate(diffs)
    return float(values.mean()) if values.size else 0.0


@dataclass
class Measured:
    background: str
    colour: str | None
    count: int
    size: str | None
    position: str | None
    fill: float


def describe(image) -> Measured:
    """Read a plain (unstyled) scene back from its pixels."""
    arr = as_array(image)
    bg = background_colour(arr)[0]
    mask = object_mask(arr, bg)
    parts = components(mask)
    if not parts:
        return Measured(bg, None, 0, None, None, 0.0)
    biggest = max(parts, key=lambda p: p.sum())
    colour = dominant_colour(arr, mask)[0]
    pos = position_of(biggest) if len(parts) == 1 else None
    return Measured(bg, colour, len(parts), size_of(biggest), pos, fill_ratio(biggest))


def shape_of(mask: np.ndarray) -> str:
    """square / circle / triangle / cross / star of one object's mask, from three numbers:
    fill ratio (area / bounding box: ~1, ~0.78, ~0.55, ~0.55, ~0.45), how much of the area lies
    in the top half of the box (a point-up triangle: ~1/4, the others ~1/2) and in its two
    bottom corner ninths (a cross: none)."""
    x0, y0, x1, y1 = bbox(mask)
    box = mask[y0:y1, x0:x1].astype(bool)
    area = box.sum()
    fill = area / box.size
    if fill > 0.87:
        return "square"
    if fill > 0.66:
        return "circle"
    h, w = box.shape
    top = box[: h // 2].sum() / area
    if top < 0.32 and fill > 0.46:  # a star that lost its thin top point is still less full
        return "triangle"
    ch, cw = max(1, h // 3), max(1, w // 3)
    # A point-up star puts its two lower points in the bottom corner ninths (~0.13 of its area;
    # 0.09-0.20 after the demo VAE's encode + decode); a cross has nothing there, and the VAE's
    # rounding of its inner corners spills less than 0.07.
    bottom = (box[h - ch:, :cw].sum() + box[h - ch:, w - cw:].sum()) / area
    return "cross" if bottom < 0.07 else "star"

STRIPED_MIN = 10.0  # stripe_score of a striped background (plain backgrounds score < 2)
CHECKERED_MIN = 5.0  # texture_score of a checkered fill (flat fills score < 2)


def check_scene(image, scene) -> dict[str, bool]:
    """Which of a scene's (a prompt's) attributes an image shows: background, colour, count, size,
    position (single objects), shape (by fill ratio; "lcshape" means the cross), and the style.

    For quality tests of generated pictures: e.g. require most held-out prompts to pass most checks.
    """
    from .scenes import stripe_colour

    if isinstance(image, Image.Image) and image.size != (64, 64):
        # the thresholds (edge scores, component sizes) are calibrated at the demo size
        image = image.convert("RGB").resize((64, 64), Image.Resampling.BOX)
    arr = as_array(image)
    result: dict[str, bool] = {}
    if scene.style == "stripes":
        # half the background is a shade of its colour: it must still cover a good part of the frame
        frame = colour_names(arr[border_mask(arr.shape)])
        result["background"] = float((frame == _NAMES.index(scene.background)).mean()) > 0.3
        # the object: its own colour, and far from both stripe colours (blends of the two are not)
        mask = (object_mask_by_colour(arr, scene.colour) & object_mask(arr, scene.background)
                & object_mask(arr, stripe_colour(scene.background, scene.colour)))
    else:
        result["background"] = background_colour(arr)[0] == scene.background
        mask = object_mask(arr, scene.background)
    parts = components(mask)
    result["count"] = len(parts) == scene.count
    if not parts:
        return {**result, "colour": False, "size": False, "position": False, "shape": False,
                **({"style": False} if scene.style else {})}
    union = np.zeros_like(mask)
    for p in parts:
        union |= p
    biggest = max(parts, key=lambda p: p.sum())
    result["colour"] = dominant_colour(arr, union)[0] == scene.colour or (
        scene.style == "checker" and dominant_colour(arr, union)[1] < 0.9)
    result["size"] = size_of(biggest) == scene.size
    result["position"] = scene.count != 1 or position_of(biggest) == scene.position
    result["shape"] = shape_of(biggest) == ("cross" if scene.shape == "lcshape" else scene.shape)
    if scene.style == "stripes":
        result["style"] = stripe_score(arr, union) > STRIPED_MIN
    elif scene.style == "checker":
        result["style"] = texture_score(arr, union) > CHECKERED_MIN
    return result
