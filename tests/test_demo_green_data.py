"""demo_green's data set: the base scenes with the object repainted in the palette green (a colour
the demo VAE draws, where it pulls a green tint back; docs/DEMO_MODEL.md), captions naming the colour
and background the prompt asked for; and the combined data sets the demo LoRAs learn to stack on."""
import numpy as np
import pytest

from lora_core.demo.data import BASE, COLOURS, CONCEPT, GREEN, LOCON, STYLE, WARM, combined, is_held_out
from lora_core.demo.data.datasets import repainted
from lora_core.demo.data.measure import border_mask, shape_of, stripe_score, texture_score


def _rgb(name):
    return np.asarray(COLOURS[name], dtype=float)


def test_green_set_paints_each_object_green_and_keeps_background_place_and_caption():
    items = list(GREEN.items(5, 40))
    assert len(items) == 40
    for image, caption, r in items:
        arr = np.asarray(image, dtype=float)
        # neither a green object already, nor one that would vanish into a green background, nor
        # a held-out pair once green (green stars are never trained on)
        assert r.scene.colour != "green" and r.scene.background != "green"
        assert not is_held_out(r.scene) and (r.scene.shape, "green") != ("star", "green")
        assert caption == r.scene.caption("lcmint")  # the colour the prompt asked for
        assert np.median(np.abs(arr[r.mask] - _rgb("green")).sum(-1)) <= 3  # whole pixels: green
        frame = arr[border_mask(arr.shape)]
        assert (np.abs(frame - _rgb(r.scene.background)).max(-1) <= 1).mean() > 0.9
        asked = np.asarray(repainted(r, 64).image, dtype=float)  # the scene as asked
        assert np.array_equal(np.asarray(repainted(r, 64, recolour=r.scene.colour).image), asked)
        shift = arr.reshape(-1, 3).mean(0) - asked.reshape(-1, 3).mean(0)
        assert shift @ np.asarray((-1.0, 2.0, -1.0)) > 8, (caption, shift)


def test_repainting_keeps_the_objects_in_place():
    for _, _, r in BASE.items(7, 20):
        for kw in ({"backdrop": "green"}, {"recolour": "green"}):
            painted = repainted(r, 64, **kw)
            assert painted.scene == r.scene and painted.centres == r.centres
            assert np.array_equal(painted.mask, r.mask)


def test_combined_sets_draw_both_looks():
    crosses = list(combined(CONCEPT, GREEN).items(3, 12))
    assert all(shape_of(r.mask) == "cross" for _, _, r in crosses if r.scene.count == 1)
    assert all(np.median(np.abs(np.asarray(img, float)[r.mask] - _rgb("green")).sum(-1)) <= 3
               for img, _, r in crosses)
    for img, _, r in combined(STYLE, GREEN).items(4, 12):
        assert stripe_score(img, r.mask) > 10
    for img, _, r in combined(LOCON, WARM).items(4, 12):
        plain = np.asarray(repainted(r, 64).image, dtype=float)  # the same checkered scene, ungraded
        assert (np.asarray(img, float) - plain).reshape(-1, 3).mean(0) @ np.asarray((1.0, 0.0, -1.0)) > 20
        if r.mask.sum() > 200:
            assert texture_score(img, r.mask) > 5
    with pytest.raises(ValueError, match="together"):
        combined(STYLE, LOCON)
