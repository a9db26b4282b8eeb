"""The only place that knows the calling conventions of `lora_core.engine.Engine`, `Binding` and
`LoraCache`. Imported lazily (torch): the webui has torch loaded anyway, the tab path must not.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# A1111 (1.6+) flags on shared.sd_model, checked in this order (an SD3 model is not SDXL).
_FLAGS = (("is_sd3", "sd3"), ("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1"))


def family_of(sd_model: Any) -> str | None:
    """A1111's model flags -> our family name; Forge's Flux engine -> "flux"; None when no model
    is loaded or the webui says nothing (then the binding tells the family from the tensors)."""
    if sd_model is None:
        return None
    for flag, family in _FLAGS:
        if getattr(sd_model, flag, False) is True:
            return family
    return _forge_dit_family(sd_model)


def _forge_dit_family(sd_model: Any) -> str | None:
    """Forge sets no is_flux: its Flux engine (backend/diffusion_engine/flux.py) is the one whose
    `model_config` is huggingface_guess's `Flux` / `FluxSchnell`, named by its `huggingface_repo`
    ("black-forest-labs/FLUX.1-dev" / "-schnell"); Forge's own LoRA code tells Flux the same way
    ('flux' in the repo name). Its `unet_config` does NOT say "image_model": huggingface_guess.guess
    deletes that entry before Forge builds the transformer from the config (found in the real
    Forge dfdcbab, tools/forge_flux_check.sh); it is still read in case a version keeps it."""
    config = getattr(sd_model, "model_config", None)
    repo = getattr(config, "huggingface_repo", None)
    if isinstance(repo, str) and "flux" in repo.lower():
        return "flux"
    unet_config = getattr(config, "unet_config", None)
    if isinstance(unet_config, dict) and unet_config.get("image_model") == "flux":
        return "flux"
    return None


def create_cache(cache_count: int | None, cache_mb: int | None) -> Any:
    """Parsed LoRA files, kept across checkpoint switches (one cache for all engines)."""
    from lora_core.patcher import LoraCache

    return LoraCache(max_count=cache_count, max_mb=cache_mb)


def set_cache_limits(cache: Any, cache_count: int | None, cache_mb: int | None) -> None:
    # Takes effect at the next load (LoraCache evicts when it stores a file).
    cache.max_count = cache_count
    cache.max_bytes = None if cache_mb is None else int(cache_mb * 1024 * 1024)


def create_engine(tensors: Any, family: str | None, cache: Any, w0_source: Any = None) -> Any:
    """An Engine bound to the model tensors `model_access.model_tensors` found: A1111's LDM model
    (UNet `model.diffusion_model`, SD1 `cond_stage_model.transformer`, SD2 OpenCLIP
    `cond_stage_model.model` with its fused in_proj, SDXL `conditioner.embedders.0/1`) or Forge's
    `forge_objects` (UNet and CLIP apart, CLIP in the HF namespace). The binding holds the live
    parameters, so it stays valid when the webui moves the model between devices; a webui that
    swaps Parameter objects changes the tensors' fingerprint and the host binds again.
    `w0_source`: see `checkpoint_w0`."""
    from lora_core.engine import Engine
    from lora_core.targets import Binding

    text = [(c, ns, n, t, tensors.text_names.get((c, n), f"{c}.{n}")) for c, ns, n, t in tensors.text]
    binding = Binding.from_parts(tensors.unet, text, family=family, unet_prefix=tensors.unet_prefix)
    quantized = getattr(tensors, "quantized", ())
    if quantized:  # once per binding: an nf4/GGUF model takes LoRAs only where it is not quantized
        log.warning("lora_core: %d weights of the loaded model are stored quantized (e.g. %s); lora_core "
                    "cannot merge into them and skips LoRA modules there. Load a bf16/fp16/fp8 checkpoint "
                    "to apply LoRAs to the whole model.", len(quantized), quantized[0])
    return Engine(binding, cache=cache, w0_source=w0_source)


# "auto" reads W0 back from the checkpoint for models this large (Flux, SD3.5 Large): below it,
# copies cost little memory and restore without touching the file.
AUTO_CHECKPOINT_BYTES = 8 << 30


def checkpoint_w0(sd_model: Any, tensors: Any, mode: str) -> Any:
    """The source of original weights for `create_engine`, by the setting `mode` ("auto",
    "always", "never"): the safetensors file the webui loaded the model from, or None (copies)."""
    if mode not in ("auto", "always"):
        return None
    if mode == "auto":
        size = sum(t.numel() * t.element_size() for _n, t in tensors.unet)
        size += sum(t.numel() * t.element_size() for *_r, t in tensors.text)
        if size < AUTO_CHECKPOINT_BYTES:
            return None
    from lora_core.patcher.checkpoint_w0 import default_names, for_checkpoint

    prefix = getattr(tensors, "unet_prefix", "")

    def names(name: str) -> list[str]:
        # a transformer-only file (flux1-dev.safetensors as BFL ships it) keeps the bare names;
        # the patcher compares bits before it trusts a tensor it found there
        out = default_names(name)
        if prefix and name.startswith(prefix):
            out.append(name[len(prefix):])
        return out

    info = getattr(sd_model, "sd_checkpoint_info", None)
    return for_checkpoint(getattr(info, "filename", None), names)


def holds_inference_tensors(tensors: Any) -> bool:
    """True when the webui created the weights under `torch.inference_mode()` (Forge loads its
    models that way): torch then allows in-place writes to them only inside inference mode."""
    return any(t.is_inference() for _, t in tensors.unet[:1] + [(n, t) for *_, n, t in tensors.text[:1]])


def _writing(inference: bool) -> Any:
    import contextlib

    import torch

    return torch.inference_mode() if inference else contextlib.nullcontext()


def activate(engine: Any, tag_text: str, library: Any, inference: bool = False) -> tuple[Any, Any]:
    """Applies exactly the LoRAs of `tag_text` (empty: none); returns the resolved prompt
    (`lora_core.request.PromptRequests`) and the engine's PatchReport.
    `inference`: the weights are inference tensors (see `holds_inference_tensors`)."""
    from lora_core.request import resolve_prompt

    resolved = resolve_prompt(tag_text, library, family=engine.family)
    with _writing(inference):
        report = engine.apply_resolved(resolved)
    return resolved, report


def restore(engine: Any, inference: bool = False) -> None:
    with _writing(inference):
        engine.restore()
