"""Flux.1 targets: both namespaces of a tiny FluxTransformer2DModel, checked against diffusers.

Oracles: diffusers' single-file converter (which BFL tensor is which diffusers tensor, incl. the
fused q/k/v(/MLP) row order and the swapped final AdaLayerNorm halves), and diffusers+PEFT's own
LoRA save and merge.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from dit_models import (bfl_flux_state, flux_to_diffusers, lora_file, low_rank,  # noqa: E402
                        tiny_flux, FLUX)

from lora_core.patcher import ActiveLora, Patcher  # noqa: E402
from lora_core.targets import Binding  # noqa: E402

H = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]
PREFIX = "model.diffusion_model."


def _pair(seed=0):
    """(BFL tensors as in a checkpoint, diffusers model holding the same weights via diffusers' converter)."""
    bfl = bfl_flux_state(seed)
    model = tiny_flux()
    model.load_state_dict(flux_to_diffusers(bfl), strict=True)
    return {PREFIX + k: v for k, v in bfl.items()}, model


def _value(binding, key, part="weight"):
    """What `key` names in this model, assembled in the key's own row order."""
    slot = binding.resolve(key, part)
    if slot is not None:
        t = slot.tensor.detach()
        return (t[slot.rows] if slot.rows is not None else t).clone()
    parts = binding.resolve_parts(key, part)
    if parts is None:
        return None
    rows = sum(r.stop - r.start for _s, r in parts)
    first = parts[0][0]
    out = torch.empty((rows,) + tuple(first.shape[1:]), dtype=first.tensor.dtype)
    for s, r in parts:
        t = s.tensor.detach()
        out[r] = t[s.rows] if s.rows is not None else t
    return out


def test_family_and_namespaces_detected():
    ckpt, model = _pair()
    assert Binding.from_diffusers(model).family == "flux"
    assert Binding.from_ldm(ckpt).family == "flux"
    forge = Binding.from_parts([(k[len(PREFIX):], v) for k, v in ckpt.items()], [])
    assert forge.family == "flux"


@pytest.mark.parametrize("weights_from", ["diffusers", "bfl"])
def test_every_key_names_the_same_values_in_both_layouts(weights_from):
    """Every module key of one layout, resolved on the other, gives the tensor diffusers' converter
    puts there: pairs, fused q/k/v/MLP rows, and the swapped norm_out halves."""
    ckpt, model = _pair()
    bfl, dif = Binding.from_ldm(ckpt), Binding.from_diffusers(model)
    keys = set(bfl._index) | set(bfl._parts) | set(dif._index) | set(dif._parts)
    assert "unet:double_blocks_1_txt_attn_qkv" in keys and "unet:single_transformer_blocks_1_proj_mlp" in keys
    checked = 0
    for key in sorted(keys):
        for part in ("weight", "bias"):
            a, b = _value(bfl, key, part), _value(dif, key, part)
            assert (a is None) == (b is None), (key, part)
            if a is not None:
                assert torch.equal(a, b), (key, part)
                checked += 1
    assert checked > 150
    # the swapped halves resolve only through resolve_parts, never to the plain tensor
    assert dif.resolve("unet:final_layer_adaLN_modulation_1") is None
    assert bfl.resolve("unet:norm_out_linear") is None


def _mixed_lora(seed=1, fused_algo="lora"):
    """Keys of both namespaces, as formats hands them over (diffusers names from PEFT/OneTrainer
    files, BFL names from kohya/ComfyUI files)."""
    g = torch.Generator().manual_seed(seed)
    mlp = 4 * H
    mods = {
        "unet:transformer_blocks_0_attn_to_q": low_rank(H, H, 2, g, alpha=1),
        "unet:transformer_blocks_0_attn_to_v": low_rank(H, H, 2, g),
        "unet:transformer_blocks_0_attn_add_k_proj": low_rank(H, H, 3, g),
        "unet:single_transformer_blocks_0_proj_mlp": low_rank(mlp, H, 2, g),
        "unet:single_transformer_blocks_0_attn_to_k": low_rank(H, H, 2, g),
        "unet:norm_out_linear": low_rank(2 * H, H, 2, g),
        "unet:transformer_blocks_0_ff_net_0_proj": low_rank(mlp, H, 2, g),
        "unet:double_blocks_1_img_attn_qkv": low_rank(3 * H, H, 4, g, alpha=2),
        "unet:single_blocks_1_linear1": low_rank(3 * H + mlp, H, 4, g),
        "unet:double_blocks_1_txt_mod_lin": low_rank(6 * H, H, 2, g),
    }
    if fused_algo == "dora":  # per-input-column magnitude: ΔW of each part depends on ALL of W0's rows
        algo, t = low_rank(3 * H, H, 2, g)
        t["dora_scale"] = torch.rand(1, H, generator=g) + 0.5
        mods["unet:double_blocks_0_txt_attn_qkv"] = (algo, t)
        algo, t = low_rank(3 * H + mlp, H, 2, g)
        t["dora_scale"] = torch.rand(3 * H + mlp, 1, generator=g) + 0.5
        mods["unet:single_blocks_0_linear1"] = (algo, t)
    if fused_algo == "loha":
        r = 2
        mods["unet:double_blocks_1_txt_attn_qkv"] = ("loha", {
            "hada_w1_a": torch.randn(3 * H, r, generator=g) * 0.1, "hada_w1_b": torch.randn(r, H, generator=g) * 0.1,
            "hada_w2_a": torch.randn(3 * H, r, generator=g) * 0.1, "hada_w2_b": torch.randn(r, H, generator=g) * 0.1})
        mods["unet:final_layer_adaLN_modulation_1"] = ("full", {
            "diff": torch.randn(2 * H, H, generator=g) * 0.01, "diff_b": torch.randn(2 * H, generator=g) * 0.01})
    return lora_file(mods, "flux")


@pytest.mark.parametrize("batched", [None, True], ids=["slotwise", "batched"])  # batched: the accelerator path
@pytest.mark.parametrize("fused_algo", ["lora", "loha", "dora"])
def test_same_lora_merges_identically_into_both_layouts(fused_algo, batched):
    """One LoRA with keys of both namespaces, applied to a BFL checkpoint and to the diffusers model
    holding the same weights: converting the merged checkpoint with diffusers gives the merged model."""
    ckpt, model = _pair()
    lora = _mixed_lora(fused_algo=fused_algo)
    w0_ckpt = {k: v.clone() for k, v in ckpt.items()}
    w0_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bfl_patcher = Patcher(Binding.from_ldm(ckpt), batched=batched)
    dif_patcher = Patcher(Binding.from_diffusers(model), batched=batched)
    stack = [ActiveLora(lora, te=1.0, unet=0.8)]
    r1, r2 = bfl_patcher.apply(stack), dif_patcher.apply(stack)
    for r in (r1, r2):
        assert r.loras[0].matched == len(lora.adapters) and r.loras[0].unmatched == 0, r.loras[0]
    merged_via_bfl = flux_to_diffusers({k[len(PREFIX):]: v for k, v in ckpt.items()})
    merged = model.state_dict()
    changed = 0
    for k, v in merged.items():
        torch.testing.assert_close(merged_via_bfl[k], v, rtol=0, atol=2e-6, msg=k)
        changed += not torch.equal(v, w0_model[k])
    # every part written: 7 diffusers keys + q,k,v of a qkv + q,k,v,MLP of a linear1 + txt_mod;
    # LoHa adds the txt qkv's three and the full diff its bias (norm_out.linear.bias)
    assert changed == {"lora": 15, "loha": 19, "dora": 19}[fused_algo]
    bfl_patcher.restore()
    dif_patcher.restore()
    assert all(torch.equal(ckpt[k], w0_ckpt[k]) for k in ckpt)
    assert all(torch.equal(model.state_dict()[k], w0_model[k]) for k in w0_model)


def test_low_rank_split_is_the_fused_update_exactly():
    """A kohya qkv LoRA on the diffusers model: to_q/to_k/to_v get exactly rows of scale·U@D."""
    _ckpt, model = _pair()
    g = torch.Generator().manual_seed(5)
    algo, t = low_rank(3 * H, H, 4, g, alpha=2)
    lora = lora_file({"unet:double_blocks_0_img_attn_qkv": (algo, t)}, "flux")
    w0 = {n: model.transformer_blocks[0].attn.get_submodule(n).weight.detach().clone() for n in ("to_q", "to_k", "to_v")}
    Patcher(Binding.from_diffusers(model)).apply([ActiveLora(lora, 1.0, 1.0)])
    delta = (t["lora_up.weight"] @ t["lora_down.weight"]) * (2 / 4)
    for i, n in enumerate(("to_q", "to_k", "to_v")):
        got = model.transformer_blocks[0].attn.get_submodule(n).weight.detach()
        torch.testing.assert_close(got, w0[n] + delta[i * H:(i + 1) * H], rtol=0, atol=1e-6)


def test_part_key_and_fused_key_of_two_loras_add_up():
    """A stack of a kohya LoRA (qkv, linear1) and a diffusers LoRA (to_k, proj_mlp) on the same
    tensors: both contributions land, on either layout (no write overwrites another's rows)."""
    g = torch.Generator().manual_seed(8)
    fused = lora_file({"unet:double_blocks_0_img_attn_qkv": low_rank(3 * H, H, 2, g),
                       "unet:single_blocks_0_linear1": low_rank(7 * H, H, 2, g),
                       "unet:final_layer_adaLN_modulation_1": low_rank(2 * H, H, 2, g)}, "flux", "kohya")
    parts = lora_file({"unet:transformer_blocks_0_attn_to_k": low_rank(H, H, 2, g),
                       "unet:single_transformer_blocks_0_proj_mlp": low_rank(4 * H, H, 2, g),
                       "unet:norm_out_linear": low_rank(2 * H, H, 2, g)}, "flux", "peft")

    def dw(lora, key):
        t = lora.adapters[key].tensors
        return t["lora_up.weight"] @ t["lora_down.weight"]

    ckpt, model = _pair()
    qkv = ckpt[PREFIX + "double_blocks.0.img_attn.qkv.weight"]
    lin1 = ckpt[PREFIX + "single_blocks.0.linear1.weight"]
    ada = ckpt[PREFIX + "final_layer.adaLN_modulation.1.weight"]
    expect_qkv = qkv + 0.5 * dw(fused, "unet:double_blocks_0_img_attn_qkv")
    expect_qkv[H:2 * H] += 2.0 * dw(parts, "unet:transformer_blocks_0_attn_to_k")
    expect_lin1 = lin1 + 0.5 * dw(fused, "unet:single_blocks_0_linear1")
    expect_lin1[3 * H:] += 2.0 * dw(parts, "unet:single_transformer_blocks_0_proj_mlp")
    swapped = dw(parts, "unet:norm_out_linear")
    expect_ada = ada + 0.5 * dw(fused, "unet:final_layer_adaLN_modulation_1")
    expect_ada += 2.0 * torch.cat([swapped[H:], swapped[:H]])
    stacks = [[ActiveLora(fused, 1, 0.5), ActiveLora(parts, 1, 2.0)], [ActiveLora(parts, 1, 2.0), ActiveLora(fused, 1, 0.5)]]
    for stack in stacks:
        ckpt, model = _pair()
        p_bfl, p_dif = Patcher(Binding.from_ldm(ckpt)), Patcher(Binding.from_diffusers(model))
        p_bfl.apply(stack)
        p_dif.apply(stack)
        for name, expect in (("double_blocks.0.img_attn.qkv.weight", expect_qkv),
                             ("single_blocks.0.linear1.weight", expect_lin1),
                             ("final_layer.adaLN_modulation.1.weight", expect_ada)):
            torch.testing.assert_close(ckpt[PREFIX + name], expect, rtol=0, atol=2e-6, msg=name)
        via = flux_to_diffusers({k[len(PREFIX):]: v for k, v in ckpt.items()})
        for k, v in model.state_dict().items():
            torch.testing.assert_close(via[k], v, rtol=0, atol=2e-6, msg=k)


def test_rows_that_do_not_add_up_are_refused_naming_the_module():
    ckpt, model = _pair()
    g = torch.Generator().manual_seed(3)
    bad = lora_file({"unet:double_blocks_0_img_attn_qkv": low_rank(2 * H, H, 2, g),  # 2H rows for a 3H tensor
                     "unet:transformer_blocks_1_attn_to_q": low_rank(H, H, 2, g)}, "flux")
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = Patcher(Binding.from_diffusers(model)).apply([ActiveLora(bad, 1.0, 1.0)])
    lr = report.loras[0]
    assert lr.matched == 1 and lr.unmatched == 1
    assert any("double_blocks_0_img_attn_qkv" in k and "rows" in k for k in lr.unmatched_keys)
    for n in ("to_q", "to_k", "to_v"):  # nothing of the refused module was written
        key = f"transformer_blocks.0.attn.{n}.weight"
        assert torch.equal(model.state_dict()[key], w0[key])
    # the same on the BFL layout: a to_q LoRA of the wrong width does not touch the fused tensor
    bfl = Binding.from_ldm(ckpt)
    before = ckpt[PREFIX + "double_blocks.0.img_attn.qkv.weight"].clone()
    wrong = lora_file({"unet:transformer_blocks_0_attn_to_q": low_rank(H + 1, H, 2, g)}, "flux")
    report = Patcher(bfl).apply([ActiveLora(wrong, 1.0, 1.0)])
    assert report.loras[0].matched == 0
    assert torch.equal(ckpt[PREFIX + "double_blocks.0.img_attn.qkv.weight"], before)


def test_block_ids_follow_the_lbw_flux_vector():
    ckpt, model = _pair()
    for b in (Binding.from_ldm(ckpt), Binding.from_diffusers(model)):
        assert b.resolve("unet:double_blocks_1_img_attn_proj").block == "D01"
        assert b.resolve("unet:transformer_blocks_1_attn_to_out_0").block == "D01"
        assert b.resolve("unet:single_transformer_blocks_0_proj_out").block == "S00"
        assert b.resolve("unet:img_in").block == "IN"
        assert b.resolve("unet:final_layer_linear").block == "OUT"
        assert {s.block for s, _r in (b.resolve_parts("unet:norm_out_linear")
                                      or b.resolve_parts("unet:final_layer_adaLN_modulation_1"))} == {"OUT"}
    bfl = Binding.from_ldm(ckpt)
    assert bfl.resolve("unet:single_transformer_blocks_1_attn_to_q").block == "S01"
    assert bfl.resolve("unet:single_transformer_blocks_1_attn_to_q").rows == slice(0, H)
    assert bfl.resolve("unet:single_transformer_blocks_1_proj_mlp").rows == slice(3 * H, 7 * H)


def test_block_weights_scale_double_and_single_blocks():
    """A 61-value lbw vector (CLIP, T5, IN, D00..D18, S00..S37, OUT) weights each block."""
    from lora_core.tags.block_weights import resolve

    _ckpt, model = _pair()
    g = torch.Generator().manual_seed(9)
    lora = lora_file({"unet:transformer_blocks_0_attn_to_out_0": low_rank(H, H, 2, g),
                      "unet:single_transformer_blocks_1_proj_out": low_rank(H, 5 * H, 2, g)}, "flux")
    vec = ["1"] * 61
    vec[3] = "0.5"    # D00
    vec[22 + 1] = "0"  # S01
    bw = resolve(",".join(vec), "flux")
    w0_out = model.transformer_blocks[0].attn.to_out[0].weight.detach().clone()
    w0_s1 = model.single_transformer_blocks[1].proj_out.weight.detach().clone()
    Patcher(Binding.from_diffusers(model)).apply([ActiveLora(lora, 1.0, 1.0, block_weights=bw)])
    t = lora.adapters["unet:transformer_blocks_0_attn_to_out_0"].tensors
    expect = w0_out + 0.5 * (t["lora_up.weight"] @ t["lora_down.weight"])
    torch.testing.assert_close(model.transformer_blocks[0].attn.to_out[0].weight.detach(), expect, rtol=0, atol=1e-6)
    assert torch.equal(model.single_transformer_blocks[1].proj_out.weight.detach(), w0_s1)


def test_text_encoder_block_weights_clip_and_t5():
    """Flux's CLIP-L (te1) and T5 (te3) are weighted by the vector's CLIP and T5 entries."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_core.tags.block_weights import FLUX_BLOCK_IDS, resolve

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=64, max_position_embeddings=16))
    t5 = T5EncoderModel(T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=64))
    binding = Binding.from_diffusers(tiny_flux(), [clip, t5])  # the order FluxPipeline holds them in
    assert binding.components == ("unet", "te1", "te3")
    g = torch.Generator().manual_seed(2)
    lora = lora_file({"te1:text_model_encoder_layers_0_self_attn_q_proj": low_rank(16, 16, 2, g),
                      "te3:encoder_block_0_layer_0_SelfAttention_q": low_rank(16, 16, 2, g)}, "flux")
    vec = ["1"] * len(FLUX_BLOCK_IDS)
    vec[FLUX_BLOCK_IDS.index("CLIP")], vec[FLUX_BLOCK_IDS.index("T5")] = "0.5", "0"
    q_clip = next(p for n, p in clip.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
    q_t5 = t5.encoder.block[0].layer[0].SelfAttention.q.weight
    w_clip, w_t5 = q_clip.detach().clone(), q_t5.detach().clone()
    Patcher(binding).apply([ActiveLora(lora, 1.0, 1.0, block_weights=resolve(",".join(vec), "flux"))])
    t = lora.adapters["te1:text_model_encoder_layers_0_self_attn_q_proj"].tensors
    torch.testing.assert_close(q_clip.detach(), w_clip + 0.5 * t["lora_up.weight"] @ t["lora_down.weight"],
                               rtol=0, atol=1e-6)
    assert torch.equal(q_t5.detach(), w_t5)


def test_flux_lbw_presets_and_lengths():
    from lora_core.tags.block_weights import BlockWeightError, resolve

    assert len(resolve("ALL", "flux")) == 61
    double = resolve("DOUBLE", "flux")
    assert double[3] == 1.0 and double[3 + 19] == 0.0 and double[-1] == 0.0
    assert len(resolve(",".join(["1"] * 28), "sd3")) == 28
    assert len(resolve(",".join(["1"] * 17), "sd1")) == 26  # UNet vectors unchanged
    with pytest.raises(BlockWeightError, match="61 for Flux"):
        resolve(",".join(["1"] * 30), "flux")


def test_reweighting_a_split_adapter_equals_a_fresh_apply():
    """The shared full ΔW of a split LoHa/full adapter is recomputed (or reused) consistently:
    0.8 then 0.3 gives the bits a fresh 0.3 gives; restore gives W0 back bit for bit."""
    lora = _mixed_lora(fused_algo="loha")
    _ckpt, model = _pair()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    patcher = Patcher(Binding.from_diffusers(model))
    patcher.apply([ActiveLora(lora, 1.0, 0.8)])
    patcher.apply([ActiveLora(lora, 1.0, 0.3)])
    again = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _ckpt2, fresh = _pair()
    Patcher(Binding.from_diffusers(fresh)).apply([ActiveLora(lora, 1.0, 0.3)])
    for k, v in fresh.state_dict().items():
        assert torch.equal(again[k], v), k
    patcher.restore()
    assert all(torch.equal(model.state_dict()[k], w0[k]) for k in w0)


def test_a_failing_split_adapter_rolls_the_whole_apply_back():
    """ΔW of a split (non-low-rank) adapter that fails at write time: PatchError, and every slot
    already written (parts of the fused key, other modules) is back to W0 bit for bit."""
    from lora_core.formats.lorafile import LoraFile
    from lora_core.patcher import PatchError

    class Broken:
        key = "unet:double_blocks_0_img_attn_qkv"

        def delta(self, base, dyn=None):
            raise RuntimeError("corrupt tensors")

    g = torch.Generator().manual_seed(4)
    good = lora_file({"unet:transformer_blocks_1_attn_to_q": low_rank(H, H, 2, g),
                      "unet:transformer_blocks_0_attn_to_k": low_rank(H, H, 2, g)}, "flux")
    adapters = dict(good.adapters)
    adapters[Broken.key] = Broken()
    bad = LoraFile(path="bad.safetensors", name="bad", metadata={}, adapters=adapters, family="flux")
    _ckpt, model = _pair()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    patcher = Patcher(Binding.from_diffusers(model))
    with pytest.raises(PatchError, match="double_blocks_0_img_attn_qkv"):
        patcher.apply([ActiveLora(bad, 1.0, 1.0)])
    assert all(torch.equal(model.state_dict()[k], w0[k]) for k in w0)
