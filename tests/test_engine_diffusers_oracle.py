"""Merged weights against real producers: diffusers' own load_lora_adapter + set_adapters +
fuse_lora for the UNet, PEFT's LoraLayer.merge for the text encoder, on PEFT LoRAs saved by
diffusers' save_lora_weights (and their kohya conversion)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from engine_makers import base_models, diffusers_fused_unet, make_lora, peft_merged_text_encoder  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.targets import Binding  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(d, "a", seed=1, rank=4, alpha=8.0),
        "b": make_lora(d, "b", seed=2, rank=8, alpha=4.0),
        "a_kohya": make_lora(d, "a_kohya", seed=1, rank=4, alpha=8.0, kohya=True),
    }


def _max_diff(state, want):
    assert set(want) <= set(state)
    return max((state[k].double() - want[k].double()).abs().max().item() for k in want)


def _changed(state, base):
    return {k for k in base if not torch.equal(state[k], base[k])}


def test_single_lora_matches_diffusers_fuse(files):
    unet, te = base_models()
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    engine = Engine(Binding.from_diffusers(unet, [te]))
    report = engine.apply([ApplyRequest(files["a"], 1.0, 0.7, None, None)])
    assert report.loras[0].unmatched == 0 and report.loras[0].matched == 54  # 3 transformer blocks × 8 + 3 × 2 proj, + 6 te modules
    want = diffusers_fused_unet([(files["a"], 0.7)])
    ours = unet.state_dict()
    assert _changed(ours, w0) == _changed(want, w0) and _changed(want, w0)
    assert _max_diff(ours, want) < 1e-6
    engine.restore()
    assert all(torch.equal(unet.state_dict()[k], w0[k]) for k in w0)


def test_stack_of_two_matches_set_adapters_fuse(files):
    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    engine.apply([ApplyRequest(files["a"], 1.0, 0.7), ApplyRequest(files["b"], 1.0, -0.4)])
    want = diffusers_fused_unet([(files["a"], 0.7), (files["b"], -0.4)])
    assert _max_diff(unet.state_dict(), want) < 1e-6
    # reweighting one of them still matches diffusers' result for the new weights
    engine.apply([ApplyRequest(files["a"], 1.0, 0.7), ApplyRequest(files["b"], 1.0, 1.2)])
    want = diffusers_fused_unet([(files["a"], 0.7), (files["b"], 1.2)])
    assert _max_diff(unet.state_dict(), want) < 1e-6


def test_kohya_conversion_gives_the_same_weights(files):
    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    engine.apply([ApplyRequest(files["a_kohya"], 1.0, 0.7)])
    want = diffusers_fused_unet([(files["a"], 0.7)])
    assert _max_diff(unet.state_dict(), want) < 1e-6


def test_text_encoder_matches_peft_merge(files):
    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    report = engine.apply([ApplyRequest(files["a"], 0.5, 1.0)])
    assert not report.warnings, report.warnings
    want = peft_merged_text_encoder(files["a"], 0.5)
    assert want
    modules = dict(te.named_modules())
    for name, w in want.items():
        ours = modules[name].weight.detach()
        assert (ours - w).abs().max().item() < 1e-6, name
