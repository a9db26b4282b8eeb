"""What the UNet is conditioned on during training, per model family.

SD1/SD2: one CLIP text encoder; the UNet's context is its last hidden state (diffusers' SD
pipelines do the same, so a LoRA trained here behaves the same at generation time).

SDXL (as kohya's `sdxl_train_network.py` and diffusers' `StableDiffusionXLPipeline.encode_prompt`):
two encoders, CLIP-L (`text_encoder`) and OpenCLIP bigG (`text_encoder_2`, with projection), each
with its own tokenizer. The context is both encoders' penultimate hidden states concatenated on
the feature axis (CLIP-L first); the pooled embedding is text_encoder_2's projected output; the
UNet's added conditioning is that pooled embedding plus `time_ids` = (original height, width,
crop top, left, target height, width) of each training image.

`encode(captions)` returns a dict of batch-first tensors (so a frozen encoder's outputs can be
cached per caption and stacked again); `unet_kwargs(encoded, time_ids)` turns it into the UNet's
keyword arguments.
"""
from __future__ import annotations

import torch


def _token_ids(tokenizer, captions: list[str], device) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


class SDConditioning:
    """SD1/SD2: context = the text encoder's last hidden state."""

    needs_time_ids = False

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def encoders(self) -> list:
        return [self.text_encoder]

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = _token_ids(self.tokenizer, captions, _device_of(self.text_encoder))
        return {"context": self.text_encoder(ids)[0]}

    def unet_kwargs(self, encoded: dict[str, torch.Tensor], time_ids: torch.Tensor | None = None) -> dict:
        return {"encoder_hidden_states": encoded["context"]}


class SDXLConditioning:
    """SDXL: context = [CLIP-L penultimate | bigG penultimate], pooled = bigG's projection."""

    needs_time_ids = True

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2):
        self.tokenizers = (tokenizer, tokenizer_2)
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    @property
    def encoders(self) -> list:
        return [self.text_encoder, self.text_encoder_2]

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        outs = [encoder(_token_ids(tokenizer, captions, _device_of(encoder)), output_hidden_states=True)
                for tokenizer, encoder in zip(self.tokenizers, self.encoders)]
        return {"context": torch.cat([out.hidden_states[-2] for out in outs], dim=-1), "pooled": outs[1].text_embeds}

    def unet_kwargs(self, encoded: dict[str, torch.Tensor], time_ids: torch.Tensor | None = None) -> dict:
        if time_ids is None:
            raise ValueError("SDXL conditioning needs time_ids (original size, crop, target size)")
        pooled = encoded["pooled"]
        # time ids stay fp32 (sizes like 1023 are not exact in bf16); the UNet embeds them itself
        return {"encoder_hidden_states": encoded["context"],
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device)}}


def time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], target_hw: tuple[int, int]) -> torch.Tensor:
    """One image's SDXL size conditioning, in the order the UNet was trained with."""
    return torch.tensor([*original_hw, *crop_tl, *target_hw], dtype=torch.float32)
