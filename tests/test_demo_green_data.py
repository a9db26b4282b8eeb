"""demo_green's data set: the base scenes repainted on the palette green (a colour the demo VAE
draws, where it pulls a green tint back; docs/DEMO_MODEL.md), captions naming the asked background."""
import numpy as np

from lora_core.demo.data import BASE, COLOURS, GREEN
from lora_core.demo.data.datasets import with_backdrop
from lora_core.demo.data.measure import border_mask


def test_green_set_repaints_the_backdrop_and_keeps_each_object_and_caption():
    items = list(GREEN.items(5, 40))
    assert len(items) == 40
    green = np.asarray(COLOURS["green"], dtype=float)
    repainted = 0
    for image, caption, r in items:
        arr = np.asarray(image, dtype=float)
        assert r.scene.colour != "green"  # it would vanish into the backdrop
        assert caption == r.scene.caption("lcmint")  # the background the prompt asked for
        # (an object at the side may touch the frame)
        assert (np.abs(arr[border_mask(arr.shape)] - green).max(-1) <= 1).mean() > 0.9
        # the object keeps its own colour where it covers whole pixels
        inside = arr[r.mask]
        assert np.median(np.abs(inside - np.asarray(COLOURS[r.scene.colour], dtype=float)).sum(-1)) <= 3
        if r.scene.background != "green":
            repainted += 1
            asked = np.asarray(with_backdrop(r, r.scene.background, 64).image, dtype=float)
            shift = arr.reshape(-1, 3).mean(0) - asked.reshape(-1, 3).mean(0)
            assert shift @ np.asarray((-1.0, 2.0, -1.0)) > 20, (caption, shift)
    assert repainted >= 30


def test_backdrop_keeps_the_objects_in_place():
    for _, _, r in BASE.items(7, 20):
        painted = with_backdrop(r, "green", 64)
        assert painted.scene == r.scene and painted.centres == r.centres
        assert np.array_equal(painted.mask, r.mask)
