"""The LoRA browsing tab (torch-free; builds under gradio 3.41.2 and 6.x).

    from lora_core.ui import build_lora_tab, TabSettings
    blocks = build_lora_tab(lambda: library, TabSettings(current_family=lambda: "sdxl"))

Modules: `entry_view` (library entry -> plain display data), `render` (escaped HTML),
`controller` (queries, details, favorites, sidecar edits; no gradio), `tab` (gradio wiring),
`compat` (the gradio 3/6 differences). gradio itself is imported only when a tab is built.
"""
from lora_core.ui.controller import LoraTabController, Query, TabSettings
from lora_core.ui.tab import LoraPanel, build_lora_tab, create_lora_panel

__all__ = ["LoraTabController", "LoraPanel", "Query", "TabSettings", "build_lora_tab", "create_lora_panel"]
