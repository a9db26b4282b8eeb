"""The extension's entries in A1111's Settings, and typed reads of them.

Registered in `on_ui_settings` with `shared.opts.add_option`, in one section. Reads go through
`Settings.get`, which falls back to the default, so code works before the settings UI exists
(API-only launches) and with hand-edited config.json values of the wrong type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTION = ("lora_core", "LoRA (lora_core)")


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    kind: str              # "bool" | "float" | "int" | "str"
    component: str | None = None  # gradio component name; None lets the webui pick by type
    component_args: dict | None = None
    info: str = ""


OPTIONS = [
    Option("lora_core_default_multiplier", 1.0, "Weight put in a tag when a card is clicked", "float",
           "Slider", {"minimum": -1.0, "maximum": 2.0, "step": 0.05},
           "a LoRA's own 'preferred weight' (user metadata) wins"),
    Option("lora_core_cache_count", 8, "LoRA files kept in memory (count; 0 = no limit)", "int",
           "Number", {"precision": 0}),
    Option("lora_core_cache_mb", 2048, "LoRA files kept in memory (MB; 0 = no limit)", "int",
           "Number", {"precision": 0}),
    Option("lora_core_keep_applied", True, "Keep LoRAs merged between generations", "bool",
           info="faster when the next generation uses the same LoRAs; off restores the model after every generation"),
    Option("lora_core_show_all_families", False, "Show LoRAs made for other model families", "bool",
           info="otherwise the Lora cards and tab show only LoRAs that fit the loaded checkpoint"),
    Option("lora_core_restore_from_checkpoint", "auto",
           "Exact restore: read original weights back from the checkpoint file instead of keeping copies",
           "str", "Radio", {"choices": ["auto", "always", "never"]},
           "auto: for models of 8 GB and more (Flux, SD3.5 Large); saves the memory of every weight a LoRA "
           "touches; a weight that differs from the file (edited after loading) keeps a copy"),
    Option("lora_core_add_hashes_to_infotext", True, "Add Lora hashes to infotext", "bool"),
    Option("lora_core_rewrite_pasted_names", True, "Resolve pasted Lora names by hash", "bool",
           info="when parameters are pasted, tags whose file was renamed point to the local file with the same hash"),
    Option("lora_core_civitai_url", "https://civitai.com", "Civitai base URL", "str"),
    Option("lora_core_civitai_key", "", "Civitai API key", "str",
           info="empty: the CIVITAI_API_KEY environment variable"),
    Option("lora_core_nsfw_threshold", "PG13", "Blur LoRA previews rated above", "str", "Dropdown",
           {"choices": ["PG", "PG13", "R", "X", "XXX", "show all"]},
           "ratings come from Civitai; previews above this are also not downloaded"),
    Option("lora_core_warn_in_infotext", True, "Write LoRA problems (missing file, wrong family) into the image comments", "bool"),
]

BY_KEY = {o.key: o for o in OPTIONS}


def register(shared, gr, onchange: dict | None = None) -> None:
    """Adds every option to `shared.opts` (call from an on_ui_settings callback).

    onchange: key -> zero-argument callable run when the user changes that setting."""
    onchange = onchange or {}
    for o in OPTIONS:
        component = getattr(gr, o.component) if o.component else None
        info = shared.OptionInfo(o.default, o.label, component, dict(o.component_args or {}) if component else None,
                                 onchange=onchange.get(o.key), section=SECTION)
        if o.info and hasattr(info, "info"):
            info = info.info(o.info)
        shared.opts.add_option(o.key, info)


class Settings:
    """Typed view of the extension's settings in `shared.opts` (read fresh on every call)."""

    def __init__(self, opts_provider):
        self._opts = opts_provider

    def get(self, key: str) -> Any:
        option = BY_KEY[key]
        try:
            value = getattr(self._opts(), key)
        except AttributeError:
            return option.default
        return _coerce(value, option)

    def civitai(self) -> Any:
        """The Civitai settings as a `lora_core.library.civitai_sync.CivitaiSettings`."""
        from lora_core.library.civitai_sync import settings_from_env

        return settings_from_env(self.get("lora_core_civitai_url").strip() or None,
                                 self.get("lora_core_civitai_key").strip() or None,
                                 self.get("lora_core_nsfw_threshold") or None)

    def cache_limits(self) -> tuple[int | None, int | None]:
        count = self.get("lora_core_cache_count")
        mb = self.get("lora_core_cache_mb")
        return (count if count > 0 else None, mb if mb > 0 else None)


def _coerce(value: Any, option: Option) -> Any:
    try:
        if option.kind == "bool":
            return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
        if option.kind == "float":
            return float(value)
        if option.kind == "int":
            return int(float(value))
        return "" if value is None else str(value)
    except (TypeError, ValueError):
        return option.default
