"""Tiny SD1 / SD2 / SDXL models built in code, saved as A1111/LDM single-file checkpoints.

Test-only diffusers -> LDM naming: the UNet and VAE via lora_core.train.ldm_export (names derived
from lora_core.targets.naming), the text encoders written here (HF CLIP under the SD1/SDXL prefix,
OpenCLIP with fused in_proj for SD2 and SDXL's second encoder). The matching tiny diffusers configs
are written to a config root laid out like lora_core/app/configs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILY_DIRS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}
SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
             "timestep_spacing": "leading", "prediction_type": "epsilon"}


def _clip_config(hidden, layers, act, projection=None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_attention_heads=4, num_hidden_layers=layers, max_position_embeddings=77,
                          hidden_act=act, projection_dim=projection or hidden)


def build_tiny(family: str, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8,
                  block_out_channels=(16, 32))
    out = {"vae": vae}
    if family == "sd1":
        out["unet"] = UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=8,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        out["text_encoder"] = CLIPTextModel(_clip_config(32, 2, "quick_gelu"))
    elif family == "sd2":
        out["unet"] = UNet2DConditionModel(**common, cross_attention_dim=48, attention_head_dim=(2, 4),
                                           use_linear_projection=True,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        out["text_encoder"] = CLIPTextModel(_clip_config(48, 2, "gelu"))
    elif family == "sdxl":
        out["unet"] = UNet2DConditionModel(
            **common, cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True,
            transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        out["text_encoder"] = CLIPTextModel(_clip_config(32, 2, "quick_gelu"))
        out["text_encoder_2"] = CLIPTextModelWithProjection(_clip_config(32, 2, "gelu", projection=32))
    else:
        raise ValueError(family)
    for m in out.values():
        m.eval()
    return out


def _hf_clip(te, prefix: str) -> dict:
    out = {}
    for k, v in te.state_dict().items():
        if k.endswith("position_ids"):
            continue
        k = k if k.startswith(("text_model.", "text_projection")) else "text_model." + k
        out[prefix + k] = v
    return out


def _open_clip(te, prefix: str, extra_layer: bool) -> dict:
    """HF CLIP -> OpenCLIP names (q/k/v fused into in_proj, projection transposed)."""
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te.state_dict().items()}
    out = {prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    n = te.config.num_hidden_layers
    for i in range(n + (1 if extra_layer else 0)):
        src = min(i, n - 1)  # SD2 checkpoints carry one more layer than diffusers uses (penultimate)
        hf = f"encoder.layers.{src}."
        oc = f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[oc + f"attn.in_proj_{part}"] = torch.cat(
                [sd[hf + f"self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")], 0)
            out[oc + f"attn.out_proj.{part}"] = sd[hf + f"self_attn.out_proj.{part}"]
            out[oc + f"ln_1.{part}"] = sd[hf + f"layer_norm1.{part}"]
            out[oc + f"ln_2.{part}"] = sd[hf + f"layer_norm2.{part}"]
            out[oc + f"mlp.c_fc.{part}"] = sd[hf + f"mlp.fc1.{part}"]
            out[oc + f"mlp.c_proj.{part}"] = sd[hf + f"mlp.fc2.{part}"]
    return out


def to_ldm(family: str, models: dict) -> dict:
    from lora_core.train.ldm_export import unet_to_ldm, vae_to_ldm

    sd = {**unet_to_ldm(models["unet"]), **vae_to_ldm(models["vae"])}
    if family == "sd1":
        sd.update(_hf_clip(models["text_encoder"], "cond_stage_model.transformer."))
    elif family == "sd2":
        sd.update(_open_clip(models["text_encoder"], "cond_stage_model.model.", extra_layer=True))
    else:
        sd.update(_hf_clip(models["text_encoder"], "conditioner.embedders.0.transformer."))
        sd.update(_open_clip(models["text_encoder_2"], "conditioner.embedders.1.model.", extra_layer=False))
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def write_config_root(root: Path, family: str, models: dict) -> Path:
    """Tiny diffusers configs laid out like lora_core/app/configs/<family dir>/."""
    folder = Path(root) / FAMILY_DIRS[family]
    models["unet"].save_config(folder / "unet")
    models["vae"].save_config(folder / "vae")
    for name in ("text_encoder", "text_encoder_2"):
        if name in models:
            (folder / name).mkdir(parents=True, exist_ok=True)
            models[name].config.to_json_file(folder / name / "config.json")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    pad = "!" if family == "sd2" else "<|endoftext|>"
    for tok, p in (("tokenizer", pad), ("tokenizer_2", "!")):
        if tok == "tokenizer_2" and family != "sdxl":
            continue
        (folder / tok).mkdir(parents=True, exist_ok=True)
        (folder / tok / "tokenizer_config.json").write_text(json.dumps({"pad_token": p, "model_max_length": 77}))
    return Path(root)


def write_checkpoint(tmp: Path, family: str, seed: int = 0, dtype=None):
    """(checkpoint path, config root, original diffusers models)."""
    from safetensors.torch import save_file

    models = build_tiny(family, seed)
    sd = to_ldm(family, models)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    path = Path(tmp) / f"tiny_{family}.safetensors"
    save_file(sd, str(path))
    return path, write_config_root(Path(tmp) / "configs", family, models), models
