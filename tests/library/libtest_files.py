"""Builders of small but real LoRA files for the library/tags tests (safetensors.numpy writes them)."""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

SD1_ATTN2_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
SD1_TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def kohya_lora(context_dim=768, te_dim=768, rank=4, te2=False, extra_modules=()) -> dict:
    """Kohya-named LoRA tensors with the shapes of a real file (tiny output dims)."""
    t = {}

    def add(module, in_dim, out_dim=8):
        t[f"{module}.lora_down.weight"] = np.zeros((rank, in_dim), np.float16)
        t[f"{module}.lora_up.weight"] = np.zeros((out_dim, rank), np.float16)
        t[f"{module}.alpha"] = np.array(rank / 2, np.float16)

    add(SD1_ATTN2_K, context_dim)
    if te2:
        add("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768)
        add("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280)
    elif te_dim:
        add(SD1_TE_Q, te_dim)
    for module in extra_modules:
        add(module, 16)
    return t


def kohya_metadata(name="style", tags=None, base="sd_v1", **extra) -> dict:
    tags = tags or {"1girl": 10, "smile": 4}
    meta = {
        "ss_output_name": name,
        "ss_base_model_version": base,
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_tag_frequency": json.dumps({"10_data": tags}),
        "ss_resolution": "(512, 512)",
        "ss_num_train_images": "40",
        "ss_training_started_at": "1700000000.5",
    }
    meta.update(extra)
    return meta


def write_lora(path, tensors=None, metadata=None) -> str:
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    save_file(tensors if tensors is not None else kohya_lora(), str(path), metadata=metadata)
    return str(path)
