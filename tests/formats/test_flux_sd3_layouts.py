"""Flux.1 and SD3/3.5 LoRAs in every key layout (issue 16, formats): each file read into canonical
keys whose ΔW equals what the producer (or diffusers' own converter for that layout) means.

Oracles: PEFT's `get_delta_weight` on tiny FluxTransformer2DModel / SD3Transformer2DModel built from
config and saved with diffusers' `save_lora_weights`; diffusers' `lora_conversion_utils` converters
for the kohya, ComfyUI/BFL, XLabs and OneTrainer layouts (our ΔW on a fused key equals the
concatenation of the converted q/k/v ΔWs); LyCORIS' own forward for LoKr/LoHa.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from dit_makers import (FLUX_TARGETS, SD3_TARGETS, base_weights, flat, peft_lora, tiny_flux,  # noqa: E402
                        tiny_sd3)

from lora_core.formats import LoraFormatError, load_lora  # noqa: E402

torch.set_num_threads(1)
ATOL = 1e-5


def _close(ours, ref, what):
    """Equal up to float32 rounding of sums taken in another order: the absolute tolerance grows
    with the largest entry (a 3072-long dot product whose entries reach ~8 differs by up to 4e-5
    between CPUs' matmul kernels, measured on an AMD EPYC); a wrong scale or slice is off by O(1)."""
    assert ours.shape == ref.shape, what
    atol = ATOL * max(1.0, float(ref.abs().max()))
    assert torch.allclose(ours, ref, atol=atol, rtol=1e-4), f"{what}: max |Δ| {float((ours - ref).abs().max())}"


def _rand(*shape, seed=[0]):
    seed[0] += 1
    g = torch.Generator().manual_seed(seed[0])
    return torch.randn(*shape, generator=g) * 0.2


# ------------------------------------------------------------------ diffusers / PEFT (real producer)

@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_diffusers_save_lora_weights_matches_peft(tmp_path, family):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    model = tiny_flux() if family == "flux" else tiny_sd3()
    targets = FLUX_TARGETS if family == "flux" else SD3_TARGETS
    # alpha and rank patterns ride in the file's lora_adapter_metadata
    cfg, state, reference = peft_lora(model, targets, rank=4, alpha=8, rank_pattern={"to_k": 2},
                                      alpha_pattern={"to_v": 3})
    pipeline = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    pipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=state,
                               transformer_lora_adapter_metadata=cfg.to_dict())
    lora = load_lora(tmp_path / "pytorch_lora_weights.safetensors")
    assert lora.layout == "diffusers" and not lora.unclaimed
    weights = base_weights(model)
    assert set(lora.adapters) == {f"unet:{flat(n)}" for n in reference}
    for name, ref in reference.items():
        _close(lora.adapters[f"unet:{flat(name)}"].delta(weights[name]), ref, name)


@pytest.mark.parametrize("spelling", ["bare", "adapter-name", "peft-wrapper", "ai-toolkit-lora_down"])
def test_peft_state_dict_spellings(tmp_path, spelling):
    """PEFT on a bare transformer (no component prefix), keys with the adapter name, PEFT's
    `base_model.model.` wrapper, and the `transformer.` + lora_down/lora_up mixture diffusers also reads."""
    model = tiny_flux()
    _cfg, state, reference = peft_lora(model, ["to_q", "add_k_proj", "proj_mlp"], rank=4, alpha=4)  # alpha=rank
    if spelling == "adapter-name":
        state = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                 for k, v in state.items()}
    elif spelling == "peft-wrapper":
        state = {f"base_model.model.{k}": v for k, v in state.items()}
    elif spelling == "ai-toolkit-lora_down":
        state = {"transformer." + k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v
                 for k, v in state.items()}
    save_file(state, str(tmp_path / "f.safetensors"))
    lora = load_lora(tmp_path / "f.safetensors")
    weights = base_weights(model)
    assert set(lora.adapters) == {f"unet:{flat(n)}" for n in reference}
    for name, ref in reference.items():
        _close(lora.adapters[f"unet:{flat(name)}"].delta(weights[name]), ref, name)


# ------------------------------------------------------------------ kohya / ComfyUI / BFL (diffusers' converter)

def _lora(rank, out_dim, in_dim, alpha=None):
    t = {"lora_down.weight": _rand(rank, in_dim), "lora_up.weight": _rand(out_dim, rank)}
    if alpha is not None:
        t["alpha"] = torch.tensor(float(alpha))
    return t


D = 16   # model width of the hand-made Flux files (the converter fixes linear1's split at Flux's real 3072)
KOHYA_FLUX = {   # BFL module -> (out, in)
    "double_blocks_0_img_attn_qkv": (3 * D, D), "double_blocks_0_txt_attn_qkv": (3 * D, D),
    "double_blocks_0_img_attn_proj": (D, D), "double_blocks_0_txt_attn_proj": (D, D),
    "double_blocks_0_img_mlp_0": (4 * D, D), "double_blocks_0_txt_mlp_2": (D, 4 * D),
    "double_blocks_0_img_mod_lin": (6 * D, D),
    "single_blocks_0_linear1": (3 * 3072 + 12288, 3072), "single_blocks_0_linear2": (D, 5 * D),
}
# BFL module -> the diffusers modules its rows go to, in order (as the converter splits them)
BFL_PARTS = {
    "double_blocks_0_img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"],
    "double_blocks_0_txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"],
    "double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
    "double_blocks_0_txt_attn_proj": ["transformer_blocks.0.attn.to_add_out"],
    "double_blocks_0_img_mlp_0": ["transformer_blocks.0.ff.net.0.proj"],
    "double_blocks_0_txt_mlp_2": ["transformer_blocks.0.ff_context.net.2"],
    "double_blocks_0_img_mod_lin": ["transformer_blocks.0.norm1.linear"],
    "single_blocks_0_linear1": ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"],
    "single_blocks_0_linear2": ["single_transformer_blocks.0.proj_out"],
}


def _converted_delta(converted: dict, module: str) -> torch.Tensor:
    """ΔW of one module of a diffusers-format dict the converters return (alpha baked in: scale 1)."""
    a = converted[f"transformer.{module}.lora_A.weight"].float()
    b = converted[f"transformer.{module}.lora_B.weight"].float()
    return b @ a


def _fused_reference(converted, bfl):
    return torch.cat([_converted_delta(converted, part) for part in BFL_PARTS[bfl]], 0)


def _check_fused(lora, converted, keys=KOHYA_FLUX):
    probe = _rand(3072, 24)   # linear1 is 21504×3072: compare ΔW·X for a random X (rank ≤ 8 < 24: exact)
    for bfl, (out_dim, in_dim) in keys.items():
        adapter = lora.adapters[f"unet:{bfl}"]
        ref = _fused_reference(converted, bfl)
        if in_dim == 3072:
            up, down, scale = adapter.low_rank()
            _close(scale * up.float() @ (down.float() @ probe), ref @ probe, bfl)
        else:
            _close(adapter.delta(torch.zeros(out_dim, in_dim)), ref, bfl)


def _kohya_flux_dict(prefix="lora_unet_", dotted=False, suffixes=("lora_down.weight", "lora_up.weight")):
    sd = {}
    for i, (bfl, (out_dim, in_dim)) in enumerate(KOHYA_FLUX.items()):
        name = bfl
        if dotted:   # ComfyUI: dotted BFL module paths
            name = (bfl.replace("double_blocks_0_", "double_blocks.0.").replace("single_blocks_0_", "single_blocks.0.")
                    .replace("img_attn_", "img_attn.").replace("txt_attn_", "txt_attn.")
                    .replace("img_mlp_", "img_mlp.").replace("txt_mlp_", "txt_mlp.").replace("mod_lin", "mod.lin"))
        t = _lora(2 if in_dim == 3072 else 4, out_dim, in_dim, alpha=None if "lora_A" in suffixes[0] else 1.0 + i)
        sd[f"{prefix}{name}.{suffixes[0]}"] = t["lora_down.weight"]
        sd[f"{prefix}{name}.{suffixes[1]}"] = t["lora_up.weight"]
        if "alpha" in t:
            sd[f"{prefix}{name}.alpha"] = t["alpha"]
    return sd


def _kohya_spelling(sd: dict) -> dict:
    """The test's own renaming of BFL `[base_model.model.][diffusion_model.]a.b.lora_A.weight` keys to
    kohya's `lora_unet_a_b.lora_down.weight`, for diffusers' kohya converter."""
    out = {}
    for k, v in sd.items():
        module, _, kind = k.removeprefix("base_model.model.").removeprefix("diffusion_model.").rpartition(".lora_")
        suffix = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
        out["lora_unet_" + module.replace(".", "_") + "." + suffix] = v
    return out


@pytest.mark.parametrize("spelling", ["kohya", "kohya-old-lora_flux", "comfyui-lora_down"])
def test_kohya_and_comfyui_flux_match_diffusers_converter(tmp_path, spelling):
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    sd = _kohya_flux_dict(dotted=spelling.startswith("comfyui"),
                          prefix={"kohya": "lora_unet_", "kohya-old-lora_flux": "lora_flux_",
                                  "comfyui-lora_down": "diffusion_model."}[spelling])
    save_file(sd, str(tmp_path / "f.safetensors"))
    lora = load_lora(tmp_path / "f.safetensors")
    assert lora.layout == ("comfyui" if spelling.startswith("comfyui") else "kohya")
    assert lora.family == "flux" and not lora.unclaimed
    assert set(lora.adapters) == {f"unet:{k}" for k in KOHYA_FLUX}
    oracle_input = sd if spelling != "kohya-old-lora_flux" else {
        k.replace("lora_flux_", "lora_unet_"): v for k, v in sd.items()}
    converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in oracle_input.items()})
    _check_fused(lora, converted)


@pytest.mark.parametrize("wrapper", ["diffusion_model.", "base_model.model.diffusion_model.", ""])
def test_bfl_lora_a_b_matches_diffusers_converter(tmp_path, wrapper):
    """BFL/ComfyUI generic: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, with or
    without `base_model.model.`, and BFL's bare names (control LoRAs)."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    sd = _kohya_flux_dict(prefix=wrapper, dotted=True, suffixes=("lora_A.weight", "lora_B.weight"))
    sd[f"{wrapper}double_blocks.0.img_attn.qkv.lora_B.bias"] = torch.zeros(3 * D)   # a Δbias: not an up factor
    save_file(sd, str(tmp_path / "f.safetensors"))
    lora = load_lora(tmp_path / "f.safetensors")
    assert lora.layout == "comfyui" and lora.family == "flux"
    assert set(lora.adapters) == {f"unet:{k}" for k in KOHYA_FLUX}
    converted = _convert_kohya_flux_lora_to_diffusers(
        _kohya_spelling({k: v.clone() for k, v in sd.items() if not k.endswith(".bias")}))
    _check_fused(lora, converted)


def test_xlabs_matches_diffusers_converter(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers

    sd = {}
    for name, (out_dim, in_dim) in {"double_blocks.0.processor.qkv_lora1": (3 * D, D),
                                    "double_blocks.0.processor.qkv_lora2": (3 * D, D),
                                    "double_blocks.0.processor.proj_lora1": (D, D),
                                    "double_blocks.0.processor.proj_lora2": (D, D),
                                    "single_blocks.0.processor.qkv_lora": (3 * D, D),
                                    "single_blocks.0.processor.proj_lora": (D, 5 * D)}.items():
        t = _lora(4, out_dim, in_dim)
        sd[f"{name}.down.weight"], sd[f"{name}.up.weight"] = t["lora_down.weight"], t["lora_up.weight"]
    save_file(sd, str(tmp_path / "x.safetensors"))
    lora = load_lora(tmp_path / "x.safetensors")
    assert lora.layout == "xlabs" and lora.family == "flux" and not lora.unclaimed
    converted = _convert_xlabs_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    expect = {"double_blocks_0_img_attn_qkv": BFL_PARTS["double_blocks_0_img_attn_qkv"],
              "double_blocks_0_txt_attn_qkv": BFL_PARTS["double_blocks_0_txt_attn_qkv"],
              "double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
              "double_blocks_0_txt_attn_proj": ["transformer_blocks.0.attn.to_add_out"],
              "single_blocks_0_linear2": ["single_transformer_blocks.0.proj_out"],
              # a single block's q/k/v LoRA touches only those rows of linear1: diffusers' parts
              "single_transformer_blocks_0_attn_to_q": ["single_transformer_blocks.0.attn.to_q"],
              "single_transformer_blocks_0_attn_to_k": ["single_transformer_blocks.0.attn.to_k"],
              "single_transformer_blocks_0_attn_to_v": ["single_transformer_blocks.0.attn.to_v"]}
    assert set(lora.adapters) == {f"unet:{k}" for k in expect}
    for key, parts in expect.items():
        ref = torch.cat([_converted_delta(converted, p) for p in parts], 0)
        _close(lora.adapters[f"unet:{key}"].delta(torch.zeros(ref.shape)), ref, key)


def test_onetrainer_flux_matches_diffusers_mixture_converter(tmp_path):
    """OneTrainer: `lora_transformer_` + diffusers names flattened, CLIP as `lora_te1_`."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    modules = {"transformer_blocks_0_attn_to_q": (D, D), "transformer_blocks_0_attn_add_k_proj": (D, D),
               "transformer_blocks_0_attn_to_out_0": (D, D), "transformer_blocks_0_attn_to_add_out": (D, D),
               "single_transformer_blocks_0_attn_to_v": (D, D), "context_embedder": (D, 16), "proj_out": (4, D)}
    sd = {}
    for i, (name, (out_dim, in_dim)) in enumerate(modules.items()):
        for suffix, tensor in _lora(4, out_dim, in_dim, alpha=2.0 + i).items():
            sd[f"lora_transformer_{name}.{suffix}"] = tensor
    te = "text_model_encoder_layers_0_self_attn_q_proj"
    for suffix, tensor in _lora(4, 32, 32, alpha=4.0).items():
        sd[f"lora_te1_{te}.{suffix}"] = tensor
    save_file(sd, str(tmp_path / "o.safetensors"))
    lora = load_lora(tmp_path / "o.safetensors")
    assert lora.layout == "onetrainer" and not lora.unclaimed
    assert set(lora.adapters) == {f"unet:{k}" for k in modules} | {f"te1:{te}"}
    converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    diffusers_name = {"transformer_blocks_0_attn_to_out_0": "transformer_blocks.0.attn.to_out.0",
                      "transformer_blocks_0_attn_to_add_out": "transformer_blocks.0.attn.to_add_out"}
    for name, (out_dim, in_dim) in modules.items():
        dotted = diffusers_name.get(name) or (name.replace("transformer_blocks_0_", "transformer_blocks.0.")
                                              .replace("attn_", "attn."))
        _close(lora.adapters[f"unet:{name}"].delta(torch.zeros(out_dim, in_dim)),
               _converted_delta(converted, dotted), name)
    a = converted["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"]
    b = converted["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"]
    _close(lora.adapters[f"te1:{te}"].delta(torch.zeros(32, 32)), b @ a, te)


def test_kohya_text_encoders_clip_and_t5(tmp_path):
    """kohya Flux: CLIP-L `lora_te1_`, T5 `lora_te3_` (current) or `lora_te2_` with T5 names (early
    lora_flux.py); ComfyUI's `text_encoders.t5xxl.transformer.`; diffusers' Flux `text_encoder_2.` (T5)."""
    t5 = "encoder_block_0_layer_0_SelfAttention_q"
    sd = {}
    spellings = {"lora_te3_encoder_block_0_layer_0_SelfAttention_q": f"te3:{t5}",
                 "lora_te2_encoder_block_1_layer_0_SelfAttention_q": "te3:encoder_block_1_layer_0_SelfAttention_q",
                 "text_encoders.t5xxl.transformer.encoder.block.2.layer.1.DenseReluDense.wi_0":
                     "te3:encoder_block_2_layer_1_DenseReluDense_wi_0",
                 "lora_te1_text_model_encoder_layers_0_mlp_fc1": "te1:text_model_encoder_layers_0_mlp_fc1",
                 "lora_unet_double_blocks_0_img_attn_proj": "unet:double_blocks_0_img_attn_proj"}
    for name in spellings:
        up_key = f"{name}.lora_B.weight" if name.startswith("text_encoders.") else f"{name}.lora_up.weight"
        t = _lora(2, 8, 8, alpha=1.0)
        sd[up_key] = t["lora_up.weight"]
        sd[up_key.replace("lora_B", "lora_A").replace("lora_up", "lora_down")] = t["lora_down.weight"]
    save_file(sd, str(tmp_path / "te.safetensors"))
    lora = load_lora(tmp_path / "te.safetensors")
    assert set(lora.adapters) == set(spellings.values())
    assert lora.family == "flux"

    sd2 = {"text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": _rand(2, 8),
           "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": _rand(8, 2),
           "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": _rand(2, 8),
           "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": _rand(8, 2)}
    save_file(sd2, str(tmp_path / "te2.safetensors"), metadata={"modelspec.architecture": "flux-1-dev/lora"})
    lora2 = load_lora(tmp_path / "te2.safetensors")
    assert set(lora2.adapters) == {f"te3:{t5}", "te1:text_model_encoder_layers_0_self_attn_q_proj"}
    assert lora2.family == "flux"   # a T5 without CLIP-G: the metadata decides
    assert lora2.family != "sdxl"


# ------------------------------------------------------------------ SD3 kohya / ComfyUI and text encoders

def test_kohya_sd3_joint_blocks_and_three_text_encoders(tmp_path):
    modules = {"lora_unet_joint_blocks_0_x_block_attn_qkv": ("unet:joint_blocks_0_x_block_attn_qkv", 3 * D, D),
               "lora_unet_joint_blocks_0_context_block_attn_proj":
                   ("unet:joint_blocks_0_context_block_attn_proj", D, D),
               "lora_unet_joint_blocks_1_x_block_mlp_fc1": ("unet:joint_blocks_1_x_block_mlp_fc1", 4 * D, D),
               "lora_unet_joint_blocks_0_x_block_adaLN_modulation_1":
                   ("unet:joint_blocks_0_x_block_adaLN_modulation_1", 6 * D, D),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
                   ("te1:text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj":
                   ("te2:text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280),
               "lora_te3_encoder_block_0_layer_0_SelfAttention_q": ("te3:encoder_block_0_layer_0_SelfAttention_q", 8, 8)}
    sd = {}
    for name, (_key, out_dim, in_dim) in modules.items():
        for suffix, tensor in _lora(2, out_dim, in_dim, alpha=1.0).items():
            sd[f"{name}.{suffix}"] = tensor
    save_file(sd, str(tmp_path / "sd3.safetensors"))
    lora = load_lora(tmp_path / "sd3.safetensors")
    assert lora.layout == "kohya" and lora.family == "sd3" and not lora.unclaimed
    assert set(lora.adapters) == {key for key, _o, _i in modules.values()}
    for name, (key, out_dim, in_dim) in modules.items():
        up, down = sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"]
        _close(lora.adapters[key].delta(torch.zeros(out_dim, in_dim)), 0.5 * up @ down, key)  # alpha 1 / rank 2


def test_diffusers_sd3_text_encoders(tmp_path):
    """diffusers SD3: `text_encoder.` CLIP-L (te1), `text_encoder_2.` CLIP-G (te2), `text_encoder_3.` T5 (te3)."""
    sd = {}
    for prefix, inner in (("text_encoder.", "text_model.encoder.layers.0.self_attn.k_proj"),
                          ("text_encoder_2.", "text_model.encoder.layers.0.self_attn.k_proj"),
                          ("text_encoder_3.", "encoder.block.0.layer.0.SelfAttention.k")):
        sd[f"{prefix}{inner}.lora_A.weight"] = _rand(2, 8)
        sd[f"{prefix}{inner}.lora_B.weight"] = _rand(8, 2)
    save_file(sd, str(tmp_path / "te.safetensors"))
    lora = load_lora(tmp_path / "te.safetensors")
    assert set(lora.adapters) == {"te1:text_model_encoder_layers_0_self_attn_k_proj",
                                  "te2:text_model_encoder_layers_0_self_attn_k_proj",
                                  "te3:encoder_block_0_layer_0_SelfAttention_k"}
    assert lora.family == "sd3" and lora.layout == "diffusers"


# ------------------------------------------------------------------ LyCORIS / SimpleTuner (LoKr, LoHa)

@pytest.mark.parametrize("family,algo,kwargs", [("flux", "lokr", {"factor": 4}), ("flux", "loha", {}),
                                               ("flux", "lokr", {"factor": 4, "full_matrix": True}),
                                               ("sd3", "lokr", {"factor": 4}), ("sd3", "loha", {})])
def test_lycoris_on_tiny_dit_matches_lycoris_forward(tmp_path, family, algo, kwargs):
    import contextlib
    import io
    import logging

    from lycoris import create_lycoris

    from lycoris_makers import randomise

    model = tiny_flux() if family == "flux" else tiny_sd3()
    weights = {n: (m.weight.detach().clone(), m.bias.detach().clone() if m.bias is not None else None)
               for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        network = create_lycoris(model, 1.0, linear_dim=4, linear_alpha=2.0, algo=algo, **kwargs)
        network.apply_to()
    randomise(network, algo, seed=3)
    network.save_weights(str(tmp_path / "l.safetensors"), None, {"ss_network_module": "lycoris.kohya"})
    lora = load_lora(tmp_path / "l.safetensors")
    assert lora.layout == "lycoris" and not lora.unclaimed
    assert set(lora.algorithms()) == {algo}
    checked = 0
    for name, module in model.named_modules():
        key = f"unet:{flat(name)}"
        if name not in weights or key not in lora.adapters:
            continue
        w0, b0 = weights[name]
        x = _rand(3, w0.shape[1])
        with torch.no_grad():
            ref = module(x)   # LyCORIS' forward, multiplier 1
        ours = torch.nn.functional.linear(x, w0 + lora.adapters[key].delta(w0), b0)
        _close(ours, ref, name)
        checked += 1
    assert checked >= 20   # every Linear of the double and single block


# ------------------------------------------------------------------ refusals

def test_unknown_layout_is_refused_naming_file_and_layouts(tmp_path):
    save_file({"blocks.0.mixer.w_in.delta": _rand(4, 4), "blocks.0.mixer.w_out.delta": _rand(4, 4)},
              str(tmp_path / "strange.safetensors"))
    with pytest.raises(LoraFormatError) as info:
        load_lora(tmp_path / "strange.safetensors")
    text = str(info.value)
    assert "strange.safetensors" in text and "no key is in a LoRA layout we know" in text
    assert "blocks.0.mixer.w_in.delta" in text and "XLabs" in text and "kohya" in text


def test_known_layout_without_any_usable_module_is_refused_naming_the_layout(tmp_path):
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": _rand(48, 4)},   # no down factor
              str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraFormatError) as info:
        load_lora(tmp_path / "half.safetensors")
    assert "half.safetensors" in str(info.value) and "kohya" in str(info.value)
    assert "lora_unet_double_blocks_0_img_attn_qkv" in str(info.value)


def test_xlabs_single_qkv_of_wrong_height_is_not_understood(tmp_path):
    sd = {"single_blocks.0.processor.qkv_lora.down.weight": _rand(4, D),
          "single_blocks.0.processor.qkv_lora.up.weight": _rand(3 * D + 1, 4),
          "double_blocks.0.processor.proj_lora1.down.weight": _rand(4, D),
          "double_blocks.0.processor.proj_lora1.up.weight": _rand(D, 4)}
    save_file(sd, str(tmp_path / "x.safetensors"))
    lora = load_lora(tmp_path / "x.safetensors")
    assert list(lora.adapters) == ["unet:double_blocks_0_img_attn_proj"]
    assert lora.unclaimed == ["single_blocks.0.processor.qkv_lora"]


def test_peft_metadata_alpha_reaches_sd3_text_encoder_3(tmp_path):
    """diffusers writes `text_encoder_3.lora_alpha` into lora_adapter_metadata for SD3's T5."""
    inner = "encoder.block.0.layer.0.SelfAttention.q"
    a, b = _rand(4, 8), _rand(8, 4)
    meta = {"lora_adapter_metadata": json.dumps({"text_encoder_3.lora_alpha": 2, "text_encoder_3.r": 4})}
    save_file({f"text_encoder_3.{inner}.lora_A.weight": a, f"text_encoder_3.{inner}.lora_B.weight": b},
              str(tmp_path / "t.safetensors"), metadata=meta)
    adapter = load_lora(tmp_path / "t.safetensors").adapters["te3:encoder_block_0_layer_0_SelfAttention_q"]
    _close(adapter.delta(torch.zeros(8, 8)), 0.5 * b @ a, "te3 alpha")


def test_peft_metadata_alpha_reaches_flux_text_encoder_2_t5(tmp_path):
    """diffusers' Flux pipeline calls its T5 `text_encoder_2`: the metadata's text_encoder_2.lora_alpha is its alpha."""
    inner = "encoder.block.0.layer.0.SelfAttention.q"
    a, b = _rand(4, 8), _rand(8, 4)
    meta = {"lora_adapter_metadata": json.dumps({"text_encoder_2.lora_alpha": 1, "text_encoder_2.r": 4})}
    save_file({f"text_encoder_2.{inner}.lora_A.weight": a, f"text_encoder_2.{inner}.lora_B.weight": b},
              str(tmp_path / "t.safetensors"), metadata=meta)
    adapter = load_lora(tmp_path / "t.safetensors").adapters["te3:encoder_block_0_layer_0_SelfAttention_q"]
    _close(adapter.delta(torch.zeros(8, 8)), 0.25 * b @ a, "te3 alpha")
