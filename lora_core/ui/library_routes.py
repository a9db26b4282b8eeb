"""JSON routes of the library tools the tab's "Recipe" drop zone and "Duplicates and updates" box use
(javascript/lora_core_library_tools.js):

    POST {prefix}/recipe                   body: the picture's bytes (at most MAX_RECIPE_BYTES)
                                           -> recipe (library/recipes.py RecipeResult.to_dict(),
                                              each found LoRA's tag named as the tab's cards name it)
    GET  {prefix}/duplicates               -> {"groups": [{sha256, size, items: [{path, folder, ...}]}],
                                               "unhashed": n, "batches": [undoable trash batches]}
    POST {prefix}/duplicates/keep?path=    -> {"ok", "message", "batch"}  (others to <root>/.trash/)
    POST {prefix}/duplicates/undo?batch=   -> {"ok", "message"}
    GET  {prefix}/updates                  -> {"items": [newer versions], "status": checker status}
    POST {prefix}/updates/check            -> checker status (starts the background check)

Every string in the answers comes from files, pictures or Civitai: the JS inserts it as text.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any, Callable

from lora_core.ui.controller import resolve_tag_name

log = logging.getLogger(__name__)

API_MODULE = "lora_core.ui.api"   # register_routes answers 405 for a wrong method on these too
MAX_RECIPE_BYTES = 32 * 1024 * 1024


def civitai_client(civitai: Any) -> Any:
    """The CivitaiSync's client when Civitai is switched on, else None (answers say "unknown")."""
    if civitai is None:
        return None
    try:
        if not civitai.settings().enabled:
            return None
        return civitai.client()
    except Exception:  # noqa: BLE001 - no client: offline answers
        log.warning("no Civitai client for the library tools", exc_info=True)
        return None


def add_library_routes(app: Any, library_provider: Callable[[], Any], prefix: str, civitai: Any = None) -> None:
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse

    from lora_core.library import duplicates, recipes, updates

    checker = updates.UpdateChecker(library_provider, lambda: civitai_client(civitai))

    async def recipe(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_RECIPE_BYTES:
            raise HTTPException(status_code=413, detail=f"pictures up to {MAX_RECIPE_BYTES // 2**20} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_RECIPE_BYTES:
                raise HTTPException(status_code=413, detail=f"pictures up to {MAX_RECIPE_BYTES // 2**20} MB")
        library = library_provider()
        name = _picture_name(request.headers.get("x-file-name"))
        from starlette.concurrency import run_in_threadpool  # lookups block: off the event loop

        result = await run_in_threadpool(
            recipes.recipe_from_image, bytes(body), library, civitai_client(civitai),
            lambda entry: resolve_tag_name(library, entry)[0], name)
        return JSONResponse(result.to_dict())

    # this module's annotations are strings (postponed) and Request is imported here, not at module
    # level: give FastAPI the class itself so it passes the request instead of reading a query field
    recipe.__annotations__["request"] = Request

    def list_duplicates():
        library = library_provider()
        report = duplicates.find_duplicates(library)
        if report.unhashed:
            library.request_hashes()  # the next look finds what the hasher adds
        groups = [{"sha256": g.sha256, "size": g.size, "items": [_item(e) for e in g.entries]}
                  for g in report.groups]
        batches = [{"id": b.get("id"), "time": b.get("time"), "kept": b.get("kept"),
                    "files": sum(1 for m in b.get("moves", []) if str(m[1]).endswith(duplicates.TRASH_SUFFIX))}
                   for b in duplicates.trash_batches(library)[:20]]
        return JSONResponse({"groups": groups, "unhashed": report.unhashed, "batches": batches})

    def keep(path: str):
        result = duplicates.keep_one(library_provider(), path)
        return JSONResponse({"ok": result.ok, "message": result.message, "batch": result.batch_id})

    def undo(batch: str):
        result = duplicates.undo(library_provider(), batch)
        return JSONResponse({"ok": result.ok, "message": result.message})

    def list_updates():
        items = [asdict(u) for u in updates.updates_for(library_provider())]
        return JSONResponse({"items": items, "status": checker.status()})

    def check_updates(force: bool = False):
        if civitai_client(civitai) is None:
            return JSONResponse({**checker.status(), "message": "Civitai is switched off", "accepted": False})
        accepted = checker.start(force=force)
        return JSONResponse({**checker.status(), "accepted": accepted})

    routes = [("POST", "/recipe", recipe), ("GET", "/duplicates", list_duplicates),
              ("POST", "/duplicates/keep", keep), ("POST", "/duplicates/undo", undo),
              ("GET", "/updates", list_updates), ("POST", "/updates/check", check_updates)]
    for method, path, fn in routes:
        fn.__module__ = API_MODULE
        app.add_api_route(prefix + path, fn, methods=[method])


def _item(entry: Any) -> dict:
    return {"path": entry.path, "folder": entry.folder, "name": entry.name, "root": entry.root,
            "size": entry.size, "mtime": entry.mtime, "has_metadata": bool(entry.user_metadata or entry.civitai),
            "preview": bool(entry.preview)}


def _picture_name(raw: str | None) -> str:
    """The dropped file's name for messages (a header the page sets; reduced to a short base name)."""
    if not raw:
        return "the picture"
    from urllib.parse import unquote

    name = os.path.basename(unquote(raw).replace("\\", "/"))[:100]
    return "".join(ch for ch in name if ch.isprintable()) or "the picture"
