"""What the shipped demo model and its trained LoRAs draw, read back from pixels.

Runs the embedded default exactly as the app does (Session with no checkpoint -> the committed
demo assets; LORA_CORE_DEMO_ASSETS may point at another build folder with the same layout).
Thresholds come from what the committed model measured (docs/DEMO_MODEL.md), with margin: the
numbers printed with `pytest -s` are the ones to compare.
"""
import time

import numpy as np
import pytest

from lora_core.demo import check as demo_check
from lora_core.app.demo_pack import read_pack
from lora_core.demo import effects as demo_effects

# Floors set from what the committed model measured on these 16 held-out prompts (docs/DEMO_MODEL.md:
# background 100%, colour 94%, shape 62%, colour AND shape 56%, i.e. 9 of 16), about one or two
# samples below: the colour and shape asked for are there in most samples.
BACKGROUND_MIN = 0.85
COLOUR_MIN = 0.8
BOTH_MIN = 0.5
# and no more than this below the rate recorded in manifest.json when the model was installed
# (tools/install_demo_assets.py --measure)
HELD_OUT_MARGIN = 0.15
SEEDS = (31, 32, 33, 34)
# Prompts the demo model draws reliably (4 of 4 shapes, 3 colours, 2 backgrounds, 2 positions; each
# recognisable in 6 of 6 seeds or 5 of 6, docs/DEMO_MODEL.md). The README's examples come from here;
# every demo LoRA, alone and stacked with each other one, is checked on all of them.
EXAMPLE_PROMPTS = (
    "a large red circle on a white background, in the center",
    "a large blue star on a white background, in the center",
    "a large black triangle on a yellow background, in the center",
    "a large red square on a white background, at the top",
)
# x 4 prompts: 16 samples per LoRA (with 8, one sample either way decided a LoRA's verdict:
# demo_lcshape reads 5 of 8 on seeds 1-2 and 13 of 16 on seeds 1-4; docs/DEMO_MODEL.md)
ALONE_SEEDS = (1, 2, 3, 4)
STACKED_SEEDS = (1,)  # x 4 prompts: 4 samples per pair (15 pairs, 3 pictures each)
# "most seeds": the share of samples that must show each LoRA's effect and a recognisable object
ALONE_MIN = 0.75
STACKED_MIN = 0.75
SCENE = demo_check.SCENE_TEXT.format(colour="red", shape="circle", background="white")
CROSS = demo_check.SCENE_TEXT.format(colour="red", shape="lcshape", background="white")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from lora_core.app.session import Session

    pack = read_pack()  # the folder the app itself would read; fails with a hint when not installed
    root = tmp_path_factory.mktemp("demo_quality")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    s = Session(root / "models", root / "data")
    assert s.pipeline.is_demo and s.pipeline.model_hash == pack.short_hash, s.messages
    yield s
    s.close()
    mp.undo()


def _img(session, prompt, seed, steps=demo_check.STEPS):
    images, _, messages = session.txt2img(prompt, seed=seed, steps=steps, cfg=demo_check.CFG,
                                          width=demo_check.SIZE, height=demo_check.SIZE, sampler=demo_check.SAMPLER)
    assert images and not messages, messages
    return images[0]


def _px(image):
    return np.asarray(image, dtype=np.int16)


def test_held_out_prompts_show_the_requested_colour_and_shape(session):
    q = demo_check.held_out_quality(session.pipeline, n=16)
    print(f"\nheld-out: pass {q['pass_rate']:.2f}, rates {q['rates']}, {q['s_per_image']:.2f} s/image")
    failures = [(s["prompt"], s["checks"]) for s in q["samples"] if not s["passed"]]
    assert q["rates"]["background"] >= BACKGROUND_MIN, failures
    assert q["rates"]["colour"] >= COLOUR_MIN, failures
    assert q["pass_rate"] >= BOTH_MIN, failures
    recorded = read_pack().manifest.get("quality", {}).get("held_out", {})
    assert "pass_rate" in recorded, "manifest has no measured quality: re-run install_demo_assets.py --measure"
    assert q["pass_rate"] >= recorded["pass_rate"] - HELD_OUT_MARGIN, (recorded["pass_rate"], failures)
    assert q["rates"]["colour"] >= recorded["rates"]["colour"] - HELD_OUT_MARGIN, (recorded["rates"], failures)


def test_generation_at_64px_20_steps_is_quick(session):
    handle = session.pipeline
    assert handle.default_size == 64
    demo_check.generate(handle, SCENE, 1)  # warm-up
    start = time.perf_counter()
    for seed in (2, 3):
        demo_check.generate(handle, SCENE, seed)
    per_image = (time.perf_counter() - start) / 2
    print(f"\n64x64, 20 steps: {per_image:.2f} s/image")
    # ~0.4-1 s on the 2-core dev machine; the bound only catches a model that became far too big
    assert per_image < 15.0


def test_style_lora_adds_stripes_and_half_weight_lies_between(session):
    prompt = SCENE + ", lcstripes"  # the trigger last, as trained and as a card click adds it
    rows = []
    for seed in SEEDS:
        plain = _img(session, prompt, seed)
        striped = _img(session, prompt + " <lora:demo_stripes:1>", seed)
        rows.append((demo_check.stripes(plain), demo_check.stripes(striped)))
    print(f"\nstripe score without/with: {rows}")
    assert sum(w > max(2 * p, p + 4.0) for p, w in rows) >= len(rows) - 1
    seed = SEEDS[0]
    base, half, full = (_px(_img(session, prompt + (f" <lora:demo_stripes:{w}>" if w else ""), seed))
                        for w in (0, 0.5, 1))
    d_half, d_full = np.abs(half - base).mean(), np.abs(full - base).mean()
    s0, s_half, s1 = (demo_check.stripes(x.astype(np.uint8)) for x in (base, half, full))
    print(f"pixel distance from no-LoRA: half {d_half:.1f}, full {d_full:.1f}; stripes {s0:.1f} {s_half:.1f} {s1:.1f}")
    assert 0 < d_half < d_full
    assert s0 < s_half < s1  # measured 0.6 < 3.6 < 7.4


def test_concept_trigger_word_draws_the_new_shape(session):
    without, with_lora = [], []
    for seed in SEEDS:
        without.append(demo_check.object_shape(_img(session, CROSS, seed), "red", "white"))
        with_lora.append(demo_check.object_shape(_img(session, CROSS + " <lora:demo_lcshape:1>", seed), "red", "white"))
    print(f"\nshape without LoRA {without}, with {with_lora}")
    assert with_lora.count("cross") >= len(SEEDS) - 1
    assert without.count("cross") < with_lora.count("cross")


def test_locon_and_style_stacked_both_show(session):
    prompt = SCENE + ", lcstripes, lccheck"
    rows = []
    for seed in SEEDS[:3]:
        plain = _img(session, prompt, seed)
        both = _img(session, prompt + " <lora:demo_stripes:1> <lora:demo_checker:1>", seed)
        rows.append({"stripes": (demo_check.stripes(plain), demo_check.stripes(both)),
                     "checker": (demo_check.checker(plain), demo_check.checker(both))})
    print(f"\nstacked: {rows}")
    # measured: stripes 0.6 -> 1.1/3.4/2.9 (weaker when stacked than alone, ~7), checker 7.8 -> 29/24/16;
    # session 7's LoCon stripes and lr 5e-4 checker: stripes 0.6 -> 0.8/1.8/1.4, checker 7.8 -> 23/28/28
    assert all(r["stripes"][1] > r["stripes"][0] for r in rows)
    assert np.mean([r["stripes"][1] / max(r["stripes"][0], 0.1) for r in rows]) > 1.3
    assert sum(r["checker"][1] > max(1.5 * r["checker"][0], r["checker"][0] + 2.0) for r in rows) >= 2


def test_removing_the_tags_gives_back_the_plain_image_bit_for_bit(session):
    prompt = SCENE + ", lcstripes, lccheck"
    before = _px(_img(session, prompt, 5))
    stacked = _px(_img(session, prompt + " <lora:demo_stripes:1> <lora:demo_checker:0.8> <lora:demo_lcshape:0.5>", 5))
    after = _px(_img(session, prompt, 5))
    assert np.abs(stacked - before).mean() > 3, "the LoRAs changed nothing"
    assert np.array_equal(before, after)


# ------------------------------------------------------------- every demo LoRA, alone and stacked
@pytest.fixture(scope="module")
def generate(session):
    """generate(prompt, seed, [(name, weight)]) through the prompt tags, as a user writes them;
    pictures are cached for the module (the stacked checks reuse the alone ones' where they match)."""
    cache = {}

    def gen(prompt, seed, loras):
        key = (prompt, seed, tuple(loras))
        if key not in cache:
            tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in loras)
            cache[key] = _img(session, prompt + tags, seed)
        return cache[key]

    return gen


def _infos():
    return demo_effects.infos_from_manifest(read_pack().manifest)


def test_example_prompts_are_the_measured_ones():
    assert EXAMPLE_PROMPTS == demo_effects.EXAMPLE_PROMPTS
    assert {lo.name for lo in _infos()} == {"demo_stripes", "demo_lcshape", "demo_checker", "demo_warm",
                                             "demo_cool", "demo_green"}


def test_example_prompts_draw_a_recognisable_object(generate):
    base = demo_effects.baseline(generate, seeds=ALONE_SEEDS)
    print(f"\nno LoRA: {base}")
    assert base["recognisable_rate"] >= 0.85 and base["colour_rate"] >= 0.85


# Open (issue 14 item 5, docs/DEMO_MODEL.md "LoRAs alone and stacked"): what measures short of the bar
# on the committed files gets a non-strict xfail here; the assertions stay, so it reports XPASS once met.
_OPEN_ALONE: dict[str, str] = {}  # none: all six meet the bar alone (session 6)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=_OPEN_ALONE[n], strict=False)) if n in _OPEN_ALONE else n
    for n in ("demo_stripes", "demo_lcshape", "demo_checker", "demo_warm", "demo_cool", "demo_green")])
def test_each_demo_lora_alone_shows_its_effect_and_keeps_the_object(generate, name):
    lora = next(lo for lo in _infos() if lo.name == name)
    r = demo_effects.measure_combo(generate, [lora], seeds=ALONE_SEEDS)
    print("\n" + demo_effects.table([r]))
    detail = [(s["prompt"], s["seed"], round(s["effects"][name], 1), s["checks"]) for s in r["samples"]]
    assert r["effect_rate"][name] >= ALONE_MIN, detail
    assert r["recognisable_rate"] >= ALONE_MIN, detail
    if lora.kind != "colour":  # a cast may move a colour to its neighbour's name (blue -> purple)
        assert r["colour_rate"] >= ALONE_MIN, detail


DEMO_LORAS = ("demo_stripes", "demo_lcshape", "demo_checker", "demo_warm", "demo_cool", "demo_green")
PAIRS = [(a, b) for i, a in enumerate(DEMO_LORAS) for b in DEMO_LORAS[i + 1:]]
# Open (issue 14 item 5): pairs measured short of the bar with the committed files (docs/DEMO_MODEL.md,
# "Pairs"); the assertions stay, so each reports XPASS once it meets them. Session 7's LoCon
# demo_stripes and gentler demo_checker (lr 5e-4) made 5 more pairs strict passes; session 9's
# demo_green (paints the object, trained on top of each other demo LoRA) 3 more (the bar unchanged).
_OPEN_PAIRS = {
    ("demo_lcshape", "demo_checker"): "demo_lcshape shows in 1/4 samples, demo_checker in 4/4, the object kept in 1/4",
    ("demo_lcshape", "demo_warm"): "demo_lcshape shows in 1/4 samples, demo_warm in 3/4, the object kept in 0/4",
    ("demo_warm", "demo_green"): "demo_warm shows in 0/4 samples, demo_green in 3/4, the object kept in 4/4",
    ("demo_cool", "demo_green"): "demo_cool shows in 3/4 samples, demo_green in 4/4, the object kept in 2/4",
}


@pytest.mark.parametrize("first,second", [
    pytest.param(a, b, marks=pytest.mark.xfail(reason=_OPEN_PAIRS[(a, b)], strict=False))
    if (a, b) in _OPEN_PAIRS else (a, b) for a, b in PAIRS], ids=[f"{a}+{b}" for a, b in PAIRS])
def test_each_pair_of_demo_loras_shows_both_effects_and_keeps_the_object(generate, first, second):
    """Two demo LoRAs stacked at their preferred weights: each effect shows against the other LoRA
    alone, and the object stays recognisable, in most example samples."""
    infos = {lo.name: lo for lo in _infos()}
    r = demo_effects.measure_combo(generate, [infos[first], infos[second]], seeds=STACKED_SEEDS)
    print("\n" + demo_effects.table([r]))
    detail = [(s["prompt"], s["seed"], {k: round(v, 1) for k, v in s["effects"].items()}, s["checks"])
              for s in r["samples"]]
    assert min(r["effect_rate"].values()) >= STACKED_MIN, detail
    assert r["recognisable_rate"] >= STACKED_MIN, detail
