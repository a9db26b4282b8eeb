"""Diffusers-format model folders (Flux.1, SD3/3.5) in models/Stable-diffusion, loaded fully offline.

Such a folder is what `pipeline.save_pretrained()` writes and what the hubs publish: a
`model_index.json` naming the pipeline class and one subfolder per component (transformer/, vae/,
text_encoder*/, tokenizer*/, scheduler/). Everything, tokenizers included, is read from the folder
(`local_files_only`); a folder that lacks a part is refused naming the part, never completed from a
hub. Single-file SD checkpoints are checkpoints.py's.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lora_core.app.checkpoints import CheckpointError

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
# pipeline class in model_index.json -> family (as lora_core.formats names it)
PIPELINE_FAMILIES = MappingProxyType({"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"})
# components a txt2img generation needs, per family, in the pipeline's own names
REQUIRED_PARTS = MappingProxyType({
    "flux": ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
    "sd3": ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
            "text_encoder_3", "tokenizer_3"),
})
# the text encoders in lora_core's te1/te2/te3 order (Binding.from_diffusers puts a T5 at te3)
DISPLAY_NAMES = MappingProxyType({"flux": "Flux", "sd3": "SD3"})
TEXT_ENCODERS = MappingProxyType({
    "flux": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3"),
})


@dataclass
class LoadedFolder:
    family: str
    pipe: object  # the diffusers pipeline, progress bar off
    default_size: int
    notes: list[str] = field(default_factory=list)


def is_diffusers_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MODEL_INDEX).is_file()


def read_model_index(folder) -> dict:
    folder = Path(folder)
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(folder, f"cannot read {MODEL_INDEX} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(index, dict):
        raise CheckpointError(folder, f"{MODEL_INDEX} is not a JSON object")
    return index


def folder_family(folder, index: dict | None = None) -> str:
    """flux / sd3 from model_index.json's `_class_name`; CheckpointError for any other pipeline."""
    index = read_model_index(folder) if index is None else index
    class_name = index.get("_class_name")
    family = PIPELINE_FAMILIES.get(class_name)
    if family is None:
        raise CheckpointError(folder, f"diffusers pipeline {class_name!r} is not supported as a folder (supported: "
                                      f"{', '.join(PIPELINE_FAMILIES)}; SD1/SD2/SDXL load as single .safetensors files)")
    return family


def check_parts(folder, family: str, index: dict) -> None:
    """Every part generation needs is listed in model_index.json and present as a subfolder."""
    folder = Path(folder)
    for part in REQUIRED_PARTS[family]:
        entry = index.get(part)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise CheckpointError(folder, f"{MODEL_INDEX} lists no {part} (a {family} folder needs "
                                          f"{', '.join(REQUIRED_PARTS[family])})")
        if not (folder / part).is_dir():
            why = " (folders must carry their tokenizers; nothing is downloaded)" if part.startswith("tokenizer") else ""
            raise CheckpointError(folder, f"missing the {part}/ subfolder{why}")


def _default_size(pipe) -> int:
    """The pipeline's own default (sample size x VAE scale), kept to the app's 64..2048 range in
    steps of 16 (what both pipelines can take without resizing)."""
    size = int(getattr(pipe, "default_sample_size", 128)) * int(getattr(pipe, "vae_scale_factor", 8))
    return max(64, min(2048, size // 16 * 16))


def load_folder(folder, dtype=None) -> LoadedFolder:
    """The folder's pipeline, offline. CheckpointError naming the folder for anything unusable."""
    import torch

    folder = Path(folder)
    index = read_model_index(folder)
    family = folder_family(folder, index)
    check_parts(folder, family, index)
    with _quiet_imports():
        import diffusers

    cls = getattr(diffusers, index["_class_name"])
    try:
        # parts a txt2img run does not use (image encoder, feature extractor) are not loaded
        optional = {name: None for name in ("image_encoder", "feature_extractor") if name in index}
        pipe = cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32, **optional)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, ImportError) as exc:
        raise CheckpointError(folder, f"cannot load the {family} pipeline ({type(exc).__name__}: {exc})") from exc
    pipe.set_progress_bar_config(disable=True)
    for part in TEXT_ENCODERS[family] + ("transformer", "vae"):
        getattr(pipe, part).eval()
    return LoadedFolder(family, pipe, _default_size(pipe))


def _quiet_imports():
    from lora_core.app.quiet_imports import quiet_image_processor_fallback

    return quiet_image_processor_fallback()
