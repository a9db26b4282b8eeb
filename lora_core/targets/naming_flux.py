"""Flux.1 transformer: diffusers ``FluxTransformer2DModel`` <-> BFL single-file names (ComfyUI,
Forge, kohya). Pure strings. The relations follow diffusers' own single-file converter
(``convert_flux_transformer_checkpoint_to_diffusers``); the tests check them against it.

lbw block ids follow hako-mikan/sd-webui-lora-block-weight's Flux vector (61 values): CLIP, T5,
IN (the input embedders), D00..D18 (double blocks), S00..S37 (single blocks), OUT (final layer).
"""
from __future__ import annotations

from .naming_dit import EQUAL, QKV_MLP, BlockSpec, DiTSpec

DOUBLE = BlockSpec(
    "transformer_blocks", "double_blocks", "D{:02d}",
    pairs=(
        ("norm1.linear", "img_mod.lin"),
        ("norm1_context.linear", "txt_mod.lin"),
        ("attn.norm_q", "img_attn.norm.query_norm"),
        ("attn.norm_k", "img_attn.norm.key_norm"),
        ("attn.norm_added_q", "txt_attn.norm.query_norm"),
        ("attn.norm_added_k", "txt_attn.norm.key_norm"),
        ("attn.to_out.0", "img_attn.proj"),
        ("attn.to_add_out", "txt_attn.proj"),
        ("ff.net.0.proj", "img_mlp.0"),
        ("ff.net.2", "img_mlp.2"),
        ("ff_context.net.0.proj", "txt_mlp.0"),
        ("ff_context.net.2", "txt_mlp.2"),
    ),
    fused=(
        ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), EQUAL),
        ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), EQUAL),
    ),
)

SINGLE = BlockSpec(
    "single_transformer_blocks", "single_blocks", "S{:02d}",
    pairs=(
        ("norm.linear", "modulation.lin"),
        ("attn.norm_q", "norm.query_norm"),
        ("attn.norm_k", "norm.key_norm"),
        ("proj_out", "linear2"),
    ),
    fused=(("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), QKV_MLP),),
)

FLUX = DiTSpec(
    "flux",
    blocks=(DOUBLE, SINGLE),
    top=(
        ("x_embedder", "img_in", "IN"),
        ("context_embedder", "txt_in", "IN"),
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer", "IN"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer", "IN"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer", "IN"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer", "IN"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer", "IN"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer", "IN"),
        ("proj_out", "final_layer.linear", "OUT"),
    ),
    top_swapped=(("norm_out.linear", "final_layer.adaLN_modulation.1", "OUT"),),
)

# The lbw vector (CLIP, T5, IN, D00..D18, S00..S37, OUT) is lora_core.tags.block_weights.FLUX_BLOCK_IDS.
