"""Making lora_core, not the built-in Lora extension, handle `<lora:...>` when both are enabled.

The webui loads built-in extensions before user extensions and runs `before_ui` callbacks in
reverse order, so the built-in's registration (done in `before_ui`) would run after ours and win.
Our callbacks must therefore sort before the built-in's (`lora` in AUTOMATIC1111,
`sd_forge_lora` in Forge). Webuis since 1.8 sort callbacks by the `[callbacks/...]` Before/After
sections of each extension's metadata.ini; we declare ours in our extension's metadata at run
time rather than in a metadata.ini file, because the webui names a section after the folder the
user cloned us into (a static file would name the wrong extension, which the webui reports as an
error). A webui without that sorting gets our entry moved to the front of its callback list.
The registration is re-asserted when the app starts. Every replacement is logged.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NETWORK_NAME = "lora"
ALIASES = ("lyco",)
ROUTES = ("/sdapi/v1/loras", "/sdapi/v1/refresh-loras")


def register_network(extra_networks: Any, network: Any) -> None:
    """Puts `network` under `lora` and its aliases, replacing whatever was there (logged once)."""
    registry = extra_networks.extra_network_registry
    previous = registry.get(NETWORK_NAME)
    if previous is not None and previous is not network:
        # A warning, so it shows with the webui's default log level: users should know which
        # extension handles their tags (disable the built-in Lora extension to silence it).
        log.warning("lora_core: replacing the <lora:...> handler %s.%s (built-in Lora extension) with lora_core",
                    type(previous).__module__, type(previous).__name__)
    extra_networks.register_extra_network(network)
    for alias in ALIASES:
        old = extra_networks.extra_network_aliases.get(alias)
        if old is not None and old is not network:
            log.info("lora_core: <%s:...> now handled by lora_core", alias)
        extra_networks.register_extra_network_alias(network, alias)
        # An alias is only consulted when no network has that name.
        if registry.get(alias) not in (None, network):
            log.info("lora_core: removing network registered as %r so the alias applies", alias)
            del registry[alias]


def register_page(ui_extra_networks: Any, page: Any) -> None:
    """Registers our cards page and drops any other page with the same name (the built-in's)."""
    pages = ui_extra_networks.extra_pages
    for other in [p for p in pages if getattr(p, "name", None) == page.name and p is not page]:
        log.info("lora_core: replacing the %r extra networks page of %s", page.name, type(other).__module__)
        pages.remove(other)
    if page not in pages:
        ui_extra_networks.register_page(page)


# Canonical names of the built-in LoRA extensions (AUTOMATIC1111, Forge).
BUILTIN_LORA_EXTENSIONS = ("lora", "sd_forge_lora")


def order_before_builtin(script_callbacks: Any, extensions: Any, category: str, fn: Any) -> str:
    """Makes our `category` callback `fn` sort before the built-in Lora's. Returns how:
    "declared" (metadata Before, the webui's own sorting), "moved" (callback list edited) or
    "unchanged" (neither possible; app_started re-registers the network anyway)."""
    if _declare_before(script_callbacks, extensions, category, fn):
        return "declared"
    return "moved" if move_to_front(script_callbacks, "callbacks_" + category, fn) else "unchanged"


def _declare_before(script_callbacks: Any, extensions: Any, category: str, fn: Any) -> bool:
    sort = getattr(script_callbacks, "sort_callbacks", None)
    find = getattr(extensions, "find_extension", None)
    callbacks = _callbacks(script_callbacks, "callbacks_" + category)
    if not callable(sort) or not callable(find) or callbacks is None:
        return False
    ours = next((c for c in callbacks if getattr(c, "callback", None) == fn), None)
    extension = find(getattr(ours, "script", ""))  # the file that registered it, inside our folder
    config = getattr(getattr(extension, "metadata", None), "config", None)
    if ours is None or config is None or not hasattr(config, "add_section"):
        return False
    builtin = [c.name for c in callbacks if str(getattr(c, "name", "")).split("/", 1)[0] in BUILTIN_LORA_EXTENSIONS]
    if not builtin:
        return True  # nothing to order against: the built-in is absent or disabled
    section = f"callbacks/{ours.name}"
    if not config.has_section(section):
        config.add_section(section)
    config.set(section, "Before", " ".join(builtin))
    try:
        order = [c.name for c in sort(category, callbacks, enable_user_sort=False)]
    except Exception:  # noqa: BLE001 - a sorting we do not understand: fall back to the list edit
        log.debug("lora_core: declared callback order not usable", exc_info=True)
        config.remove_section(section)
        return False
    if all(order.index(ours.name) < order.index(name) for name in builtin):
        return True
    config.remove_section(section)
    return False


def _callbacks(script_callbacks: Any, key: str) -> list | None:
    cmap = getattr(script_callbacks, "callback_map", None)
    if isinstance(cmap, dict) and isinstance(cmap.get(key), list):
        return cmap[key]
    return None


def move_to_front(script_callbacks: Any, key: str, fn: Any) -> bool:
    """Moves the callback entry for `fn` to index 0 of callback list `key` (webui internals; a
    webui without `callback_map` keeps the normal order and we rely on the app_started re-check)."""
    callbacks = _callbacks(script_callbacks, key)
    if callbacks is None:
        return False
    for i, entry in enumerate(callbacks):
        if getattr(entry, "callback", None) == fn:  # == : bound methods are new objects each time
            callbacks.insert(0, callbacks.pop(i))
            return True
    return False


def replace_routes(app: Any, paths: tuple[str, ...] = ROUTES) -> int:
    """Removes routes already mounted at `paths` (FastAPI serves the first match, and the built-in
    mounts the same paths); returns how many were removed."""
    router = getattr(app, "router", None)
    routes = getattr(router, "routes", None)
    if not isinstance(routes, list):
        return 0
    old = [r for r in routes if getattr(r, "path", None) in paths]
    for r in old:
        routes.remove(r)
    if old:
        log.info("lora_core: replacing %d existing route(s) %s", len(old), sorted({r.path for r in old}))
    return len(old)
