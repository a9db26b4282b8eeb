"""Weights stored in fp8 (float8_e4m3fn / float8_e5m2, how many people run Flux): a slot is
dequantised, merged in fp32 and rounded back to nearest once; restore is bit for bit.

Oracles: the float64 merge of the fakes (rounded once to fp8), and diffusers+PEFT's own fused
weights for a real LoRA file on a tiny UNet whose weights were cast to fp8."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "patcher"))
from patcher_fakes import FakeBinding, make_lora, oracle  # noqa: E402
from engine_makers import base_models  # noqa: E402
from engine_makers import make_lora as make_lora_file  # noqa: E402

from lora_core.patcher import ActiveLora, Patcher  # noqa: E402

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def fp8_steps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between two fp8 tensors in representable steps (bit patterns of one sign
    order magnitudes like integers)."""
    def ordinal(t):
        bits = t.view(torch.uint8).to(torch.int32)
        return torch.where(bits >= 0x80, -(bits - 0x80), bits)
    return int((ordinal(a) - ordinal(b)).abs().max())


@pytest.mark.parametrize("dtype", FP8)
def test_fp8_weights_merge_within_one_step_of_the_exact_merge_and_restore_bitwise(dtype):
    model = FakeBinding(seed=4, dtype=dtype)
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=5, full_keys=("unet:up_conv",), bias=True)
    other = make_lora(model, "b", seed=6)
    patcher = Patcher(model)
    for stack in ([ActiveLora(lora, te=0.7, unet=1.3)],
                  [ActiveLora(lora, unet=0.5), ActiveLora(other, te=-1.0)],   # reweight + stack
                  [ActiveLora(other)]):                                        # switch
        patcher.apply(stack)
        want = oracle(model, w0, stack)
        changed = 0
        for name, live in model.tensors.items():
            assert live.dtype == w0[name].dtype
            if live.dtype == dtype:
                assert fp8_steps(live.detach(), want[name]) <= 1, name
                changed += int(not torch.equal(live.detach().view(torch.uint8), w0[name].view(torch.uint8)))
        assert changed >= 4  # the LoRAs are big enough to move fp8 values: the check is not vacuous
    patcher.restore()
    for name, live in model.tensors.items():
        assert torch.equal(live.detach().view(torch.uint8), w0[name].view(torch.uint8)), name


def test_fp8_merge_saturates_instead_of_overflowing_to_nan():
    model = FakeBinding(seed=4, dtype=torch.float8_e4m3fn)
    w0 = model.snapshot()
    lora = make_lora(model, "a", seed=5)
    Patcher(model).apply([ActiveLora(lora, unet=1e6, te=1e6)])  # a hostile weight
    for name, live in model.tensors.items():
        if live.dtype == torch.float8_e4m3fn and not torch.equal(live.view(torch.uint8), w0[name].view(torch.uint8)):
            values = live.detach().float()
            assert torch.isfinite(values).all(), name
            assert values.abs().max() <= torch.finfo(torch.float8_e4m3fn).max


def test_fp8_unet_through_the_engine_matches_diffusers_peft_fused_weights(tmp_path):
    """A real PEFT file (saved by diffusers) on a UNet stored in fp8: our merge equals diffusers'
    fp32 fuse_lora of the same file on the fp8-valued weights, rounded to fp8 (within one step)."""
    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding

    path = make_lora_file(tmp_path, "l", seed=3, with_te=False)
    unet, _te = base_models()
    for p in unet.parameters():
        p.data = p.data.to(torch.float8_e4m3fn)
    pristine = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    engine = Engine(Binding.from_diffusers(unet, None))
    report = engine.apply([ApplyRequest(path, te=1.0, unet=0.8)])
    assert report.loras[0].matched > 0 and not report.warnings

    # diffusers' fuse on an fp32 UNet that holds exactly the fp8 values
    reference_unet, _ = base_models()
    with torch.no_grad():
        for name, p in reference_unet.named_parameters():
            p.copy_(pristine[name].float())
    fused = diffusers_fused_unet_from(reference_unet, path, 0.8)
    moved = 0
    for name, live in unet.state_dict().items():
        if name in fused and live.dtype == torch.float8_e4m3fn:
            want = fused[name].to(torch.float8_e4m3fn)
            assert fp8_steps(live, want) <= 1, name
            moved += int(not torch.equal(live.view(torch.uint8), pristine[name].view(torch.uint8)))
    assert moved > 0
    engine.restore()
    for name, live in unet.state_dict().items():
        assert torch.equal(live.view(torch.uint8), pristine[name].view(torch.uint8)), name


def diffusers_fused_unet_from(unet, path, weight):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    state, alphas, metadata = Loader.lora_state_dict(path, return_lora_metadata=True)
    Loader.load_lora_into_unet(state, alphas, unet, adapter_name="a", metadata=metadata)
    unet.set_adapters(["a"], [weight])
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}
