"""diffusers / PEFT / AI-Toolkit / SimpleTuner PEFT: dotted diffusers module paths behind the
pipeline component (`transformer.`, `unet.`, `text_encoder.`, `text_encoder_2.`, `text_encoder_3.`)
or a bare model (`base_model.model.`, `transformer_blocks.0...`), suffixes `lora_A`/`lora_B` with
or without the adapter name, old `lora.up`/`lora_linear_layer` and attention-processor spellings.
Which text encoder is the T5 differs (Flux `text_encoder_2`, SD3 `text_encoder_3`); keys.py makes
either te3 by its T5 module names."""
from __future__ import annotations

from .base import Layout, unwrapped

_PREFIXES = ("transformer.", "unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer_blocks.",
             "single_transformer_blocks.", "text_model.", "encoder.", "down_blocks", "mid_block", "up_blocks",
             "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding")


class Diffusers(Layout):
    name = "diffusers"
    label = "diffusers / PEFT / AI-Toolkit (transformer., unet., text_encoder*., lora_A/lora_B)"

    def owns(self, key):
        return unwrapped(key).startswith(_PREFIXES)


LAYOUT = Diffusers()
