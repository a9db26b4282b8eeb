"""SD3 / SD3.5 targets: both namespaces of a tiny SD3Transformer2DModel (SD3.5-medium-like: dual
attention in block 0, qk norms, a context_pre_only last block) and its three text encoders.

Oracles: diffusers' single-file converters (transformer, CLIP prefixes, T5 prefix) and
diffusers+PEFT (``StableDiffusion3Pipeline.save_lora_weights`` + PEFT's merge)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from dit_models import SD3, lora_file, low_rank, mmdit_sd3_state, sd3_to_diffusers, tiny_sd3  # noqa: E402

from lora_core.engine import Engine  # noqa: E402
from lora_core.patcher import ActiveLora, Patcher  # noqa: E402
from lora_core.request import ApplyRequest  # noqa: E402
from lora_core.targets import Binding, naming  # noqa: E402

H = SD3["num_attention_heads"] * SD3["attention_head_dim"]
PREFIX = "model.diffusion_model."


def _clip(projection: bool, width: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16, projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(seed=0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, vocab_size=64,
                                   feed_forward_proj="gated-gelu"))


def _pair(seed=0):
    mm = mmdit_sd3_state(seed)
    model = tiny_sd3()
    model.load_state_dict(sd3_to_diffusers(mm), strict=True)
    return {PREFIX + k: v for k, v in mm.items()}, model


def _value(binding, key, part="weight"):
    slot = binding.resolve(key, part)
    if slot is not None:
        t = slot.tensor.detach()
        return (t[slot.rows] if slot.rows is not None else t).clone()
    parts = binding.resolve_parts(key, part)
    if parts is None:
        return None
    first = parts[0][0]
    out = torch.empty((sum(r.stop - r.start for _s, r in parts),) + tuple(first.shape[1:]), dtype=first.tensor.dtype)
    for s, r in parts:
        t = s.tensor.detach()
        out[r] = t[s.rows] if s.rows is not None else t
    return out


def test_every_key_names_the_same_values_in_both_layouts():
    ckpt, model = _pair()
    mm, dif = Binding.from_ldm(ckpt), Binding.from_diffusers(model)
    assert mm.family == dif.family == "sd3"
    keys = set(mm._index) | set(mm._parts) | set(dif._index) | set(dif._parts)
    for must in ("unet:joint_blocks_0_x_block_attn2_qkv", "unet:transformer_blocks_0_attn2_to_k",
                 "unet:joint_blocks_2_context_block_adaLN_modulation_1", "unet:transformer_blocks_2_norm1_context_linear",
                 "unet:x_embedder_proj", "unet:pos_embed_proj", "unet:norm_out_linear"):
        assert must in keys, must
    checked = 0
    keys.discard("unet:pos_embed")  # a buffer in diffusers (not a parameter), a tensor in the checkpoint
    for key in sorted(keys):
        for part in ("weight", "bias"):
            a, b = _value(mm, key, part), _value(dif, key, part)
            assert (a is None) == (b is None), (key, part)
            if a is not None:
                assert torch.equal(a, b), (key, part)
                checked += 1
    assert checked > 150
    # the last block's context modulation is swapped (context_pre_only); the others are not
    assert dif.resolve("unet:joint_blocks_2_context_block_adaLN_modulation_1") is None
    assert dif.resolve("unet:joint_blocks_1_context_block_adaLN_modulation_1") is not None


def test_text_encoders_of_a_single_file_checkpoint():
    """CLIP-L, CLIP-G and T5 under `text_encoders.*` (the prefixes diffusers' single-file loader
    strips) resolve to the tensors the diffusers encoders hold, as te1, te2, te3."""
    import inspect

    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu)
    for prefix, _c, _ns in naming.DIT_TEXT_PREFIXES:
        assert f'"{prefix}' in src, prefix
    te1, te2, t5 = _clip(False, 16, 1), _clip(True, 24, 2), _t5(3)
    ckpt = {}
    for prefix, m in zip(("clip_l", "clip_g", "t5xxl"), (te1, te2, t5)):
        ckpt.update({f"text_encoders.{prefix}.transformer.{k}": v for k, v in m.state_dict().items()})
    single = Binding.from_ldm(ckpt)
    dif = Binding.from_diffusers(None, [te1, te2, t5])
    assert single.components == dif.components == ("te1", "te2", "te3")
    for key in ("te1:text_model_encoder_layers_1_self_attn_q_proj", "te2:text_projection",
                "te3:encoder_block_0_layer_0_SelfAttention_q", "te3:encoder_block_1_layer_1_DenseReluDense_wi_0"):
        assert torch.equal(_value(single, key), _value(dif, key)), key
    assert single.resolve("te3:encoder_block_1_layer_1_DenseReluDense_wo").name == \
        "text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wo.weight"
    # Forge: the same encoders as clip_l / clip_g / t5xxl attributes, HF names
    forge = Binding.from_parts([], [(c, ns, k, v) for attr, c, ns in naming.FORGE_TEXT_ENCODERS
                                    for m in [dict(zip(("clip_l", "clip_g", "t5xxl"), (te1, te2, t5))).get(attr)]
                                    if m is not None for k, v in m.state_dict().items()], family="sd3")
    assert forge.resolve("te3:encoder_block_0_layer_0_SelfAttention_q").block == "T5"
    assert forge.resolve("te2:text_model_encoder_layers_0_mlp_fc1").block == "CLIP"


def test_same_lora_merges_identically_into_both_layouts():
    ckpt, model = _pair()
    g = torch.Generator().manual_seed(2)
    lora = lora_file({
        "unet:transformer_blocks_0_attn_to_k": low_rank(H, H, 2, g),
        "unet:transformer_blocks_0_attn2_to_v": low_rank(H, H, 2, g),
        "unet:transformer_blocks_1_attn_add_q_proj": low_rank(H, H, 2, g),
        "unet:transformer_blocks_2_norm1_context_linear": low_rank(2 * H, H, 2, g),
        "unet:norm_out_linear": low_rank(2 * H, H, 2, g),
        "unet:joint_blocks_1_x_block_attn_qkv": low_rank(3 * H, H, 3, g, alpha=1.5),
        "unet:joint_blocks_0_context_block_attn_qkv": ("full", {"diff": torch.randn(3 * H, H, generator=g) * 0.01}),
        "unet:joint_blocks_1_context_block_mlp_fc1": low_rank(4 * H, H, 2, g),
    }, "sd3")
    w0_ckpt = {k: v.clone() for k, v in ckpt.items()}
    w0_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    p1, p2 = Patcher(Binding.from_ldm(ckpt)), Patcher(Binding.from_diffusers(model))
    stack = [ActiveLora(lora, 1.0, 0.7)]
    for r in (p1.apply(stack), p2.apply(stack)):
        assert r.loras[0].matched == len(lora.adapters) and r.loras[0].unmatched == 0, r.loras[0]
    via = sd3_to_diffusers({k[len(PREFIX):]: v for k, v in ckpt.items()})
    merged = model.state_dict()
    changed = 0
    for k, v in merged.items():
        torch.testing.assert_close(via[k], v, rtol=0, atol=2e-6, msg=k)
        changed += not torch.equal(v, w0_model[k])
    assert changed == 5 + 3 + 3 + 1
    p1.restore()
    p2.restore()
    assert all(torch.equal(ckpt[k], w0_ckpt[k]) for k in ckpt)
    assert all(torch.equal(model.state_dict()[k], w0_model[k]) for k in w0_model)


@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    torch.set_num_threads(1)
    mm = mmdit_sd3_state(seed=6)
    base = sd3_to_diffusers(mm)
    ref = tiny_sd3()
    ref.load_state_dict(base, strict=True)
    # diffusers' SD3 training default (to_q/to_k/to_v/to_out.0) plus the context stream and norms
    cfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights="gaussian",
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "to_add_out",
                                     "norm1_context.linear", "norm_out.linear", "ff.net.2"])
    ref.add_adapter(cfg)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("sd3_peft")
    StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(ref),
                                               transformer_lora_adapter_metadata=cfg.to_dict())
    for m in ref.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    merged = {k.replace(".base_layer.", "."): v.detach().clone() for k, v in ref.state_dict().items() if "lora_" not in k}
    return {"file": str(out / "pytorch_lora_weights.safetensors"), "mm": mm, "base": base, "merged": merged}


@pytest.mark.parametrize("layout", ["diffusers", "mmdit"])
def test_sd3_peft_file_equals_peft_merge(peft_case, layout):
    if layout == "diffusers":
        model = tiny_sd3()
        model.load_state_dict(peft_case["base"], strict=True)
        engine = Engine(Binding.from_diffusers(model))
    else:
        ckpt = {PREFIX + k: v.clone() for k, v in peft_case["mm"].items()}
        engine = Engine(Binding.from_ldm(ckpt))
    report = engine.apply([ApplyRequest(peft_case["file"], 1.0, 1.0)])
    lr = report.loras[0]
    assert lr.applied and lr.unmatched == 0 and lr.matched > 20, (lr, report.warnings)
    state = model.state_dict() if layout == "diffusers" else sd3_to_diffusers(
        {k[len(PREFIX):]: v for k, v in ckpt.items()})
    assert any(not torch.equal(state[k], peft_case["base"][k]) for k in peft_case["base"])
    for k, v in peft_case["merged"].items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6, msg=k)
    engine.restore()
    if layout == "diffusers":
        assert all(torch.equal(model.state_dict()[k], v) for k, v in peft_case["base"].items())
    else:
        assert all(torch.equal(ckpt[PREFIX + k], v) for k, v in peft_case["mm"].items())
