"""tools/forge_flux: the tiny Flux.1 checkpoint, configs and LoRAs that tools/forge_flux_check.sh runs in
the real Forge, checked against other people's code, plus the rig shim's size detection.

Oracles: diffusers' single-file converters (`convert_flux_transformer_checkpoint_to_diffusers`,
`convert_ldm_vae_checkpoint`) turn the checkpoint's parts into diffusers' FluxTransformer2DModel /
AutoencoderKL, which must load them strictly with the sizes the written configs and the shim name;
transformers' CLIPTextModel / T5EncoderModel load the text encoders from the written configs; and
diffusers+PEFT (`load_lora_adapter` + `fuse_lora`) merges the LoRA files, which lora_core must
match on the BFL tensors (the fused qkv / linear1 row slices included).
"""
import json
import runpy
import sys
import types
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools" / "forge_flux"))
sys.path.insert(0, str(HERE / "targets"))
import make_tiny_flux as mk  # noqa: E402
from dit_models import _flux_width  # noqa: E402

PREFIX = "model.diffusion_model."
D = mk.DIMS
H = D["hidden"]


@pytest.fixture(scope="module")
def ckpt():
    torch.set_num_threads(1)
    return mk.checkpoint()


@pytest.fixture(scope="module")
def forge_tree(tmp_path_factory):
    """A stand-in for the copied Forge tree: the shipped FLUX.1-dev component configs (the values
    that matter here, as backend/huggingface/black-forest-labs/FLUX.1-dev ships them)."""
    root = tmp_path_factory.mktemp("forge")
    repo = root / mk.REPO
    shipped = {"text_encoder": {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
                                "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                                "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
                                "model_type": "clip_text_model", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
               "text_encoder_2": {"d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_pytorch_tanh",
                                  "is_gated_act": True, "model_type": "t5", "num_heads": 64, "num_layers": 24,
                                  "num_decoder_layers": 24, "vocab_size": 32128, "relative_attention_num_buckets": 32,
                                  "feed_forward_proj": "gated-gelu"},
               "vae": {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512],
                       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                       "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
                       "norm_num_groups": 32, "scaling_factor": 0.3611, "shift_factor": 0.1159,
                       "use_quant_conv": False, "use_post_quant_conv": False}}
    for name, cfg in shipped.items():
        (repo / name).mkdir(parents=True)
        (repo / name / "config.json").write_text(json.dumps(cfg))
    (repo / "model_index.json").write_text("{}")
    mk.write_all(root)
    return root


def _part(ckpt, prefix):
    return {k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)}


def _diffusers_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4 * D["in_channels"], num_layers=D["depth"],
                                  num_single_layers=D["depth_single"], attention_head_dim=H // D["heads"],
                                  num_attention_heads=D["heads"], joint_attention_dim=D["t5_d_model"],
                                  pooled_projection_dim=D["clip_width"], guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def _to_diffusers(bfl):
    from diffusers.loaders import single_file_utils as sfu

    with _flux_width(H):
        return sfu.convert_flux_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in bfl.items()})


def test_transformer_is_a_flux_transformer_of_the_shims_sizes(ckpt):
    bfl = _part(ckpt, PREFIX)
    model = _diffusers_flux()
    missing, unexpected = model.load_state_dict(_to_diffusers(bfl), strict=False)
    assert not missing and not unexpected
    # what the rig shim makes huggingface_guess report for these tensors
    shim = _shim()
    sizes = shim["sizes_from_tensors"](ckpt, PREFIX)
    assert sizes == {"in_channels": 16, "vec_in_dim": D["clip_width"], "context_in_dim": D["t5_d_model"],
                     "hidden_size": H, "mlp_ratio": 4.0, "num_heads": D["heads"], "depth": D["depth"],
                     "depth_single_blocks": D["depth_single"], "axes_dim": [16, 56, 56], "qkv_bias": True}


def _shim():
    """The shim's functions, with stand-ins for the Forge modules its install() imports: the
    detection function returns the 12B sizes whatever the tensors say, as huggingface_guess does."""
    detection = types.ModuleType("huggingface_guess.detection")
    detection.detect_unet_config = lambda sd, prefix: {
        "image_model": "flux", "in_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
        "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56],
        "theta": 10000, "qkv_bias": True, "guidance_embed": f"{prefix}guidance_in.in_layer.weight" in sd}
    package = types.ModuleType("huggingface_guess")
    package.detection = detection
    fake = {"modules": types.ModuleType("modules"), "modules.paths": types.ModuleType("modules.paths"),
            "huggingface_guess": package, "huggingface_guess.detection": detection}
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        ns = runpy.run_path(str(ROOT / "tools" / "forge_flux" / "rig_shim" / "preload.py"))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    ns["detection"] = detection
    return ns


def test_shim_replaces_only_the_sizes_and_only_for_flux(ckpt):
    ns = _shim()
    config = ns["detection"].detect_unet_config(ckpt, PREFIX)   # the wrapped function
    assert config["hidden_size"] == H and config["depth"] == D["depth"] and config["guidance_embed"] is True
    assert config["theta"] == 10000 and config["image_model"] == "flux"
    # a checkpoint of the 12B sizes keeps the 12B config (shapes only: meta tensors)
    full = {PREFIX + "img_in.weight": torch.empty(3072, 64, device="meta"),
            PREFIX + "vector_in.in_layer.weight": torch.empty(3072, 768, device="meta"),
            PREFIX + "txt_in.weight": torch.empty(3072, 4096, device="meta"),
            PREFIX + "double_blocks.0.img_attn.norm.query_norm.scale": torch.empty(128, device="meta"),
            PREFIX + "double_blocks.0.img_mlp.0.weight": torch.empty(12288, 3072, device="meta"),
            PREFIX + "double_blocks.0.img_attn.qkv.bias": torch.empty(9216, device="meta")}
    full.update({f"{PREFIX}double_blocks.{i}.x": None for i in range(19)})
    full.update({f"{PREFIX}single_blocks.{i}.x": None for i in range(38)})
    sizes = ns["sizes_from_tensors"](full, PREFIX)
    assert sizes["hidden_size"] == 3072 and sizes["num_heads"] == 24 and sizes["depth"] == 19
    assert sizes["depth_single_blocks"] == 38 and sizes["vec_in_dim"] == 768 and sizes["context_in_dim"] == 4096


def test_text_encoders_and_vae_load_into_their_reference_models(ckpt, forge_tree):
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    repo = forge_tree / mk.REPO
    cfg = {n: json.loads((repo / n / "config.json").read_text()) for n in ("text_encoder", "text_encoder_2", "vae")}
    clip = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    clip_sd = {k.removeprefix("text_model."): v for k, v in _part(ckpt, "text_encoders.clip_l.transformer.").items()}
    missing, unexpected = clip.load_state_dict(clip_sd, strict=False)
    assert not unexpected and set(missing) <= {"embeddings.position_ids"}
    t5 = T5EncoderModel(T5Config(**cfg["text_encoder_2"]))
    missing, unexpected = t5.load_state_dict(_part(ckpt, "text_encoders.t5xxl.transformer."), strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}   # tied to `shared`
    vae_cfg = {k: v for k, v in cfg["vae"].items() if not k.startswith("_")}
    vae = AutoencoderKL(**vae_cfg)
    converted = sfu.convert_ldm_vae_checkpoint(_part(ckpt, "vae."), vae_cfg)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    # the tokenizers stay as shipped: the embeddings cover their vocabularies
    assert clip_sd["embeddings.token_embedding.weight"].shape[0] == 49408
    assert ckpt["text_encoders.t5xxl.transformer.shared.weight"].shape[0] == 32128


def _apply(ckpt, path, weight):
    from lora_core.engine import Engine
    from lora_core.patcher import LoraCache
    from lora_core.request import ApplyRequest
    from lora_core.targets import Binding

    weights = {k: v.clone() for k, v in ckpt.items()}
    engine = Engine(Binding.from_ldm(weights), cache=LoraCache())
    (lora,) = engine.apply([ApplyRequest(str(path), weight, weight)]).loras
    assert engine.family == "flux" and not lora.refused and lora.unmatched == 0
    return engine, weights, lora


# kohya module -> the checkpoint tensor it patches whole (kohya's Flux names are BFL's)
KOHYA_TARGETS = {
    "lora_unet_double_blocks_0_img_attn_qkv": PREFIX + "double_blocks.0.img_attn.qkv.weight",
    "lora_unet_double_blocks_1_txt_mlp_0": PREFIX + "double_blocks.1.txt_mlp.0.weight",
    "lora_unet_double_blocks_0_img_mlp_2": PREFIX + "double_blocks.0.img_mlp.2.weight",
    "lora_unet_single_blocks_0_linear1": PREFIX + "single_blocks.0.linear1.weight",
    "lora_unet_single_blocks_1_linear2": PREFIX + "single_blocks.1.linear2.weight",
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    "lora_te1_text_model_encoder_layers_1_mlp_fc1": "text_encoders.clip_l.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
    "lora_te3_encoder_block_0_layer_0_SelfAttention_q":
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
    "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0":
        "text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wi_0.weight",
}


def test_kohya_lora_merges_by_the_lora_math_everywhere_and_restores(ckpt, forge_tree):
    """kohya's Flux modules name whole BFL tensors (fused qkv and linear1 included), so the
    reference is W0 + w·(alpha/rank)·up@down on each; everything else stays bit-identical."""
    from safetensors.torch import load_file

    path = forge_tree / "models" / "Lora" / "flux_kohya.safetensors"
    lora_t = load_file(str(path))
    engine, weights, lora = _apply(ckpt, path, 0.8)
    assert lora.matched == len(KOHYA_TARGETS)
    for module, key in KOHYA_TARGETS.items():
        up, down = lora_t[f"{module}.lora_up.weight"], lora_t[f"{module}.lora_down.weight"]
        expected = ckpt[key] + 0.8 * (float(lora_t[f"{module}.alpha"]) / down.shape[0]) * (up @ down)
        torch.testing.assert_close(weights[key], expected, rtol=1e-5, atol=1e-5, msg=key)
    for k in set(ckpt) - set(KOHYA_TARGETS.values()):
        assert torch.equal(weights[k], ckpt[k]), k
    engine.restore()
    for k, v in ckpt.items():
        assert torch.equal(weights[k], v), k


def test_peft_lora_row_slices_equal_diffusers_fuse_and_restore(ckpt, forge_tree):
    """to_q/to_k/to_v/add_k_proj/proj_mlp are row slices of BFL's fused tensors: diffusers+PEFT
    fuse them into its own (unfused) model; lora_core's BFL result, converted by diffusers'
    single-file converter, must be the same."""
    from diffusers import FluxPipeline

    path = forge_tree / "models" / "Lora" / "flux_peft.safetensors"
    engine, weights, lora = _apply(ckpt, path, 0.8)
    assert lora.matched == 8
    model = _diffusers_flux()
    model.load_state_dict(_to_diffusers(_part(ckpt, PREFIX)), strict=True)
    sd = FluxPipeline.lora_state_dict(str(path))
    model.load_lora_adapter({k: v for k, v in sd.items() if k.startswith("transformer.")}, prefix="transformer",
                            adapter_name="x")
    model.fuse_lora(lora_scale=0.8)
    expected = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    ours, before = _to_diffusers(_part(weights, PREFIX)), _to_diffusers(_part(ckpt, PREFIX))
    changed = set()
    for k, v in expected.items():
        torch.testing.assert_close(ours[k], v, rtol=1e-5, atol=1e-5, msg=k)
        if not torch.equal(ours[k], before[k]):
            changed.add(k)
    assert changed == {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_k.weight",
                       "transformer_blocks.0.attn.to_v.weight", "transformer_blocks.1.attn.add_k_proj.weight",
                       "single_transformer_blocks.1.attn.to_q.weight", "single_transformer_blocks.1.attn.to_k.weight",
                       "single_transformer_blocks.1.attn.to_v.weight", "single_transformer_blocks.1.proj_mlp.weight"}
    # in BFL terms: only the k rows of double block 1's txt qkv moved
    qkv = PREFIX + "double_blocks.1.txt_attn.qkv.weight"
    assert torch.equal(weights[qkv][:H], ckpt[qkv][:H]) and torch.equal(weights[qkv][2 * H:], ckpt[qkv][2 * H:])
    assert not torch.equal(weights[qkv][H:2 * H], ckpt[qkv][H:2 * H])
    engine.restore()
    for k, v in ckpt.items():
        assert torch.equal(weights[k], v), k
