"""Tiny Flux.1 and SD3 diffusers pipelines built in code and saved as diffusers-format folders.

Everything is offline: the CLIP tokenizer is lora_core's own (built from the BPE vocabulary that
open-clip-torch ships), the T5 tokenizer a small Unigram vocabulary made here with the
`tokenizers`-backed T5Tokenizer. Widths are tiny (transformer width 16) so a 64x64 image with two
steps takes well under a second.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

# words the T5 vocabulary knows whole; any other text falls back to single characters
T5_WORDS = ["a", "cat", "dog", "photo", "of", "red", "blue", "circle", "square", "on", "the", "white", "background"]


def t5_tokenizer(max_length: int = 64):
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in T5_WORDS]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5(d_model: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1))


def _clip_config(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 2, num_attention_heads=2,
                          num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=projection or hidden, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407)


def _vae(latent_channels: int, shift: float | None):
    from diffusers import AutoencoderKL

    extra = {"shift_factor": shift, "use_quant_conv": False, "use_post_quant_conv": False} if shift is not None else {}
    # 3 blocks: 4x downsampling, so a 64x64 image is a 16x16 latent
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                         up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=64, scaling_factor=0.5,
                         **extra)


def build_flux(cache_dir, seed: int = 0, guidance: bool = True):
    """FluxPipeline: 2 double + 2 single blocks, width 16; CLIP-L width 8 (pooled), T5 width 12."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from lora_core.app.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                         pooled_projection_dim=8, guidance_embeds=guidance, axes_dims_rope=(2, 2, 4))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=_vae(4, 0.1), text_encoder=CLIPTextModel(_clip_config(8)), tokenizer=load_clip_tokenizer(cache_dir),
        text_encoder_2=_t5(12, len(t5_tok)), tokenizer_2=t5_tok, transformer=transformer)
    return pipe.to(torch.float32)


def build_sd3(cache_dir, seed: int = 0):
    """StableDiffusion3Pipeline: 3 joint blocks (SD3.5-medium-like dual attention in block 0), width 16;
    CLIP-L and CLIP-G width 8 with projections 4 + 4 (pooled 8), T5 width 16."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from lora_core.app.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=3,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                        caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
                                        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4, 0.05),
        text_encoder=CLIPTextModelWithProjection(_clip_config(8, 4)), tokenizer=load_clip_tokenizer(cache_dir),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(8, 4)),
        tokenizer_2=load_clip_tokenizer(cache_dir, pad_token="!"),
        text_encoder_3=_t5(16, len(t5_tok)), tokenizer_3=t5_tok)
    return pipe.to(torch.float32)


def save_folder(pipe, models_dir, name: str) -> Path:
    """`pipe` saved as models_dir/Stable-diffusion/<name>/ (model_index.json and one folder per part)."""
    folder = Path(models_dir) / "Stable-diffusion" / name
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
