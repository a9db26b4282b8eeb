"""SDXL specifics of training: kohya's UNet module names and the checks on a model's parts.

kohya sd-scripts trains SDXL on its own port of Stability's UNet, whose modules carry the LDM
names (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`, `input_blocks.1.0.in_layers.2`,
`input_blocks.3.0.op`, `middle_block.1.proj_in`, `output_blocks.2.2.conv`), so its SDXL LoRAs
say `lora_unet_input_blocks_...`; SD1/SD2 LoRAs keep diffusers' names. We train on diffusers'
UNet and rename each wrapped module with lora_core.targets' diffusers <-> LDM map (derived from
the UNet's own layout, so narrow test models get the right numbers too). kohya picks the same
modules in both (Transformer2DModel / ResnetBlock2D / Downsample2D / Upsample2D children), so the
rename is one to one. The text encoders keep HF CLIP names under `lora_te1_` (CLIP-L) and
`lora_te2_` (OpenCLIP bigG, a CLIPTextModelWithProjection in both kohya and diffusers).
"""
from __future__ import annotations

TE_PREFIXES = ("lora_te1", "lora_te2")


def kohya_unet_names(unet) -> dict[str, str]:
    """diffusers module path -> LDM module path, for every weighted module of an SDXL UNet."""
    from lora_core.targets.naming import unet_diffusers_to_ldm

    from .ldm_export import unet_layout_of

    return unet_diffusers_to_ldm(unet_layout_of(unet))


def sdxl_problem(unet, text_encoder, text_encoder_2, tokenizer_2) -> str | None:
    """Why these parts cannot train as SDXL (None when they can): the UNet must take SDXL's added
    text/time conditioning, sized for text_encoder_2's projection and six time ids, and a context
    as wide as both encoders together."""
    cfg = unet.config
    if tokenizer_2 is None:
        return "SDXL checkpoint without a second tokenizer (tokenizer_2)"
    if not hasattr(text_encoder_2, "text_projection"):
        return f"text_encoder_2 ({type(text_encoder_2).__name__}) has no text projection for the pooled embedding"
    if getattr(cfg, "addition_embed_type", None) != "text_time":
        return ("the model has a second text encoder but its UNet takes no SDXL text/time conditioning "
                f"(addition_embed_type={getattr(cfg, 'addition_embed_type', None)!r})")
    projection = getattr(text_encoder_2.config, "projection_dim", None)
    time_dim = getattr(cfg, "addition_time_embed_dim", None)
    wanted = getattr(cfg, "projection_class_embeddings_input_dim", None)
    given = None if projection is None or time_dim is None else projection + 6 * time_dim
    if given is None or wanted != given:
        return (f"UNet expects {wanted} added-conditioning features but text_encoder_2's projection ({projection}) "
                f"+ 6 time ids x {time_dim} give {given}")
    widths = (text_encoder.config.hidden_size, text_encoder_2.config.hidden_size)
    if sum(widths) != cfg.cross_attention_dim:
        return (f"UNet context is {cfg.cross_attention_dim} wide but the text encoders give "
                f"{widths[0]} + {widths[1]} = {sum(widths)}")
    return None
