"""The synthetic demo scenes: deterministic, captions agree with pixels, styles measurable."""
import numpy as np
import pytest

from lora_core.demo.data import (BASE, CONCEPT, DEMO_LORA_DATASETS, HELD_OUT_PAIRS, LOCON, STYLE, Scene,
                                 background_colour, describe, dominant_colour, fill_ratio, held_out_prompts,
                                 held_out_scenes, is_held_out, nearest_colour, object_mask, render,
                                 render_many, stripe_score, texture_score)
from lora_core.demo.data.measure import erode, label
from lora_core.demo.data.scenes import COLOURS
from lora_core.train.dataset import scan_folder


def _bytes(seed, n, **kw):
    return [(r.image.tobytes(), r.scene.caption()) for r in render_many(seed, n, **kw)]


def test_same_seed_same_scenes_other_seed_other_scenes():
    assert _bytes(3, 20) == _bytes(3, 20)
    assert _bytes(3, 20) != _bytes(4, 20)


def test_caption_wording():
    s = Scene("circle", "red", "small", "left", "blue")
    assert s.caption() == "a small red circle on a blue background, on the left"
    assert Scene("star", "white", "large", "center", "orange").caption() == \
        "a large white star on an orange background, in the center"
    assert Scene("square", "green", "small", "top", "black", count=2).caption() == \
        "two small green squares on a black background"
    assert s.caption("lcstripes").startswith("a small red circle") and s.caption("lcstripes").endswith(", lcstripes")


@pytest.mark.parametrize("size", [64, 96])
def test_measurements_agree_with_ground_truth(size):
    """Every caption attribute read back from the pixels, for 250 random scenes."""
    wrong = []
    for r in render_many(11, 250, size=size):
        s, m = r.scene, describe(r.image)
        got = (m.background, m.colour, m.count, m.size, m.position if s.count == 1 else s.position)
        want = (s.background, s.colour, s.count, s.size, s.position)
        if got != want:
            wrong.append((s, m))
    assert not wrong, wrong[:3]


def test_mask_helpers_match_rendered_mask():
    r = render(Scene("square", "yellow", "large", "right", "purple"))
    measured = object_mask(r.image, "purple")
    # anti-aliased edge pixels may fall either way; the interior must agree exactly
    assert abs(int(measured.sum()) - int(r.mask.sum())) <= 2 * r.diameter
    assert (measured & r.mask).sum() / r.mask.sum() > 0.97
    # edge pixels blend yellow with purple (some read as orange): the interior is all yellow
    assert dominant_colour(r.image, erode(r.mask)) == ("yellow", 1.0)
    assert dominant_colour(r.image, r.mask)[0] == "yellow"
    assert background_colour(r.image)[0] == "purple"
    assert nearest_colour(COLOURS["orange"]) == "orange"


def test_label_finds_4_connected_regions_in_raster_order():
    mask = np.array([[0, 1, 1, 0, 1],
                     [0, 0, 1, 0, 1],
                     [1, 0, 1, 1, 1],   # the U joins columns 1-2 and 4 through row 2
                     [1, 0, 0, 0, 0],
                     [0, 1, 0, 1, 1]], dtype=bool)  # (4,1) touches (3,0) only diagonally
    labels, n = label(mask)
    assert n == 4
    assert labels.tolist() == [[0, 1, 1, 0, 1],
                               [0, 0, 1, 0, 1],
                               [2, 0, 1, 1, 1],
                               [2, 0, 0, 0, 0],
                               [0, 3, 0, 4, 4]]
    assert label(np.zeros((3, 4), bool))[1] == 0
    full, n = label(np.ones((3, 4), bool))
    assert n == 1 and (full == 1).all()
    # a spiral: one region that joins only at its far end
    spiral = np.array([[1, 1, 1, 1, 1],
                       [0, 0, 0, 0, 1],
                       [1, 1, 1, 0, 1],
                       [1, 0, 0, 0, 1],
                       [1, 1, 1, 1, 1]], dtype=bool)
    assert label(spiral)[1] == 1


def test_erode_removes_the_edge_ring_and_the_border():
    square = np.zeros((9, 9), bool)
    square[1:8, 1:8] = True
    once = np.zeros((9, 9), bool)
    once[2:7, 2:7] = True
    assert (erode(square) == once).all()
    twice = np.zeros((9, 9), bool)
    twice[3:6, 3:6] = True
    assert (erode(square, iterations=2) == twice).all()
    # outside the image is off: a full mask loses its border pixels
    assert erode(np.ones((4, 4), bool)).tolist() == [[False] * 4, [False, True, True, False],
                                                     [False, True, True, False], [False] * 4]
    # a cross-shaped neighbourhood: a pixel whose only missing neighbour is diagonal survives
    plus = np.ones((3, 3), bool)
    plus[0, 0] = False
    assert erode(np.pad(plus, 1))[2, 2]


def test_shapes_have_distinct_fill_ratios():
    ratios = {shape: fill_ratio(render(Scene(shape, "red", "large", "center", "white")).mask)
              for shape in ("square", "circle", "cross", "triangle", "star")}
    assert ratios["square"] > 0.95
    assert 0.7 < ratios["circle"] < 0.85
    assert 0.5 < ratios["cross"] < 0.66
    assert 0.45 < ratios["triangle"] < 0.6
    assert ratios["star"] < 0.47


def test_style_sets_are_measurably_different_from_plain_scenes():
    plain = list(BASE.items(5, 30))
    striped = list(STYLE.items(5, 30))
    checker = list(LOCON.items(5, 30))
    assert max(stripe_score(i, r.mask) for i, _, r in plain) < 2.0
    assert min(stripe_score(i, r.mask) for i, _, r in striped) > 10.0
    assert max(texture_score(i, r.mask) for i, _, r in plain) < 2.0
    assert min(texture_score(i, r.mask) for i, _, r in checker) > 5.0
    # the same scenes underneath: the style does not change what the caption says
    assert [c for _, c, _ in striped] == [c + ", lcstripes" for _, c, _ in plain]
    assert all(c.endswith(", lccheck") for _, c, _ in checker)


def test_concept_set_names_the_cross_by_its_trigger():
    items = list(CONCEPT.items(2, 20))
    assert all(r.scene.shape == "cross" for _, _, r in items)
    assert all(" lcshape" in c and "cross" not in c for _, c, _ in items)
    assert all(0.5 < fill_ratio(r.mask) < 0.66 for _, _, r in items if r.scene.count == 1)
    assert set(DEMO_LORA_DATASETS) == {"style", "concept", "locon", "warm", "cool", "green"}


# demo_green repaints the backdrop instead of grading every pixel: tests/test_demo_green_data.py
@pytest.mark.parametrize("name,direction", [("warm", (1, 0, -1)), ("cool", (-1, 0, 1))])
def test_colour_cast_sets_grade_the_same_scenes_and_end_with_the_trigger(name, direction):
    ds = DEMO_LORA_DATASETS[name]
    plain, cast = list(BASE.items(5, 12)), list(ds.items(5, 12))
    assert [c + f", {ds.trigger}" for _, c, _ in plain] == [c for _, c, _ in cast]
    # no colour word in the trigger: the model would read it ("lcgreen" is "lc" + "green")
    assert not any(colour in ds.trigger for colour in COLOURS)
    for (a, _, _), (b, _, _) in zip(plain, cast):
        shift = (np.asarray(b, dtype=float) - np.asarray(a, dtype=float)).reshape(-1, 3).mean(0)
        assert shift @ np.asarray(direction, dtype=float) > 20, shift


def test_held_out_pairs_never_in_training_sets():
    for ds in (BASE, STYLE, LOCON):
        assert not any(is_held_out(r.scene) for _, _, r in ds.items(0, 400))
    scenes = held_out_scenes(16)
    assert {(s.shape, s.colour) for s in scenes} == set(HELD_OUT_PAIRS)
    prompts = held_out_prompts(16)
    assert len(set(prompts)) == 16 and prompts == held_out_prompts(16)


def test_written_kohya_folder_reads_back(tmp_path):
    folder = STYLE.write(tmp_path, seed=1, n=5, repeats=3)
    assert folder.name == "3_stripes"
    ds = scan_folder(tmp_path)
    assert len(ds.items) == 5 and ds.num_train_images == 15
    want = [c for _, c, _ in STYLE.items(1, 5)]
    assert [i.caption for i in ds.items] == want
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(ds.items[0].image).convert("RGB"))
    assert img.shape == (64, 64, 3)


def test_check_scene_accepts_ground_truth_and_rejects_wrong_prompts():
    from dataclasses import replace

    from lora_core.demo.data import check_scene, shape_of

    checks = failures = 0
    for ds in (BASE, STYLE, LOCON, CONCEPT):
        for image, _, r in ds.items(21, 60):
            result = check_scene(image, r.scene if ds is not CONCEPT else replace(r.scene, shape="lcshape"))
            assert set(result) >= {"background", "colour", "count", "size", "position", "shape"}
            assert ("style" in result) == (r.scene.style is not None)
            checks += len(result)
            failures += sum(not v for v in result.values())
    assert failures <= checks * 0.01, (failures, checks)
    # a prompt that disagrees with the picture is caught, attribute by attribute
    r = render(Scene("triangle", "red", "large", "left", "blue"))
    assert shape_of(r.mask) == "triangle"
    assert all(check_scene(r.image, r.scene).values())
    for field, value in (("colour", "green"), ("background", "white"), ("size", "small"), ("position", "right"),
                         ("shape", "circle"), ("count", 2)):
        wrong = replace(r.scene, **{field: value})
        assert not check_scene(r.image, wrong)[field], field
    assert not check_scene(r.image, replace(r.scene, style="stripes"))["style"]
    assert not check_scene(r.image, replace(r.scene, style="checker"))["style"]
