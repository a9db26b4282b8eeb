"""Restoring the original weights before A1111 replaces or reloads a checkpoint.

A1111 loads a checkpoint of the same architecture *into the live model* (same parameter tensors).
If LoRA deltas were still merged, our W0 backups would then belong to the old checkpoint, and the
loaded model would be "restored" to stale weights later. So the webui's model-switching functions
are wrapped: before they run, the host restores the model. `on_model_loaded` then re-binds.
The wrappers are removed again on script unload (A1111's "Reload UI" runs the scripts anew).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

# sd_models functions that may overwrite, drop or swap out the loaded model's weights.
GUARDED = ("reload_model_weights", "load_model", "unload_model_weights", "load_model_weights")
_MARK = "__lora_core_guarded__"


class ModelGuard:
    def __init__(self, sd_models: Any, before_change: Callable[[], None]):
        self.sd_models = sd_models
        self.before_change = before_change
        self.originals: dict[str, Any] = {}

    def install(self) -> None:
        for name in GUARDED:
            current = getattr(self.sd_models, name, None)
            if current is None or not callable(current):
                continue
            original = getattr(current, _MARK, current)  # never wrap a wrapper (Reload UI)
            self.originals[name] = original
            setattr(self.sd_models, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        @functools.wraps(original)
        def guarded(*args, **kwargs):
            try:
                if name == "reload_model_weights" and _reload_is_noop(self.sd_models, args, kwargs):
                    return original(*args, **kwargs)
                self.before_change()
            except Exception:  # noqa: BLE001 - a failed restore must not block loading a model
                log.exception("lora_core: restoring weights before %s failed", name)
            return original(*args, **kwargs)

        setattr(guarded, _MARK, original)
        return guarded

    def uninstall(self) -> None:
        for name, original in self.originals.items():
            current = getattr(self.sd_models, name, None)
            if getattr(current, _MARK, None) is original:
                setattr(self.sd_models, name, original)
        self.originals.clear()


def _reload_is_noop(sd_models: Any, args: tuple, kwargs: dict) -> bool:
    """AUTOMATIC1111 calls `reload_model_weights()` at the start of every generation; it returns at
    once when the requested checkpoint is the loaded one (same file, not forced). Restoring then
    would make every request re-apply its LoRAs. Any doubt counts as a change (restore first): an
    in-place reload we did not foresee is still caught by `on_model_loaded`, which drops the backups."""
    try:
        sd_model = kwargs.get("sd_model", args[0] if args else None) or sd_models.model_data.sd_model
        info = kwargs.get("info", args[1] if len(args) > 1 else None) or sd_models.select_checkpoint()
        forced = kwargs.get("forced_reload", args[2] if len(args) > 2 else False)
        loaded = getattr(sd_model, "sd_model_checkpoint", None)
        return not forced and loaded is not None and loaded == getattr(info, "filename", None)
    except Exception:  # noqa: BLE001 - a webui we do not know: restore, as before
        return False
