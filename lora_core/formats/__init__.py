"""LoRA file formats: read a file, normalise its keys, and compute each module's ΔW.

Public API (see docs/ARCHITECTURE.md): `load_lora(path, name=None) -> LoraFile`, `LoraFile`,
`Adapter`, `LoraFormatError`, `ModuleKey`.

Importing the package does not import torch: `errors`, `keys` (key normalisation), `family` and
`algorithms` (the algorithm registry: detection, validation, rank, shape hint from shapes alone)
are plain Python, so torch-free code may use them; the names that need torch load on first use.
"""
from __future__ import annotations

import importlib

from .errors import LoraFormatError
from .keys import ModuleKey

__all__ = ["Adapter", "LoraFile", "LoraFormatError", "ModuleKey", "load_lora"]

_LAZY = {"Adapter": ".adapter", "LoraFile": ".lorafile", "load_lora": ".lorafile"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
