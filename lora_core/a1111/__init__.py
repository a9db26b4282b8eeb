"""lora_core as an AUTOMATIC1111 extension: the thin adapter between the webui and lora_core.

`scripts/lora_core_a1111.py` (executed by the webui at start-up) calls
`setup(Webui.from_modules(), extension_dir)`. Everything that touches webui objects lives here;
`modules` is handed in, never imported, and nothing here imports torch until the first generation.

What `setup` registers:
* extra network `lora` and alias `lyco` (replacing the built-in Lora extension's, see `takeover`),
* the "Lora" cards page, the "LoRA" browsing tab, the settings section,
* `on_model_loaded` re-binding and wrappers that restore weights before checkpoint changes,
* `Lora hashes` infotext and its paste handling,
* `GET /sdapi/v1/loras`, `POST /sdapi/v1/refresh-loras` and the tab's JSON routes.
"""
from __future__ import annotations

import logging
from typing import Any

from lora_core.a1111.host import A1111Host
from lora_core.a1111.webui import Webui

log = logging.getLogger(__name__)

TAB_TITLE = "LoRA"
TAB_ELEM_ID = "lora_core_tab"
API_PREFIX = "/lora_core/api"


def setup(webui: Webui, extension_dir: str) -> A1111Host:
    from lora_core.a1111 import settings, takeover
    from lora_core.a1111.model_guard import ModelGuard
    from lora_core.a1111.network import make_network_class
    from lora_core.a1111.page import make_page_class

    host = A1111Host(webui, extension_dir)
    network = make_network_class(webui.extra_networks.ExtraNetwork)(host)
    page_class = make_page_class(webui.ui_extra_networks.ExtraNetworksPage, API_PREFIX)
    guard = ModelGuard(webui.sd_models, host.before_model_change)
    guard.install()
    callbacks = webui.script_callbacks
    from lora_core.library.civitai_sync import CivitaiSync

    civitai = CivitaiSync(host.library, host.settings.civitai)

    def before_ui():
        takeover.register_network(webui.extra_networks, network)
        takeover.register_page(webui.ui_extra_networks, page_class(host))

    def ui_tabs():
        from lora_core.ui.controller import TabSettings
        from lora_core.ui.tab import build_lora_tab

        tab = build_lora_tab(host.library, TabSettings(current_family=host.current_family, api_prefix=API_PREFIX,
                                                       rescan=host.refresh, civitai=civitai, match_counts=host.match_counts,
                                                       current_base_model=host.current_base_model))
        return [(tab, TAB_TITLE, TAB_ELEM_ID)]

    def ui_settings():
        settings.register(webui.shared, webui.gr, onchange={
            "lora_core_cache_count": host.set_cache_limits,
            "lora_core_cache_mb": host.set_cache_limits,
        })

    def app_started(_demo: Any, app: Any):
        from lora_core.ui.api import register_routes

        takeover.register_network(webui.extra_networks, network)  # whoever registered after us
        takeover.replace_routes(app)
        register_routes(app, host.library, prefix=API_PREFIX, rescan=host.refresh, civitai=civitai)

    def unload():
        guard.uninstall()
        host.unload()

    callbacks.on_before_ui(before_ui)
    callbacks.on_ui_tabs(ui_tabs)
    callbacks.on_ui_settings(ui_settings)
    callbacks.on_app_started(app_started)
    callbacks.on_model_loaded(host.on_model_loaded)
    callbacks.on_infotext_pasted(host.infotext_pasted)
    callbacks.on_script_unloaded(unload)
    # Sorted before the built-in Lora's: before_ui runs in reverse order, so ours registers last
    # and wins; our paste handler rewrites names by hash before the built-in reads them.
    for category, fn in (("before_ui", before_ui), ("infotext_pasted", host.infotext_pasted)):
        how = takeover.order_before_builtin(callbacks, webui.extensions, category, fn)
        log.debug("lora_core: %s callback order %s", category, how)
    return host


__all__ = ["setup", "A1111Host", "Webui"]
