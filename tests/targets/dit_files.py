"""Tiny Flux.1 / SD3 single-file checkpoints and LoRA files for the merge and Forge tests, plus the
diffusers+PEFT reference merge.

Checkpoints: the transformer in BFL / MMDiT names under `model.diffusion_model.` (dit_models'
builders), the text encoders under `text_encoders.clip_l/clip_g/t5xxl.transformer.` in HF names
(tiny transformers models), a VAE tensor that nothing may touch. LoRA files: kohya (fused qkv as
one module, CLIP-L `lora_te1_`, T5 `lora_te3_`) and PEFT written by the diffusers pipeline's own
`save_lora_weights`. Reference: `diffusers_fused` (the pipeline's loader + `load_lora_adapter` +
`fuse_lora` on the tiny diffusers model).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from dit_models import FLUX, bfl_flux_state, mmdit_sd3_state, tiny_flux, tiny_sd3

PREFIX = "model.diffusion_model."
H = FLUX["num_attention_heads"] * FLUX["attention_head_dim"]       # 16, SD3 too
FLUX_PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "proj_mlp", "proj_out", "norm1.linear", "norm.linear", "norm_out.linear", "ff.net.0.proj",
                     "ff_context.net.2"]
SD3_PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff_context.net.2", "norm1.linear"]
# kohya Flux: 7 transformer modules, two of them fused qkv (each is 3 row slots in one tensor)
KOHYA_FLUX = {"double_blocks_0_img_attn_qkv": (3 * H, H), "double_blocks_1_txt_attn_qkv": (3 * H, H),
              "double_blocks_0_img_mlp_0": (4 * H, H), "double_blocks_1_txt_mod_lin": (6 * H, H),
              "double_blocks_0_txt_attn_proj": (H, H), "single_blocks_1_linear2": (H, 5 * H),
              "single_blocks_0_modulation_lin": (3 * H, H)}
KOHYA_FLUX_TENSORS = ["double_blocks.0.img_attn.qkv.weight", "double_blocks.1.txt_attn.qkv.weight",
                      "double_blocks.0.img_mlp.0.weight", "double_blocks.1.txt_mod.lin.weight",
                      "double_blocks.0.txt_attn.proj.weight", "single_blocks.1.linear2.weight",
                      "single_blocks.0.modulation.lin.weight"]   # same order as KOHYA_FLUX
KOHYA_FLUX_TE = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
                 "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                 "lora_te3_encoder_block_0_layer_0_SelfAttention_q":
                 "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"}
KOHYA_FLUX_ALPHA, KOHYA_FLUX_TE_ALPHA = 2.0, 1.0   # rank 4 (transformer), 2 (text encoders)
KOHYA_SD3 = {"lora_unet_joint_blocks_0_x_block_attn_qkv": "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
             "lora_unet_joint_blocks_1_context_block_mlp_fc1":
             "model.diffusion_model.joint_blocks.1.context_block.mlp.fc1.weight",
             "lora_te2_text_model_encoder_layers_1_self_attn_v_proj":
             "text_encoders.clip_g.transformer.text_model.encoder.layers.1.self_attn.v_proj.weight",
             "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0":
             "text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wi_0.weight"}


# ------------------------------------------------------------------ checkpoints

def tiny_clip(width, seed, projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16, projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_t5(seed):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, vocab_size=64,
                                   feed_forward_proj="gated-gelu"))


def with_text_encoders(ckpt, encoders):
    for name, model in encoders.items():
        for k, v in model.state_dict().items():
            if name.startswith("clip") and not k.startswith(("text_model.", "text_projection")):
                k = "text_model." + k   # checkpoints keep HF CLIP's text_model level (transformers 5 drops it)
            # clone: T5's shared/embed_tokens are one tensor (safetensors refuses shared storage)
            ckpt[f"text_encoders.{name}.transformer.{k}"] = v.detach().clone()
    ckpt["vae.decoder.conv_in.weight"] = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    return ckpt


def cast(ckpt, dtype):
    """bf16: every tensor. fp8: the transformer's matrices in float8_e4m3fn (as fp8 Flux files
    ship them), the rest bf16."""
    if dtype == torch.float32:
        return ckpt
    out = {}
    for k, v in ckpt.items():
        if dtype == torch.float8_e4m3fn and k.startswith(PREFIX) and v.dim() == 2:
            out[k] = v.to(torch.float8_e4m3fn)
        else:
            out[k] = v.to(torch.bfloat16)
    return out


def flux_checkpoint(dtype=torch.float32, seed=3):
    ckpt = {PREFIX + k: v for k, v in bfl_flux_state(seed=seed).items()}
    return cast(with_text_encoders(ckpt, {"clip_l": tiny_clip(16, 1), "t5xxl": tiny_t5(2)}), dtype)


def sd3_checkpoint(dtype=torch.float32, seed=3):
    ckpt = {PREFIX + k: v for k, v in mmdit_sd3_state(seed=seed).items()}
    encoders = {"clip_l": tiny_clip(16, 1), "clip_g": tiny_clip(24, 2, True), "t5xxl": tiny_t5(3)}
    return cast(with_text_encoders(ckpt, encoders), dtype)


def transformer_part(ckpt, prefix=PREFIX):
    """The transformer's tensors without `prefix`, in fp32 (diffusers' converters want plain floats)."""
    return {k[len(prefix):]: v.float() for k, v in ckpt.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ LoRA files

def _low_rank(out, inp, g, rank=4):
    return torch.randn(out, rank, generator=g) * 0.1, torch.randn(rank, inp, generator=g) * 0.1


def kohya_flux_file(path, seed=21):
    """Returns the tensors written."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    for name, (out, inp) in KOHYA_FLUX.items():
        up, down = _low_rank(out, inp, g)
        t[f"lora_unet_{name}.lora_up.weight"], t[f"lora_unet_{name}.lora_down.weight"] = up, down
        t[f"lora_unet_{name}.alpha"] = torch.tensor(KOHYA_FLUX_ALPHA)
    for name in KOHYA_FLUX_TE:
        up, down = _low_rank(16, 16, g, rank=2)
        t[f"{name}.lora_up.weight"], t[f"{name}.lora_down.weight"] = up, down
        t[f"{name}.alpha"] = torch.tensor(KOHYA_FLUX_TE_ALPHA)
    save_file(t, str(path), metadata={"ss_base_model_version": "flux1"})
    return t


def kohya_delta(tensors, module, alpha, rank):
    """ΔW of one kohya module by the LoRA math: alpha/rank · up @ down."""
    return (alpha / rank) * tensors[f"{module}.lora_up.weight"] @ tensors[f"{module}.lora_down.weight"]


def kohya_sd3_file(path, seed=22):
    g = torch.Generator().manual_seed(seed)
    shapes = {"lora_unet_joint_blocks_0_x_block_attn_qkv": (3 * H, H),
              "lora_unet_joint_blocks_1_context_block_mlp_fc1": (4 * H, H),
              "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": (24, 24),
              "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0": (32, 16)}
    t = {}
    for name, (out, inp) in shapes.items():
        up, down = _low_rank(out, inp, g, rank=2)
        t[f"{name}.lora_up.weight"], t[f"{name}.lora_down.weight"] = up, down
        t[f"{name}.alpha"] = torch.tensor(3.0)
    save_file(t, str(path))
    return t


def peft_file(directory, family, seed=11):
    """A PEFT LoRA on the tiny diffusers transformer, saved by the pipeline's save_lora_weights."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = tiny_flux() if family == "flux" else tiny_sd3()
    targets = FLUX_PEFT_TARGETS if family == "flux" else SD3_PEFT_TARGETS
    cfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights="gaussian", target_modules=targets)
    model.add_adapter(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT starts lora_B at zero: give it values so ΔW ≠ 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pipeline = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    name = f"peft_{family}.safetensors"
    pipeline.save_lora_weights(directory, transformer_lora_layers=get_peft_model_state_dict(model),
                               transformer_lora_adapter_metadata=cfg.to_dict(), weight_name=name)
    return Path(directory) / name


def diffusers_fused(family, base, lora_path, weight):
    """diffusers+PEFT: the LoRA file read by the pipeline's loader (its kohya converter splits a
    fused qkv), loaded as an adapter on the tiny model holding `base` and fused with `weight`."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    pipeline = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    model = tiny_flux() if family == "flux" else tiny_sd3()
    model.load_state_dict(base, strict=True)
    # the adapter metadata carries PEFT's lora_alpha (without it diffusers takes alpha = rank)
    sd, metadata = pipeline.lora_state_dict(str(lora_path), return_lora_metadata=True)
    sd = {k: v for k, v in sd.items() if k.startswith("transformer.")}
    model.load_lora_adapter(sd, prefix="transformer", adapter_name="x", metadata=metadata)
    model.fuse_lora(lora_scale=weight)
    return {k.replace(".base_layer.", "."): v.detach() for k, v in model.state_dict().items() if "lora_" not in k}
