"""The handful of A1111 modules the extension talks to, handed over by the script file.

`lora_core.a1111` never imports `modules` itself: the script (run by the webui) passes them in, so
the adapter can be driven by tests with a stand-in and by the webui with the real thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Webui:
    shared: Any              # modules.shared: opts, OptionInfo, cmd_opts, sd_model
    extra_networks: Any      # modules.extra_networks
    ui_extra_networks: Any   # modules.ui_extra_networks
    script_callbacks: Any    # modules.script_callbacks
    sd_models: Any           # modules.sd_models
    paths: Any               # modules.paths: models_path, data_path
    gr: Any = None           # gradio, for settings components and the tab
    extensions: Any = None   # modules.extensions (callback order metadata), where the webui has it

    @classmethod
    def from_modules(cls) -> "Webui":
        """The running webui's modules (only valid inside A1111)."""
        import gradio as gr
        from modules import extra_networks, paths, script_callbacks, sd_models, shared, ui_extra_networks

        try:
            from modules import extensions
        except ImportError:  # an older webui: callback order falls back to editing the list
            extensions = None
        return cls(shared, extra_networks, ui_extra_networks, script_callbacks, sd_models, paths, gr, extensions)
