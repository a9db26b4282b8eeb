"""JSON routes of the download queue (`lora_core.library.downloads.DownloadQueue`), for the tab's
Download box (javascript/lora_core_downloads.js polls `GET {prefix}/downloads` while jobs run).

    GET  {prefix}/downloads                      -> {"items": [job, ...]}
    POST {prefix}/downloads   {"url", "folder"}  -> job (400 {"detail"} when the link is not understood)
    POST {prefix}/downloads/{id}/pause|resume|cancel -> job (404 for an unknown id)
    POST {prefix}/downloads/clear                -> {"removed": n} (finished jobs leave the list)

A job: id, text, folder, state (queued|resolving|downloading|verifying|paused|done|error|cancelled),
label, file_name, path, done, total, fraction, speed, message, notes, resumable. Strings from
Civitai are data: the JS inserts them as text.
"""
from __future__ import annotations

from typing import Any

API_MODULE = "lora_core.ui.api"  # register_routes answers 405 for the wrong method on its own routes


def add_download_routes(app: Any, queue: Any, prefix: str) -> None:
    from fastapi import Body, HTTPException
    from fastapi.responses import JSONResponse

    def list_downloads():
        return JSONResponse({"items": queue.jobs()})

    def add_download(payload: dict = Body(default={})):
        payload = payload if isinstance(payload, dict) else {}
        try:
            job = queue.enqueue(str(payload.get("url") or ""), str(payload.get("folder") or ""))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return JSONResponse(job)

    def act(name: str):
        method = getattr(queue, name)

        def endpoint(job_id: int):
            try:
                return JSONResponse(method(job_id))
            except KeyError:
                raise HTTPException(status_code=404, detail=f"no download with id {job_id}") from None
        return endpoint

    def clear_downloads():
        return JSONResponse({"removed": queue.clear_finished()})

    routes = [("GET", "/downloads", list_downloads), ("POST", "/downloads", add_download),
              ("POST", "/downloads/clear", clear_downloads)]
    routes += [("POST", f"/downloads/{{job_id}}/{name}", act(name)) for name in ("pause", "resume", "cancel")]
    for method, path, fn in routes:
        fn.__module__ = API_MODULE
        app.add_api_route(prefix + path, fn, methods=[method])
