"""SD3 / SD3.5 transformer: diffusers ``SD3Transformer2DModel`` <-> the MMDiT single-file names
(``joint_blocks.N.x_block.*`` / ``context_block.*``) of Stability's checkpoints, ComfyUI, Forge
and kohya. Pure strings. The relations follow diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``
(checked against it in the tests), including the last block, whose context branch only
modulates (``context_pre_only``): no context attention output, no context MLP, and its
AdaLayerNorm stored with the (shift, scale) halves swapped like the final layer's.

lbw: there is no block-weight vector for SD3 in the lbw extension; lora_core uses the same shape
as its Flux vector: CLIP (both CLIP encoders), T5, IN (embedders), J00..Jnn (joint blocks), OUT.
"""
from __future__ import annotations

from .naming_dit import EQUAL, BlockSpec, DiTSpec

_JOINT_PAIRS = (
    ("attn.to_out.0", "x_block.attn.proj"),
    ("attn.to_add_out", "context_block.attn.proj"),
    ("attn.norm_q", "x_block.attn.ln_q"),
    ("attn.norm_k", "x_block.attn.ln_k"),
    ("attn.norm_added_q", "context_block.attn.ln_q"),
    ("attn.norm_added_k", "context_block.attn.ln_k"),
    ("attn2.to_out.0", "x_block.attn2.proj"),
    ("attn2.norm_q", "x_block.attn2.ln_q"),
    ("attn2.norm_k", "x_block.attn2.ln_k"),
    ("norm1.linear", "x_block.adaLN_modulation.1"),
    ("norm1_context.linear", "context_block.adaLN_modulation.1"),
    ("ff.net.0.proj", "x_block.mlp.fc1"),
    ("ff.net.2", "x_block.mlp.fc2"),
    ("ff_context.net.0.proj", "context_block.mlp.fc1"),
    ("ff_context.net.2", "context_block.mlp.fc2"),
)
_LAST_ONLY_DROPPED = {"attn.to_add_out", "norm1_context.linear", "ff_context.net.0.proj", "ff_context.net.2"}

JOINT = BlockSpec(
    "transformer_blocks", "joint_blocks", "J{:02d}",
    pairs=_JOINT_PAIRS,
    fused=(
        ("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), EQUAL),
        ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), EQUAL),
        ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v"), EQUAL),
    ),
    last_pairs=tuple(p for p in _JOINT_PAIRS if p[0] not in _LAST_ONLY_DROPPED),
    last_swapped=(("norm1_context.linear", "context_block.adaLN_modulation.1"),),
)

SD3 = DiTSpec(
    "sd3",
    blocks=(JOINT,),
    top=(
        ("pos_embed.proj", "x_embedder.proj", "IN"),
        ("context_embedder", "context_embedder", "IN"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", "IN"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", "IN"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", "IN"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", "IN"),
        ("proj_out", "final_layer.linear", "OUT"),
    ),
    top_swapped=(("norm_out.linear", "final_layer.adaLN_modulation.1", "OUT"),),
)

