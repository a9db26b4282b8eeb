"""LoRA file formats: read a file, normalise its keys, and compute each module's ΔW.

Public API (see docs/ARCHITECTURE.md): `load_lora(path, name=None) -> LoraFile`, `LoraFile`,
`Adapter`, `LoraFormatError`, `ModuleKey`.
"""
from .adapter import Adapter
from .errors import LoraFormatError
from .keys import ModuleKey
from .lorafile import LoraFile, load_lora

__all__ = ["Adapter", "LoraFile", "LoraFormatError", "ModuleKey", "load_lora"]
