"""OpenCLIP's fused q/k/v (`attn.in_proj`, SD2's text encoder and SDXL's second): a LoRA keyed by the
whole in_proj and one keyed by q/k/v parts, stacked, both land, in either order and on either model
layout (the LDM checkpoint with the fused tensor, diffusers' CLIP with q/k/v apart)."""
import torch

from targets.dit_models import lora_file, low_rank
from lora_core.patcher import ActiveLora, Patcher
from lora_core.targets import Binding
from targets.models import ldm_checkpoint, tiny_clip, tiny_unet
import pytest

CASES = {"sd2": ("te1", "cond_stage_model.model."), "sdxl": ("te2", "conditioner.embedders.1.model.")}


def _models(family):
    unet, te1 = tiny_unet(family, seed=1), tiny_clip(projection=False, seed=2)
    te2 = tiny_clip(projection=True, seed=3) if family == "sdxl" else None
    return unet, te1, te2


def _dw(lora, key):
    t = lora.adapters[key].tensors
    return t["lora_up.weight"] @ t["lora_down.weight"]


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("reverse", [False, True])
def test_in_proj_key_and_qkv_part_key_add_up(family, reverse):
    comp, prefix = CASES[family]
    unet, te1, te2 = _models(family)
    name = prefix + "transformer.resblocks.1.attn.in_proj_weight"
    w0 = ldm_checkpoint(family, unet, te1, te2)[name]
    d = w0.shape[1]
    g = torch.Generator().manual_seed(5)
    whole_key, part_key = f"{comp}:transformer_resblocks_1_attn_in_proj", f"{comp}:text_model_encoder_layers_1_self_attn_k_proj"
    whole = lora_file({whole_key: low_rank(3 * d, d, 2, g)}, family)
    part = lora_file({part_key: low_rank(d, d, 2, g)}, family)
    expect = w0 + 0.5 * _dw(whole, whole_key)
    expect[d:2 * d] += 2.0 * _dw(part, part_key)
    stack = [ActiveLora(whole, 0.5, 1.0), ActiveLora(part, 2.0, 1.0)]
    if reverse:
        stack.reverse()

    ckpt = ldm_checkpoint(family, unet, te1, te2)
    patcher = Patcher(Binding.from_ldm(ckpt))
    report = patcher.apply(stack)
    assert [(lr.matched, lr.unmatched) for lr in report.loras] == [(1, 0), (1, 0)]
    torch.testing.assert_close(ckpt[name], expect, rtol=0, atol=1e-6)
    patcher.apply([])
    assert torch.equal(ckpt[name], w0)

    # the same stack on diffusers' CLIP (q, k, v apart): the in_proj-keyed ΔW goes by rows
    _, te1b, te2b = _models(family)
    encoder = te1b if family == "sd2" else te2b
    params = dict(encoder.named_parameters())
    qkv = [next(p for n, p in params.items() if n.endswith(f"layers.1.self_attn.{x}_proj.weight")) for x in "qkv"]
    Patcher(Binding.from_diffusers(unet, [te1b, te2b])).apply(stack)
    torch.testing.assert_close(torch.cat([p.detach() for p in qkv]), expect, rtol=0, atol=1e-6)


def test_in_proj_key_of_the_wrong_width_is_refused_and_writes_nothing():
    comp, prefix = CASES["sd2"]
    unet, te1, te2 = _models("sd2")
    ckpt = ldm_checkpoint("sd2", unet, te1, te2)
    name = prefix + "transformer.resblocks.1.attn.in_proj_weight"
    w0 = ckpt[name].clone()
    d = w0.shape[1]
    bad = lora_file({f"{comp}:transformer_resblocks_1_attn_in_proj": low_rank(2 * d, d, 2, torch.Generator().manual_seed(1))}, "sd2")
    report = Patcher(Binding.from_ldm(ckpt)).apply([ActiveLora(bad, 1.0, 1.0)])
    assert report.loras[0].matched == 0 and report.loras[0].unmatched == 1
    assert torch.equal(ckpt[name], w0)
