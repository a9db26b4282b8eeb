"""The "Lora" cards page under A1111's txt2img/img2img prompt (ui_extra_networks).

Cards come from the lora_core library. Clicking a card inserts `<lora:NAME:WEIGHT>` with the name
the library resolves (alias unless ambiguous, as the LoRA tab does) and the LoRA's preferred
weight (user metadata) or the extension's default weight, followed by its activation text.
LoRAs of another model family than the loaded checkpoint are hidden unless the settings say
otherwise. The webui escapes names/descriptions when it renders cards; `prompt` is a JS
expression, so every string in it goes through `quote_js` (JSON quoting).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

SD_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "flux": "Flux", "sd3": "SD3"}


def visible_for(entry_family: str | None, model_family: str | None, show_all: bool) -> bool:
    """Hide only LoRAs whose family is known and differs from the loaded model's."""
    if show_all or not model_family or not entry_family or entry_family == "unknown":
        return True
    return entry_family == model_family


def make_page_class(base: type, api_prefix: str) -> type:
    """Subclass of the webui's `ExtraNetworksPage` (passed in: `lora_core.a1111` never imports
    `modules`). Card images come from lora_core's thumbnail route under `api_prefix` (preview
    files and covers embedded in the LoRA alike)."""

    class LoraCorePage(base):
        def __init__(self, host: Any):
            super().__init__("Lora")
            self.host = host

        def refresh(self):
            self.host.refresh()

        def allowed_directories_for_previews(self):
            return list(self.host.lora_dirs())

        def _entries(self) -> list:
            try:
                return self.host.entries()
            except Exception:  # noqa: BLE001 - a broken index must not break the txt2img page
                log.exception("lora_core: listing LoRAs for the cards page failed")
                return []

        def list_items(self):
            family = self.host.current_family()
            show_all = self.host.settings.get("lora_core_show_all_families")
            for index, entry in enumerate(self._entries()):
                if getattr(entry, "error", None):
                    continue
                if not visible_for(getattr(entry, "family", None), family, show_all):
                    continue
                try:
                    yield self.item_for(entry, index)
                except Exception:  # noqa: BLE001 - one odd file must not hide the others
                    log.warning("lora_core: no card for %s", getattr(entry, "path", entry), exc_info=True)

        def create_item(self, name, index=None, enable_filter=True):
            for i, entry in enumerate(self._entries()):
                if entry.name == name or getattr(entry, "rel_name", None) == name:
                    return self.item_for(entry, i if index is None else index)
            return None

        def item_for(self, entry: Any, index: int) -> dict:
            from lora_core.ui.entry_view import format_weight, preview_url_for, view_of

            view = view_of(entry)
            tag_name = self.host.preferred_name(entry)
            weight = getattr(entry, "preferred_weight", None)
            if weight is None:
                weight = self.host.settings.get("lora_core_default_multiplier")
            prompt = quote_js(f"<lora:{tag_name}:{format_weight(weight)}>")
            if view.activation_text:
                prompt += " + " + quote_js(" " + view.activation_text)
            path = os.path.splitext(entry.path)[0]
            card_name = entry.name if not view.ambiguous else (getattr(entry, "rel_name", None) or entry.name)
            preview = None
            if getattr(entry, "preview", None) or (getattr(entry, "summary", None) or {}).get("cover_images"):
                # relative, like the webui's own thumb links, so a --subpath deployment works
                preview = "." + preview_url_for(api_prefix, entry.path, getattr(entry, "mtime", 0.0))
            samples_format = getattr(self.host.webui.shared.opts, "samples_format", "png")
            return {
                "name": card_name,
                "filename": entry.path,
                "shorthash": getattr(entry, "autov3", None) or "",
                "preview": preview,
                "description": view.description or None,
                "search_terms": [t for t in (self.search_terms_from_path(entry.path), view.alias,
                                             getattr(entry, "autov3", None), getattr(entry, "autov2", None)) if t],
                "local_preview": f"{path}.{samples_format}",
                "metadata": dict(view.summary) or None,
                "sort_keys": {"default": index, **self.get_sort_keys(entry.path)},
                "sd_version": SD_VERSIONS.get(view.family, "Unknown"),
                "prompt": prompt,
                "user_metadata": dict(getattr(entry, "user_metadata", None) or {}),
            }

    return LoraCorePage


def quote_js(text: str) -> str:
    """A JS string literal (the webui's own quote_js is the same JSON quoting)."""
    return json.dumps(str(text), ensure_ascii=False)
