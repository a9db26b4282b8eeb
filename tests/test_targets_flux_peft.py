"""Flux.1 against diffusers+PEFT: a PEFT LoRA on a tiny FluxTransformer2DModel (and its CLIP text
encoder), saved by ``FluxPipeline.save_lora_weights`` and merged by PEFT itself, equals lora_core's
Engine apply of that file on the diffusers model AND on the BFL single-file layout (where its
to_q/to_k/to_v/proj_mlp land in row slices of the fused tensors). Restore is bit-exact."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from dit_models import bfl_flux_state, flux_to_diffusers, tiny_flux  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.targets import Binding  # noqa: E402

PREFIX = "model.diffusion_model."
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "proj_mlp", "proj_out", "norm1.linear", "norm.linear", "norm_out.linear", "ff.net.0.proj",
           "ff_context.net.2", "x_embedder", "context_embedder"]


def _tiny_clip(seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, vocab_size=64, max_position_embeddings=16))


def _plain_state(module):
    """A module's weights by plain name: PEFT's base_layer level removed, its adapters left out."""
    out = {}
    for name, t in module.state_dict().items():
        if "lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = t.detach().clone()
    return out


@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    torch.set_num_threads(1)
    bfl = bfl_flux_state(seed=4)
    base = flux_to_diffusers(bfl)
    ref = tiny_flux()
    ref.load_state_dict(base, strict=True)
    te_ref = _tiny_clip()
    te_base = {k: v.clone() for k, v in te_ref.state_dict().items()}
    cfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights="gaussian", target_modules=TARGETS)
    te_cfg = LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"])
    ref.add_adapter(cfg)
    from peft import inject_adapter_in_model
    inject_adapter_in_model(te_cfg, te_ref)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # PEFT initialises lora_B to zero: give it values so ΔW ≠ 0
        for model in (ref, te_ref):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("flux_peft")
    FluxPipeline.save_lora_weights(
        out, transformer_lora_layers=get_peft_model_state_dict(ref),
        text_encoder_lora_layers=get_peft_model_state_dict(te_ref),
        transformer_lora_adapter_metadata=cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict())
    for model in (ref, te_ref):  # PEFT's own merge: the reference
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.merge()
    return {"file": str(out / "pytorch_lora_weights.safetensors"), "bfl": bfl, "base": base,
            "te_base": te_base, "merged": _plain_state(ref), "te_merged": _plain_state(te_ref)}


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=what)


def test_flux_peft_file_on_diffusers_model_equals_peft_merge(peft_case):
    model, te = tiny_flux(), _tiny_clip()
    model.load_state_dict(peft_case["base"], strict=True)
    te.load_state_dict(peft_case["te_base"], strict=True)
    engine = Engine(Binding.from_diffusers(model, [te]))
    assert engine.family == "flux"
    report = engine.apply([ApplyRequest(peft_case["file"], 1.0, 1.0)])
    lr = report.loras[0]
    assert lr.applied and lr.unmatched == 0 and lr.matched > 40, (lr, report.warnings)
    merged = model.state_dict()
    assert any(not torch.equal(merged[k], peft_case["base"][k]) for k in merged)
    for k, v in peft_case["merged"].items():
        _close(merged[k], v, k)
    te_merged = te.state_dict()
    assert any(not torch.equal(te_merged[k], peft_case["te_base"][k]) for k in te_merged)
    for k, v in peft_case["te_merged"].items():
        _close(te_merged[k], v, k)
    engine.restore()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in peft_case["base"].items())
    assert all(torch.equal(te.state_dict()[k], v) for k, v in peft_case["te_base"].items())


def test_flux_peft_file_on_bfl_checkpoint_equals_peft_merge(peft_case):
    """The diffusers-namespace file on the BFL layout: fused qkv / linear1 rows, swapped norm_out."""
    ckpt = {PREFIX + k: v.clone() for k, v in peft_case["bfl"].items()}
    w0 = {k: v.clone() for k, v in ckpt.items()}
    engine = Engine(Binding.from_ldm(ckpt))
    report = engine.apply([ApplyRequest(peft_case["file"], 1.0, 1.0)])
    lr = report.loras[0]
    # the CLIP modules have no encoder here; every transformer module matched
    from lora_core.formats.lorafile import load_lora

    n_unet = sum(k.startswith("unet:") for k in load_lora(peft_case["file"]).adapters)
    assert lr.applied and lr.matched == n_unet > 30, (lr, report.warnings)
    assert all(k.startswith("te1:") for k in lr.unmatched_keys), lr.unmatched_keys
    merged = flux_to_diffusers({k[len(PREFIX):]: v for k, v in ckpt.items()})
    for k, v in peft_case["merged"].items():
        _close(merged[k], v, k)
    engine.restore()
    assert all(torch.equal(ckpt[k], w0[k]) for k in ckpt)


def _kohya_flux_file(path, gen):
    """A kohya (sd-scripts) Flux LoRA: BFL module names, fused qkv. linear1 is left out: diffusers'
    kohya converter splits it at the full model's fixed widths."""
    from safetensors.torch import save_file

    h, mlp = 16, 64
    mods = {"double_blocks_0_img_attn_qkv": (3 * h, h), "double_blocks_1_txt_attn_qkv": (3 * h, h),
            "double_blocks_0_img_mlp_0": (mlp, h), "double_blocks_1_txt_mod_lin": (6 * h, h),
            "double_blocks_0_txt_attn_proj": (h, h), "single_blocks_1_linear2": (h, h + mlp),
            "single_blocks_0_modulation_lin": (3 * h, h)}
    t = {}
    for name, (out, inp) in mods.items():
        t[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 4, generator=gen) * 0.1
        t[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, inp, generator=gen) * 0.1
        t[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    save_file(t, str(path))
    return len(mods)


@pytest.mark.parametrize("layout", ["diffusers", "bfl"])
def test_kohya_flux_file_equals_diffusers_conversion_and_peft_merge(tmp_path, layout):
    """Oracle: diffusers reads the kohya file (its converter splits each qkv into to_q/to_k/to_v),
    loads it as a PEFT adapter and fuses it; lora_core applies the file as it is."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(21)
    path = tmp_path / "kohya_flux.safetensors"
    n = _kohya_flux_file(path, g)
    bfl = bfl_flux_state(seed=7)
    base = flux_to_diffusers(bfl)
    ref = tiny_flux()
    ref.load_state_dict(base, strict=True)
    sd = FluxPipeline.lora_state_dict(str(path))
    sd = sd[0] if isinstance(sd, tuple) else sd
    assert any(".attn.to_q.lora_A" in k for k in sd)  # diffusers split the fused qkv
    ref.load_lora_adapter(sd, prefix="transformer", adapter_name="k")
    ref.fuse_lora(lora_scale=1.0)
    expect = {k.replace(".base_layer.", "."): v.detach() for k, v in ref.state_dict().items() if "lora_" not in k}
    if layout == "diffusers":
        model = tiny_flux()
        model.load_state_dict(base, strict=True)
        engine = Engine(Binding.from_diffusers(model))
    else:
        ckpt = {PREFIX + k: v.clone() for k, v in bfl.items()}
        engine = Engine(Binding.from_ldm(ckpt))
    report = engine.apply([ApplyRequest(str(path), 1.0, 1.0)])
    assert report.loras[0].matched == n and report.loras[0].unmatched == 0, report.loras[0]
    state = model.state_dict() if layout == "diffusers" else flux_to_diffusers(
        {k[len(PREFIX):]: v for k, v in ckpt.items()})
    assert sum(not torch.equal(state[k], base[k]) for k in base) == 3 + 3 + 1 + 1 + 1 + 1 + 1
    for k, v in expect.items():
        _close(state[k], v, k)


@pytest.mark.parametrize("layout", ["diffusers", "bfl"])
def test_xlabs_flux_file_equals_diffusers_conversion_and_peft_merge(tmp_path, layout):
    """XLabs' double-block processor LoRAs (qkv_lora1 = image q/k/v, qkv_lora2 = text q/k/v,
    proj_lora1/2 = the output projections): diffusers converts and fuses, lora_core applies."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(31)
    h, t = 16, {}
    for i in range(2):
        for name, out in (("qkv_lora1", 3 * h), ("qkv_lora2", 3 * h), ("proj_lora1", h), ("proj_lora2", h)):
            t[f"double_blocks.{i}.processor.{name}.down.weight"] = torch.randn(4, h, generator=g) * 0.1
            t[f"double_blocks.{i}.processor.{name}.up.weight"] = torch.randn(out, 4, generator=g) * 0.1
    path = tmp_path / "xlabs_flux.safetensors"
    save_file(t, str(path))
    bfl = bfl_flux_state(seed=8)
    base = flux_to_diffusers(bfl)
    ref = tiny_flux()
    ref.load_state_dict(base, strict=True)
    sd = FluxPipeline.lora_state_dict(str(path))
    sd = sd[0] if isinstance(sd, tuple) else sd
    ref.load_lora_adapter(sd, prefix="transformer", adapter_name="x")
    ref.fuse_lora(lora_scale=1.0)
    expect = {k.replace(".base_layer.", "."): v.detach() for k, v in ref.state_dict().items() if "lora_" not in k}
    if layout == "diffusers":
        model = tiny_flux()
        model.load_state_dict(base, strict=True)
        engine = Engine(Binding.from_diffusers(model))
    else:
        ckpt = {PREFIX + k: v.clone() for k, v in bfl.items()}
        engine = Engine(Binding.from_ldm(ckpt))
    report = engine.apply([ApplyRequest(str(path), 1.0, 1.0)])
    assert report.loras[0].matched == 8 and report.loras[0].unmatched == 0, report.loras[0]
    state = model.state_dict() if layout == "diffusers" else flux_to_diffusers(
        {k[len(PREFIX):]: v for k, v in ckpt.items()})
    assert sum(not torch.equal(state[k], base[k]) for k in base) == 2 * (3 + 3 + 2)
    for k, v in expect.items():
        _close(state[k], v, k)
