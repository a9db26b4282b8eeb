"""Is there a newer version of a LoRA on Civitai? Checked in the background, answered offline.

    checker = UpdateChecker(library_provider, client_provider)
    checker.start() -> bool            # worker thread: one model lookup per Civitai model in the library
    checker.status() -> dict           # running, done, total, updates, errors, message
    updates_for(library) -> [Update]   # from the cache only: no network, no error when offline
    update_of(entry, cache) -> Update | None

An entry is checked when its `.civitai.info` names a model id and a version id. The model's version
list (Civitai lists them newest first; `CivitaiClient.check_update`) is cached in
`<data_dir>/civitai_updates.json` (written atomically) with the time it was read; entries are
re-checked after `MAX_AGE_S`. A model that cannot be read (offline, 404, bad answer) keeps its old
cache row or none: no badge, no error on the card.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from lora_core.library import atomic, queries

logger = logging.getLogger(__name__)

CACHE_FILE = "civitai_updates.json"
MAX_AGE_S = 24 * 3600.0
MAX_MODELS = 5000     # one background run; more are checked on the next run


@dataclass(frozen=True)
class Update:
    path: str
    model_id: int
    current_version_id: int
    latest_version_id: int
    latest_name: str
    link: str
    download: str          # what the download queue takes (download_sources.parse_source)


def civitai_ids(entry: Any) -> tuple[int, int] | None:
    """(model id, version id) from the entry's trimmed .civitai.info, or None."""
    info = getattr(entry, "civitai", None)
    if not isinstance(info, dict):
        return None
    mid, vid = info.get("modelId"), info.get("id")
    if type(mid) is int and type(vid) is int and mid > 0 and vid > 0:
        return mid, vid
    return None


def cache_path(library: Any) -> str | None:
    data_dir = getattr(library, "data_dir", None)
    return os.path.join(str(data_dir), CACHE_FILE) if data_dir else None


def read_cache(library: Any) -> dict[str, dict]:
    """{str(model id): {"checked", "versions": [ids newest first], "latest_name", "link"}}; {} if none."""
    path = cache_path(library)
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(32 * 1024 * 1024))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("unreadable update cache %s: %s", path, exc)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("versions"), list)} \
        if isinstance(data, dict) else {}


def update_of(entry: Any, cache: dict[str, dict]) -> Update | None:
    ids = civitai_ids(entry)
    if ids is None:
        return None
    row = cache.get(str(ids[0]))
    if not row or not row.get("versions"):
        return None
    versions = [v for v in row["versions"] if type(v) is int]
    if not versions:
        return None
    latest = versions[0]
    # newer = the newest listed is another version and ours is listed after it (or, no longer
    # listed, has a smaller id: Civitai's ids grow)
    newer = latest != ids[1] and (ids[1] in versions or latest > ids[1])
    if not newer:
        return None
    return Update(getattr(entry, "path", ""), ids[0], ids[1], latest, str(row.get("latest_name") or "")[:200],
                  str(row.get("link") or "")[:500], f"civitai:{ids[0]}@{latest}")


def _civitai_entries(library: Any, model_ids=None) -> list:
    """Entries with Civitai ids: through the index when the library has one (50,000 files: only the
    rows with a .civitai.info are read), else every entry."""
    db, roots = getattr(library, "db", None), getattr(library, "roots", None)
    if db is not None and roots is not None:
        return [queries.entry_from_row(r) for r in queries.rows_with_civitai_model(db, roots, model_ids)]
    return list(library.all())


def updates_for(library: Any) -> list[Update]:
    """The entries with a newer version on Civitai, by path, from the cache alone."""
    cache = read_cache(library)
    if not cache:
        return []
    candidates = [int(k) for k in cache if k.isdigit()]
    out = []
    for entry in _civitai_entries(library, candidates):
        found = update_of(entry, cache)
        if found is not None:
            out.append(found)
    return out


class UpdateChecker:
    """One per host; `client_provider()` returns a CivitaiClient or None (Civitai switched off)."""

    def __init__(self, library_provider: Callable[[], Any], client_provider: Callable[[], Any]):
        self.library_provider = library_provider
        self.client_provider = client_provider
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status = {"running": False, "done": 0, "total": 0, "updates": 0, "errors": 0, "message": ""}

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def start(self, force: bool = False) -> bool:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._status = {"running": True, "done": 0, "total": 0, "updates": 0, "errors": 0, "message": ""}
            self._thread = threading.Thread(target=self._run, args=(force,), name="lora-civitai-updates", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _set(self, **changes) -> None:
        with self._lock:
            self._status.update(changes)

    def _run(self, force: bool) -> None:
        try:
            self._check(force)
        except Exception as exc:  # noqa: BLE001 - a background check must end with a message
            logger.exception("update check failed")
            self._set(message=f"update check failed: {exc}")
        finally:
            self._set(running=False)

    def _check(self, force: bool) -> None:
        library = self.library_provider()
        client = self.client_provider()
        if client is None:
            self._set(message="Civitai is switched off")
            return
        models: dict[int, int] = {}
        for entry in _civitai_entries(library):
            ids = civitai_ids(entry)
            if ids is not None:
                models.setdefault(ids[0], ids[1])
        cache = read_cache(library)
        now = time.time()
        todo = [(m, v) for m, v in models.items()
                if force or now - float((cache.get(str(m)) or {}).get("checked") or 0) > MAX_AGE_S][:MAX_MODELS]
        self._set(total=len(todo))
        errors = 0
        for i, (model_id, version_id) in enumerate(todo):
            result = client.check_update(model_id, version_id)
            model = getattr(result, "model", None)
            if getattr(result, "status", "") == "found" and model is not None:
                latest = getattr(result, "latest", None)
                cache[str(model_id)] = {
                    "checked": now,
                    "versions": [v.version_id for v in model.versions],
                    "latest_name": getattr(latest, "name", "") if latest is not None else "",
                    "link": result.link,
                }
            else:
                errors += 1
            self._set(done=i + 1, errors=errors)
        if todo:
            path = cache_path(library)
            if path is not None:
                atomic.atomic_write(path, json.dumps(cache).encode("utf-8"))
        found = len(updates_for(library))
        self._set(updates=found, message=f"{found} LoRA(s) have a newer version on Civitai"
                  + (f"; {errors} model(s) could not be checked" if errors else ""))
