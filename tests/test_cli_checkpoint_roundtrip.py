"""Issue 14 items 9 and 10: `generate --checkpoint` that cannot be loaded fails (no silent demo
model), and a checkpoint `merge` makes from the demo model loads back in `generate`/`serve` (the
Session both use) and draws what the live LoRA draws, within fp16 rounding."""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from lora_core.app import generate as generate_cmd  # noqa: E402
from lora_core.app.demo_pack import assets_dir  # noqa: E402
from lora_core.app.session import CheckpointLoadError, Session  # noqa: E402
from lora_core.commands import merge as merge_cmd  # noqa: E402

DEMO = Path(assets_dir())


def run(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.run(parser.parse_args([str(a) for a in argv]))
    return code, out.getvalue(), err.getvalue()


def test_generate_with_a_missing_checkpoint_fails(tmp_path):
    png = tmp_path / "out.png"
    code, out, err = run(generate_cmd, ["a red circle", "--checkpoint", "missing.safetensors", "--models-dir",
                                        tmp_path / "models", "--data-dir", tmp_path / "data", "--out", png,
                                        "--steps", "1"])
    assert code == 2
    assert "missing.safetensors" in err and "not found" in err
    assert not png.exists() and out == ""


def test_session_strict_raises(tmp_path):
    with pytest.raises(CheckpointLoadError, match="nothing.safetensors"):
        Session(tmp_path / "models", tmp_path / "data", checkpoint="nothing.safetensors", strict=True, scan=False)


def test_merged_demo_checkpoint_loads_and_matches_the_live_lora(tmp_path):
    merged = tmp_path / "models" / "Stable-diffusion" / "demo_stripes_baked.safetensors"
    merged.parent.mkdir(parents=True)
    code, _out, err = run(merge_cmd, [DEMO / "lora_core-demo.safetensors", "--lora",
                                      f"{DEMO / 'loras' / 'demo_stripes.safetensors'}:1", "--out", merged])
    assert code == 0, err

    baked = Session(tmp_path / "models", tmp_path / "data_b", checkpoint=merged.name, strict=True, scan=False)
    try:
        assert not baked.pipeline.is_demo and baked.current_checkpoint() == merged.name
        assert baked.pipeline.default_size == 64  # the demo model's modelspec.resolution, kept by merge
        images_b, _info, msgs = baked.txt2img("a red circle lcstripes", steps=8, seed=3, sampler="Euler")
        assert images_b, msgs
    finally:
        baked.close()

    live = Session(tmp_path / "live", tmp_path / "data_l", checkpoint="demo")
    try:
        images_l, _info, msgs = live.txt2img("a red circle lcstripes <lora:demo_stripes:1>", steps=8, seed=3,
                                             sampler="Euler")
        assert images_l and not msgs, msgs
        plain, _info, _msgs = live.txt2img("a red circle lcstripes", steps=8, seed=3, sampler="Euler")
    finally:
        live.close()
    a, b, c = (np.asarray(x[0], dtype=np.int16) for x in (images_b, images_l, plain))
    assert a.shape == b.shape == (64, 64, 3)
    diff = np.abs(a - b)
    assert diff.max() <= 4 and diff.mean() < 0.5, (diff.max(), diff.mean())  # fp16 rounding of W0 + ΔW
    assert np.abs(c - b).mean() > 5  # the LoRA does change the picture: the check above means something
