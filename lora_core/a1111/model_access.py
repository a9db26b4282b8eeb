"""Where the webui keeps the tensors a LoRA patches, in AUTOMATIC1111 and in Forge.

* AUTOMATIC1111: `shared.sd_model` is the LDM torch module itself; its parameters are named like an
  LDM checkpoint (`model.diffusion_model.*`, `cond_stage_model.*`, `conditioner.embedders.N.*`).
* Forge: `shared.sd_model` is a diffusion engine object, not a torch module. The UNet is
  `forge_objects.unet.model` (`diffusion_model.*`; for Flux the BFL transformer, `double_blocks.*`,
  `single_blocks.*`), the text encoders are `forge_objects.clip.cond_stage_model`
  (`clip_l.transformer.*`, `clip_h.` for SD2, `clip_g.` for SDXL's bigG and SD3, all in the HF CLIP
  namespace; `t5xxl.transformer.*` for Flux/SD3, HF T5 names). Forge's own LoRA code merges by replacing Parameter
  objects (keeping the old ones as backups), so the tensors must be looked up by name again at
  each activation, and a merge of Forge's own must be undone before ours patches anything.

Everything that reads webui model internals is here, so a webui that changed shows up as one
`HostModelError` naming what is missing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

FORGE_UNET_PREFIX = "diffusion_model."
FORGE_TEXT_PREFIX = "text_encoders."


class HostModelError(RuntimeError):
    """The webui's model object does not have what lora_core patches (a webui version we do not
    know). The message names the missing piece."""


@dataclass(frozen=True)
class ModelTensors:
    """The patchable tensors of the loaded model, by name, and which webui laid them out."""

    kind: str                       # "a1111" or "forge"
    unet: list[tuple[str, Any]]     # (name without the UNet prefix, tensor)
    text: list[tuple[str, str, str, Any]]  # (component, namespace, name within the encoder, tensor)
    unet_prefix: str = ""           # what the UNet names lost: with it they are the checkpoint's keys
    text_names: dict = field(default_factory=dict)  # (component, name) -> the model's own name
    quantized: tuple = ()           # names of weights stored packed/quantized (left out: see _patchable)

    def fingerprint(self) -> tuple[int, ...]:
        """Identity of every tensor object: it changes when the webui swaps Parameter objects
        (Forge's LoRA merge, a new checkpoint), and then a binding made earlier is stale."""
        return tuple(id(t) for _, t in self.unet) + tuple(id(t) for *_, t in self.text)


def is_forge(sd_model: Any) -> bool:
    return sd_model is not None and getattr(sd_model, "forge_objects", None) is not None


def _named_parameters(module: Any, what: str) -> list[tuple[str, Any]]:
    named = getattr(module, "named_parameters", None)
    if not callable(named):
        raise HostModelError(f"{what} has no named_parameters() (a webui version lora_core does not know)")
    return list(named())


def _forge_objects(sd_model: Any) -> Any:
    # forge_objects_original holds the patchers without Forge's LoRA patches; processing swaps
    # forge_objects to copies of it or of forge_objects_after_applying_lora, with the same modules.
    return getattr(sd_model, "forge_objects_original", None) or sd_model.forge_objects


def _forge_modules(sd_model: Any) -> tuple[Any, Any]:
    objects = _forge_objects(sd_model)
    unet_patcher = getattr(objects, "unet", None)
    unet = getattr(unet_patcher, "model", None)
    if unet is None:
        raise HostModelError("Forge's sd_model.forge_objects.unet.model is missing")
    clip = getattr(objects, "clip", None)
    text = getattr(clip, "cond_stage_model", None) if clip is not None else None
    return unet, text


def _patchable(named: list[tuple[str, Any]], quantized: list[str]) -> list[tuple[str, Any]]:
    """Only floating-point tensors (fp32/fp16/bf16/fp8) can take W0 + ΔW. Forge's quantized Flux
    (bitsandbytes nf4/fp4, GGUF) holds packed integer storage in its Parameters: those are left
    out of the binding (their LoRA modules count as not in the model) and listed in `quantized`."""
    kept = []
    for name, tensor in named:
        is_float = getattr(tensor, "is_floating_point", None)
        if callable(is_float) and not is_float():
            quantized.append(name)
        else:
            kept.append((name, tensor))
    return kept


def model_tensors(sd_model: Any) -> ModelTensors:
    """The loaded model's tensors, named the way `Binding` reads them."""
    from lora_core.targets import naming

    quantized: list[str] = []
    if is_forge(sd_model):
        unet_module, text_module = _forge_modules(sd_model)
        unet = [(n[len(FORGE_UNET_PREFIX):], t)
                for n, t in _patchable(_named_parameters(unet_module, "Forge's UNet"), quantized)
                if n.startswith(FORGE_UNET_PREFIX)]
        text = []
        text_names = {}
        if text_module is not None:
            for name, tensor in _patchable(_named_parameters(text_module, "Forge's text encoder"), quantized):
                encoder, _, rest = name.partition(".")
                for attr, component, namespace in naming.FORGE_TEXT_ENCODERS:  # CLIPs and T5
                    if encoder == attr and rest.startswith("transformer."):
                        text.append((component, namespace, rest[len("transformer."):], tensor))
                        # as Forge names them when it saves a checkpoint (ForgeDiffusionEngine.
                        # save_checkpoint), which is the Flux/SD3 single-file layout
                        text_names[(component, rest[len("transformer."):])] = FORGE_TEXT_PREFIX + name
                        break
        if not unet:
            raise HostModelError("Forge's UNet has no parameters named diffusion_model.*"
                                 + (" that are not quantized" if quantized else ""))
        # Forge's UNet (SD1/SD2/SDXL UNet, Flux BFL or SD3 MMDiT transformer) is the checkpoint's
        # `model.diffusion_model.*`
        return ModelTensors("forge", unet, text, unet_prefix="model." + FORGE_UNET_PREFIX, text_names=text_names,
                            quantized=tuple(quantized))
    unet = []
    text = []
    text_names = {}
    for name, tensor in _patchable(_named_parameters(sd_model, "shared.sd_model"), quantized):
        if name.startswith(naming.LDM_UNET_PREFIX):
            unet.append((name[len(naming.LDM_UNET_PREFIX):], tensor))
            continue
        if not name.startswith(("cond_stage_model.", "conditioner.", "text_encoders.")):
            continue
        plain = name.replace(".wrapped.", ".")  # A1111's hijack wraps the text encoder once
        for prefix, component, namespace in naming.LDM_TEXT_PREFIXES + naming.DIT_TEXT_PREFIXES:  # + SD3's
            if plain.startswith(prefix):
                text.append((component, namespace, plain[len(prefix):], tensor))
                text_names[(component, plain[len(prefix):])] = name
                break
    return ModelTensors("a1111", unet, text, unet_prefix=naming.LDM_UNET_PREFIX, text_names=text_names,
                        quantized=tuple(quantized))


def moved_tensors(old: ModelTensors, new: ModelTensors) -> list[tuple[Any, Any]]:
    """(old, new) tensor pairs under the same name where the webui replaced the object but kept
    its content (Forge re-wraps weights as new Parameters when it moves them between devices).
    While LoRAs are merged such a new object carries the merged values, so after W0 is written
    back into the old object it must be copied into the new one too."""
    import torch

    before = {("unet", n): t for n, t in old.unet}
    before.update({(c, n): t for c, _, n, t in old.text})
    after = {("unet", n): t for n, t in new.unet}
    after.update({(c, n): t for c, _, n, t in new.text})
    pairs = []
    with torch.no_grad():
        for key, tensor in after.items():
            previous = before.get(key)
            if previous is None or previous is tensor or previous.shape != tensor.shape:
                continue
            if previous.dtype == tensor.dtype and torch.equal(previous.detach().to(tensor.device), tensor.detach()):
                pairs.append((previous, tensor))
    return pairs


def copy_into(pairs: list[tuple[Any, Any]]) -> None:
    """Copies each old tensor's content into its new object (see `moved_tensors`)."""
    import torch

    with torch.no_grad():
        for previous, tensor in pairs:
            tensor.copy_(previous)


def forge_lora_merged(sd_model: Any) -> bool:
    """True when Forge's own LoRA code has merged weights into this model (its loader keeps
    backups of the Parameters it replaced)."""
    if not is_forge(sd_model):
        return False
    try:
        unet, text = _forge_modules(sd_model)
    except HostModelError:
        return False
    return any(_loader_merged(getattr(m, "lora_loader", None)) for m in (unet, text) if m is not None)


def _loader_merged(loader: Any) -> bool:
    # backup: Parameters replaced by merged ones; online_backup: layers that add the LoRA at run
    # time (Forge's mode for quantized weights). refresh({}) clears both.
    return loader is not None and bool(getattr(loader, "backup", None) or getattr(loader, "online_backup", None))


def release_forge_lora(sd_model: Any) -> bool:
    """Undo a merge made by Forge's own LoRA code, through Forge's loader, so its original
    Parameters are back in the model before lora_core patches them; and make the next sampling
    load the patchers without LoRA patches (otherwise Forge would merge its LoRA again on top).
    Returns True when something was undone."""
    if not forge_lora_merged(sd_model):
        return False
    unet, text = _forge_modules(sd_model)
    objects = _forge_objects(sd_model)
    for module, patcher in ((unet, getattr(objects, "unet", None)), (text, getattr(objects, "clip", None))):
        loader = getattr(module, "lora_loader", None) if module is not None else None
        if not _loader_merged(loader):
            continue
        offload = getattr(getattr(patcher, "patcher", patcher), "offload_device", None)
        kwargs = {"offload_device": offload} if offload is not None else {}
        loader.refresh(lora_patches={}, **kwargs)
    original = getattr(sd_model, "forge_objects_original", None)
    if original is not None and hasattr(original, "shallow_copy"):
        sd_model.forge_objects_after_applying_lora = original.shallow_copy()
    if hasattr(sd_model, "current_lora_hash"):
        sd_model.current_lora_hash = str([])
    return True
