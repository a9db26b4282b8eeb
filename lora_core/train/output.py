"""Write a trained network as a kohya-format LoRA `.safetensors` with kohya's `ss_*` metadata.

Metadata follows sd-scripts' `train_network.py` keys (values are strings; JSON where kohya writes
JSON) so A1111, the Civitai uploader and other tools read our files like kohya's own. The
`sshs_model_hash` is kohya's: the sha256 of the file after its header (the tensor data only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# kohya's model version strings (`model_util` / `sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0`) and
# modelspec architectures (`sai_model_spec`); for SDXL LoRAs kohya names Stability's repository as
# the implementation, since its SDXL UNet (and so every key) is in their layout
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}
IMPLEMENTATION = {"sdxl": "https://github.com/Stability-AI/generative-models"}
DIFFUSERS_IMPLEMENTATION = "https://github.com/huggingface/diffusers"


def build_metadata(*, name: str, family: str, config, dataset, result, model_name: str = "",
                   model_hash: str = "", comment: str = "") -> dict[str, str]:
    spec = config.network
    net_args = {}
    if spec.is_locon:
        net_args = {"conv_dim": str(spec.conv_rank or spec.rank),
                    "conv_alpha": str(spec.conv_alpha if spec.conv_alpha is not None else spec.alpha)}
    net_args["lora_core_targets"] = spec.targets
    per_epoch = -(-dataset.num_train_images // config.batch_size)
    v_pred = result.prediction_type == "v_prediction"
    meta = {
        "ss_session_id": str(random.Random(f"{name}|{config.seed}|{result.started_at}").getrandbits(31)),
        "ss_output_name": name,
        "ss_training_started_at": repr(float(result.started_at)),
        "ss_training_finished_at": repr(float(result.finished_at)),
        "ss_base_model_version": BASE_MODEL_VERSION.get(family, family),
        "ss_v2": str(family == "sd2"),
        "ss_v_parameterization": str(v_pred),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(float(spec.alpha)),
        "ss_network_args": json.dumps(net_args),
        "ss_network_train_unet_only": str(not spec.train_te),
        "ss_network_train_text_encoder_only": "False",
        "ss_learning_rate": str(config.lr),
        "ss_unet_lr": str(config.lr),
        "ss_text_encoder_lr": str(config.te_lr if config.te_lr is not None else config.lr) if spec.train_te else "0.0",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_lr_scheduler": "constant",
        "ss_lr_warmup_steps": "0",
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_noise_offset": str(config.noise_offset),
        "ss_mixed_precision": "bf16" if config.dtype == "bf16" else "no",
        "ss_full_fp16": "False",
        "ss_seed": str(config.seed),
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_enable_bucket": "False",
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_total_batch_size": str(config.batch_size),
        "ss_gradient_accumulation_steps": "1",
        "ss_num_train_images": str(dataset.num_train_images),
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": str(per_epoch),
        "ss_num_epochs": str(result.epochs),
        "ss_epoch": str(result.epochs),
        "ss_steps": str(result.steps),
        "ss_max_train_steps": str(result.extra.get("total_steps", result.steps)),
        "ss_dataset_dirs": json.dumps(dataset.subsets, ensure_ascii=False),
        "ss_tag_frequency": dataset.tag_frequency_json(),
        "ss_caption_dropout_rate": "0.0",
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": "True",
        "ss_sd_model_name": model_name,
        "ss_new_sd_model_hash": model_hash,
        "ss_training_comment": comment or ("interrupted" if result.interrupted else ""),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{ARCHITECTURE.get(family, family)}/lora",
        "modelspec.implementation": IMPLEMENTATION.get(family, DIFFUSERS_IMPLEMENTATION),
        "modelspec.title": name,
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
    }
    if result.interrupted:
        meta["lora_core_interrupted"] = "True"
    return meta


def tensor_data_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """kohya/A1111 "addnet" hash: sha256 of a safetensors file's bytes after the header. The data
    part does not depend on the metadata, so it is computed from a metadata-free serialisation."""
    from safetensors.torch import save

    blob = save(tensors)
    n = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + n:]).hexdigest()


def save_lora_file(path, network, metadata: dict[str, str], dtype=torch.float32) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves half a file."""
    from .safetensors_io import write_safetensors

    tensors = network.kohya_state_dict(dtype)
    metadata = dict(metadata)
    metadata["sshs_model_hash"] = tensor_data_sha256(tensors)
    path = write_safetensors(path, tensors, metadata)
    logger.info("wrote %s (%d modules)", path, len(network.loras))
    return path
