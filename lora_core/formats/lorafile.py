"""`load_lora`: a file on disk -> `LoraFile` (metadata, one Adapter per module, family)."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import algorithms
from .adapter import Adapter, AdapterShapeError
from .errors import LoraFormatError
from .family import family_from_module_shapes
from .keys import ModuleKey
from .layouts import LAYOUTS, describe_unknown
from .layouts import parse as parse_layout
from .reader import read_tensors

logger = logging.getLogger(__name__)

# diffusers' `lora_adapter_metadata` prefixes -> component
_PEFT_META_COMPONENTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2", "text_encoder_3": "te3",
                         "transformer": "unet"}
# dotted file prefixes stripped before matching PEFT alpha_pattern module names
_DOTTED = ("base_model.model.", "unet.", "text_encoder_3.", "text_encoder_2.", "text_encoder.", "transformer.")


@dataclass
class LoraFile:
    path: str
    name: str
    metadata: dict[str, str]
    adapters: dict[ModuleKey, Adapter]
    family: str
    unclaimed: list[str] = field(default_factory=list)
    nbytes: int = 0
    layout: str = ""   # who wrote it, by key spelling (formats.layouts: kohya, diffusers, xlabs, ...)

    def algorithms(self) -> Counter:
        """How many modules use each algorithm (lora, locon, dora, loha, lokr, ia3, oft, ...)."""
        return Counter(a.kind for a in self.adapters.values())

    def __repr__(self) -> str:
        return f"LoraFile({self.name!r}, family={self.family}, {dict(self.algorithms())}, {len(self.adapters)} modules)"


@dataclass(frozen=True)
class _PeftAlpha:
    """lora_alpha settings of one component from PEFT/diffusers metadata."""
    alpha: float | None
    pattern: dict[str, float]
    rs_lora: bool

    def for_module(self, path: str) -> float | None:
        for name, value in self.pattern.items():
            if path == name or path.endswith("." + name):
                return value
        return self.alpha


def load_lora(path, name: str | None = None) -> LoraFile:
    """Read and normalise a LoRA file. Raises LoraFormatError naming the file and the problem."""
    path = os.fspath(path)
    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
    tensors, metadata = read_tensors(path)
    peft = _peft_alphas(path, metadata)

    groups: dict[str, dict[str, torch.Tensor]] = {}
    module_of: dict[str, ModuleKey | None] = {}
    unclaimed: list[str] = []
    used = {}   # layouts that named a module, in first-seen order
    for key, tensor in tensors.items():
        parsed, layout = parse_layout(key)
        if parsed is None:
            unclaimed.append(key)
            continue
        groups.setdefault(parsed.raw_module, {})[parsed.suffix] = tensor
        module_of[parsed.raw_module] = parsed.module
        if parsed.module is not None:
            used[layout.name] = layout
    for layout in used.values():
        layout.regroup(groups, module_of)

    adapters: dict[ModuleKey, Adapter] = {}
    for raw_module, parts in groups.items():
        key = module_of[raw_module]
        algo = algorithms.detect({s: t.shape for s, t in parts.items()}) if key is not None else None
        if algo is None:
            unclaimed.append(raw_module)
            continue
        component = key.split(":", 1)[0]
        if raw_module.startswith("text_encoder_2."):
            component = "te2"   # diffusers Flux's text_encoder_2 is its T5 (te3); its settings are text_encoder_2's
        settings = peft.get(component) or peft.get("")
        alpha = settings.for_module(_dotted_path(raw_module)) if settings else None
        try:
            adapter = Adapter(key, algo, parts, alpha=alpha, rs_lora=bool(settings and settings.rs_lora))
        except AdapterShapeError as e:
            raise LoraFormatError(path, str(e)) from e
        except (IndexError, RuntimeError, ValueError, TypeError) as e:
            # tensors of ranks no algorithm writes (a 0-d factor, ...): a broken or crafted file
            raise LoraFormatError(path, f"module {key}: {algo.name} tensors of unusable shapes ({e})") from e
        ignored = set(parts) - algo.claims
        if ignored:
            logger.debug("%s: module %s: ignoring %s", name, key, sorted(ignored))
        if key in adapters:
            logger.warning("%s: module %s appears twice (as %s); keeping the first", name, key, raw_module)
            continue
        adapters[key] = adapter

    if unclaimed:
        logger.info("%s: %d module(s) not understood, skipped: %s", name, len(unclaimed),
                    ", ".join(sorted(unclaimed)[:5]) + (" ..." if len(unclaimed) > 5 else ""))
    if not adapters and not unclaimed:
        raise LoraFormatError(path, "the file holds no tensors")
    layout = _file_layout(used)
    if not adapters:
        # nothing would be applied: say why instead of loading a LoRA that silently does nothing
        if layout is None:
            raise LoraFormatError(path, describe_unknown(list(tensors)))
        raise LoraFormatError(path, f"{layout.label} layout, but no module holds a complete adapter "
                                    f"({', '.join(sorted(unclaimed)[:3])}{' ...' if len(unclaimed) > 3 else ''})")

    shapes = {k: _shape_hint(a) for k, a in adapters.items()}
    # every module counts (its component is evidence); (0, 0): no width known
    family = family_from_module_shapes(list(tensors), {k: s or (0, 0) for k, s in shapes.items()}, metadata)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return LoraFile(path=path, name=name, metadata=metadata, adapters=adapters, family=family,
                    unclaimed=sorted(unclaimed), nbytes=nbytes, layout=layout.name)


def _file_layout(used: dict):
    """The first layout in `layouts.LAYOUTS` order among those that named a module."""
    for layout in LAYOUTS:
        if layout.name in used:
            return layout
    return None


def _shape_hint(adapter: Adapter):
    try:
        return adapter.shape_hint()
    except (IndexError, RuntimeError, ValueError, TypeError):  # odd factor ranks: no evidence
        return None


def _dotted_path(raw_module: str) -> str:
    for prefix in _DOTTED:
        if raw_module.startswith(prefix):
            raw_module = raw_module[len(prefix):]
    return raw_module


def _peft_alphas(path: str, metadata: dict[str, str]) -> dict[str, _PeftAlpha]:
    """lora_alpha per component from diffusers' `lora_adapter_metadata` or a PEFT adapter_config.json
    next to an `adapter_model.*` file. Untrusted JSON: anything malformed is ignored."""
    configs: dict[str, dict] = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            flat = json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            flat = None
            logger.warning("%s: unreadable lora_adapter_metadata, assuming alpha = rank", path)
        if isinstance(flat, dict):
            for k, v in flat.items():
                prefix, _, field_name = str(k).partition(".")
                if prefix in _PEFT_META_COMPONENTS and field_name:
                    configs.setdefault(_PEFT_META_COMPONENTS[prefix], {})[field_name] = v
    sidecar = os.path.join(os.path.dirname(path), "adapter_config.json")
    if os.path.basename(path).startswith("adapter_model.") and os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                cfg = json.load(f)
            if isinstance(cfg, dict):
                configs.setdefault("", cfg)
        except (OSError, ValueError):
            logger.warning("%s: unreadable adapter_config.json, assuming alpha = rank", path)
    out = {}
    for component, cfg in configs.items():
        alpha = _number(cfg.get("lora_alpha"))
        pattern_raw = cfg.get("alpha_pattern")
        pattern = {}
        if isinstance(pattern_raw, dict):
            pattern = {str(k): n for k, v in pattern_raw.items() if (n := _number(v)) is not None}
        out[component] = _PeftAlpha(alpha, pattern, cfg.get("use_rslora") is True)
    return out


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if v == v and abs(v) != float("inf") else None
