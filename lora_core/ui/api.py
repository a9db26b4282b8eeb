"""REST routes: A1111-compatible `/sdapi/v1/loras` + `/sdapi/v1/refresh-loras`, and the JSON routes
the page's JavaScript uses (autocomplete, paging, thumbnails) plus the JS/CSS files themselves.

`register_routes(app, library_provider, ...)` adds them to any FastAPI app: the standalone server's,
or A1111's (from `script_callbacks.on_app_started(lambda demo, app: register_routes(app, ...))`).
No torch here. Responses are JSON (never HTML), so untrusted names cannot run as markup; the JS
inserts them as text.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from lora_core.ui.controller import SORTS, full_metadata, resolve_tag_name
from lora_core.ui.entry_view import preview_url_for, view_of

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
STATIC_FILES = {  # the only files the static route serves
    "lora_core.js": (ROOT / "javascript" / "lora_core.js", "text/javascript; charset=utf-8"),
    "lora_core_downloads.js": (ROOT / "javascript" / "lora_core_downloads.js", "text/javascript; charset=utf-8"),
    "lora_core_library_tools.js": (ROOT / "javascript" / "lora_core_library_tools.js",
                                   "text/javascript; charset=utf-8"),
    "style.css": (ROOT / "style.css", "text/css; charset=utf-8"),
}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif"}
MAX_PAGE_SIZE = 500
SDAPI_PAGE = 1000


def iter_entries(library: Any):
    """Every entry of the library (`Library.all()`, else page by page through `search`)."""
    every = getattr(library, "all", None)
    if callable(every):
        yield from every()
        return
    page = 0
    while True:
        result = library.search("", page=page, page_size=SDAPI_PAGE, sort="name")
        yield from result.items
        if (page + 1) * SDAPI_PAGE >= int(result.total) or not result.items:
            return
        page += 1


def sdapi_lora(entry: Any) -> dict:
    """One item of `GET /sdapi/v1/loras`, shaped like A1111's (name, alias, path, metadata).

    metadata is the library's header summary (family, algorithm, network dim/alpha, base model,
    top training tags, ...) rather than the raw safetensors metadata: listing 50,000 files must not
    reread 50,000 headers. `GET {prefix}/lora?path=` returns the full metadata of one file.
    """
    return {
        "name": entry.name,
        "alias": entry.alias or entry.name,
        "path": entry.path,
        "metadata": dict(getattr(entry, "summary", {}) or {}),
        "family": getattr(entry, "family", "unknown"),
        "base_model": getattr(entry, "base_model", ""),   # library/base_models.py label ("pony", ...)
        "error": getattr(entry, "error", None),
    }


def register_routes(
    app: Any,
    library_provider: Callable[[], Any],
    *,
    prefix: str = "/lora_core/api",
    sdapi: bool = True,
    rescan: Callable[[], Any] | None = None,
    civitai: Any = None,
    downloads: Any = None,
) -> None:
    """Add the routes to a FastAPI `app`.

    library_provider: zero-argument callable returning the `Library`.
    sdapi: also register `GET /sdapi/v1/loras` and `POST /sdapi/v1/refresh-loras` (a host that
        already serves them, like A1111's built-in Lora extension, may pass False).
    rescan: what refresh-loras runs (default: `library_provider().scan()`).
    civitai: a `lora_core.library.civitai_sync.CivitaiSync`; adds `GET {prefix}/civitai/status`,
        `POST {prefix}/civitai/fetch_all` and `POST {prefix}/civitai/fetch?path=` (the tab's JS polls
        the status while a background fetch runs).
    Always added: `GET {prefix}/stacks` (saved stacks with their prompt tags).
    downloads: a `lora_core.library.downloads.DownloadQueue` (default with a CivitaiSync: one made
        from its settings); adds `GET {prefix}/downloads`, `POST {prefix}/downloads` ({"url", "folder"}),
        `POST {prefix}/downloads/{id}/pause|resume|cancel` and `POST {prefix}/downloads/clear`.
    """
    from fastapi import HTTPException, Query
    from fastapi.responses import FileResponse, JSONResponse, Response

    def lib():
        return library_provider()

    def do_rescan():
        return rescan() if rescan is not None else lib().scan()

    if sdapi:
        @app.get("/sdapi/v1/loras")
        def list_loras():
            return JSONResponse([sdapi_lora(e) for e in iter_entries(lib())])

        @app.post("/sdapi/v1/refresh-loras")
        def refresh_loras():
            report = do_rescan()
            total = getattr(report, "total", None)
            return JSONResponse({"ok": True, "total": total})

    @app.get(prefix + "/suggest")
    def suggest(q: str = "", limit: int = Query(12, ge=1, le=50)):
        """Autocomplete for `<lora:`: name/alias prefix matches first (the library ranks them)."""
        library = lib()
        result = library.search(q.strip(), page=0, page_size=limit, sort="name")
        items = []
        for e in result.items:
            if getattr(e, "error", None):
                continue
            tag_name, ambiguous = resolve_tag_name(library, e)
            v = view_of(e, tag_name=tag_name, ambiguous=ambiguous)
            items.append({
                "name": v.name, "alias": v.alias, "tag_name": v.tag_name, "family": v.family,
                "preferred_weight": v.preferred_weight, "ambiguous": v.ambiguous,
                "thumbnail": preview_url_for(prefix, v.key, v.mtime) if _has_picture(e) else None,
            })
        return JSONResponse({"items": items, "total": int(result.total)})

    @app.get(prefix + "/loras")
    def page_of_loras(q: str = "", page: int = Query(1, ge=1), page_size: int = Query(50, ge=1, le=MAX_PAGE_SIZE),
                      sort: str = "name", family: str | None = None, folder: str | None = None,
                      favorites_only: bool = False):
        result = lib().search(q, page=page - 1, page_size=page_size, sort=SORTS.get(sort, sort if sort in SORTS.values() else "name"),
                              family=family or None, folder=folder or None, favorites_only=favorites_only)
        return JSONResponse({
            "total": int(result.total), "page": page, "page_size": page_size,
            "items": [_entry_json(e) for e in result.items],
        })

    @app.get(prefix + "/lora")
    def one_lora(path: str):
        entry = _known_entry(lib(), path)
        if entry is None:
            raise HTTPException(status_code=404, detail="not in the LoRA library")
        data = _entry_json(entry)
        data["metadata"] = full_metadata(entry.path)
        return JSONResponse(data)

    @app.get(prefix + "/thumb")
    def thumb(path: str):
        """The preview image of a library entry. Only previews of indexed entries are served."""
        library = lib()
        entry = _known_entry(library, path)
        if entry is None:
            raise HTTPException(status_code=404, detail="not in the LoRA library")
        image = None
        thumbnail = getattr(library, "thumbnail", None)
        if callable(thumbnail):
            try:
                image = thumbnail(entry)
            except Exception:  # noqa: BLE001 - fall back to the preview file itself
                log.debug("thumbnail failed for %s", entry.path, exc_info=True)
        if not image:  # serve the preview itself, but never through a link out of the library
            preview = getattr(entry, "preview", None)
            image = preview if preview and _inside_library(library, preview) else None
        if not image or not os.path.isfile(image):
            raise HTTPException(status_code=404, detail="no preview")
        media = IMAGE_TYPES.get(Path(image).suffix.lower())
        if media is None:
            raise HTTPException(status_code=404, detail="no preview")
        return FileResponse(image, media_type=media, headers={"Cache-Control": "max-age=86400",
                                                              "X-Content-Type-Options": "nosniff"})

    @app.get(prefix + "/stacks")
    def list_stacks():
        from lora_core.ui.entry_view import format_weight

        fn = getattr(lib(), "stacks", None)
        stacks = fn() if callable(fn) else {}
        return JSONResponse([
            {"name": name, "items": [{"name": n, "weight": float(w)} for n, w in items],
             "tags": ", ".join(f"<lora:{n}:{format_weight(float(w))}>" for n, w in items)}
            for name, items in stacks.items()
        ])

    if civitai is not None:
        @app.get(prefix + "/civitai/status")
        def civitai_status():
            st = civitai.status()
            return JSONResponse({**st.to_dict(), "text": st.text()})

        @app.post(prefix + "/civitai/fetch_all")
        def civitai_fetch_all():
            started = civitai.start_all()
            st = civitai.status()
            return JSONResponse({**st.to_dict(), "text": st.text(), "accepted": started})

        @app.post(prefix + "/civitai/fetch")
        def civitai_fetch(path: str):
            entry = _known_entry(lib(), path)
            if entry is None:
                raise HTTPException(status_code=404, detail="not in the LoRA library")
            return JSONResponse({"message": civitai.fetch_one(entry.path)})

    if downloads is None and civitai is not None:
        from lora_core.library.downloads import queue_for_civitai

        downloads = queue_for_civitai(library_provider, civitai)
    if downloads is not None:
        from lora_core.ui.download_routes import add_download_routes

        add_download_routes(app, downloads, prefix)

    # recipes from pictures, duplicates, newer versions (lora_core/ui/library_routes.py)
    from lora_core.ui.library_routes import add_library_routes

    add_library_routes(app, library_provider, prefix, civitai)

    @app.get("/lora_core/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404)
        path, media = STATIC_FILES[name]
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})

    _answer_wrong_methods(app, JSONResponse)


# Methods a route of ours does not take get 405 + Allow, not the 404 that a catch-all mount (the
# gradio page at "/") answers once the router has passed over a path whose method does not match.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _answer_wrong_methods(app: Any, json_response: Any) -> None:
    from fastapi.routing import APIRoute

    allowed: dict[str, set[str]] = {}
    for route in list(app.router.routes):
        endpoint = getattr(route, "endpoint", None)
        if isinstance(route, APIRoute) and getattr(endpoint, "__module__", None) == __name__:
            allowed.setdefault(route.path, set()).update(route.methods or ())
    for path, methods in allowed.items():
        others = [m for m in _METHODS if m not in methods]
        if others:
            app.add_api_route(path, _method_not_allowed(json_response, ", ".join(sorted(methods))),
                              methods=others, include_in_schema=False)


def _method_not_allowed(json_response: Any, allow: str):
    def method_not_allowed():
        return json_response({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})

    method_not_allowed.__module__ = __name__ + ".method_not_allowed"  # not "ours" on a second call
    return method_not_allowed


def _has_picture(e: Any) -> bool:
    return bool(getattr(e, "preview", None)) or bool((getattr(e, "summary", None) or {}).get("cover_images"))


def _inside_library(library: Any, path: str) -> bool:
    """True when the real location of `path` is inside the library's folders (a preview replaced
    by a symbolic link after the scan must not be served)."""
    roots = getattr(library, "roots", None)
    if roots is None:  # a library object without roots answers for its own entries
        return True
    real = os.path.realpath(path)
    return any(real == r or real.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _known_entry(library: Any, path: str) -> Any:
    getter = getattr(library, "entry", None)
    if not callable(getter):
        return None
    try:
        return getter(path)
    except (KeyError, LookupError, ValueError, OSError):
        return None


def _entry_json(e: Any) -> dict:
    to_dict = getattr(e, "to_dict", None)
    data = to_dict() if callable(to_dict) else dict(vars(e))
    return {k: v for k, v in data.items() if _jsonable(v)}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))

