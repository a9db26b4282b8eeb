"""Tiny SD1-layout training parts for the trainer tests (built in code, no downloads)."""
from __future__ import annotations

import torch


def tiny_parts(tmp_dir, seed: int = 0, prediction_type: str = "epsilon") -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.app.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, cross_attention_dim=32,
    )
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=77))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, prediction_type=prediction_type)
    return {"unet": unet.eval(), "text_encoder": te.eval(), "vae": vae.eval(),
            "tokenizer": load_clip_tokenizer(tmp_dir), "scheduler": sched}


def one_torch_thread():
    """Generator for a module fixture: torch on one thread while the module runs. On a busy
    machine OpenMP threads spin-wait and tiny models train ~10x slower; CI loses little."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
