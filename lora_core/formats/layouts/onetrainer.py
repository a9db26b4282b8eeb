"""Nerogar/OneTrainer DiT LoRAs (Flux, SD3): `lora_transformer_` + the diffusers module path
flattened (`lora_transformer_single_transformer_blocks_0_attn_to_q`); text encoders as kohya's
`lora_te1_`/`lora_te2_` (handled by the kohya layout; a T5 under `lora_te2_` becomes te3)."""
from __future__ import annotations

from .base import Layout


class OneTrainer(Layout):
    name = "onetrainer"
    label = "OneTrainer (lora_transformer_)"

    def owns(self, key):
        return key.startswith("lora_transformer_")


LAYOUT = OneTrainer()
