"""A tiny SDXL-structured model for the trainer tests (built in code from configs, no downloads).

Structure as SDXL base: three UNet levels (DownBlock2D, then two CrossAttn levels, deeper
transformers in the last), two layers per block, linear proj_in/out, `text_time` added
conditioning; CLIP-L-like text_encoder (quick_gelu) and a bigG-like CLIPTextModelWithProjection
(gelu, pads with "!"). The two encoders have different widths (32 and 48) so a swapped
concatenation cannot go unnoticed; the UNet's context is their sum.
"""
from __future__ import annotations

import torch

TE1_WIDTH, TE2_WIDTH, PROJECTION, TIME_DIM = 32, 48, 24, 8


def _clip_config(hidden: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 2, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, hidden_act=act,
                          projection_dim=projection or hidden)


def tiny_sdxl_parts(tmp_dir, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lora_core.app.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8,
        block_out_channels=(16, 32, 32), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=TE1_WIDTH + TE2_WIDTH,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=PROJECTION + 6 * TIME_DIM,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    te1 = CLIPTextModel(_clip_config(TE1_WIDTH, "quick_gelu"))
    te2 = CLIPTextModelWithProjection(_clip_config(TE2_WIDTH, "gelu", PROJECTION))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
                        scaling_factor=0.13025)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return {"unet": unet.eval(), "text_encoder": te1.eval(), "text_encoder_2": te2.eval(), "vae": vae.eval(),
            "tokenizer": load_clip_tokenizer(tmp_dir), "tokenizer_2": load_clip_tokenizer(tmp_dir, pad_token="!"),
            "scheduler": sched}
