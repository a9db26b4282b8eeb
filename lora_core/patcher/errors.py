"""Errors raised by the patcher."""
from __future__ import annotations


class PatchError(RuntimeError):
    """An apply failed; the model was rolled back to the state before the call.

    `lora_name`/`module` say which LoRA and module failed when known, so a host can drop that
    LoRA and retry with the rest.
    """

    def __init__(self, message: str, lora=None, module: str | None = None):
        super().__init__(message)
        self.lora = lora
        self.module = module


class AdapterFailure(Exception):
    """Internal: an adapter's ΔW computation raised; carries the plan entry (and its LoRA)."""

    def __init__(self, entry):
        super().__init__(str(getattr(entry, "module", "?")))
        self.entry = entry
