"""Civitai for the library: fetch one LoRA's Civitai data, or every missing one in the background.

    sync = CivitaiSync(library_provider, lambda: CivitaiSettings(base_url=..., api_key=..., nsfw_threshold="PG13"))
    sync.fetch_one(path) -> str                  # blocking; for the details view's button
    sync.start_all() -> bool                     # worker thread; False when one already runs
    sync.status() -> SyncStatus                  # progress of the background run (for polling)
    sync.cancel()

Hashes come from the library (`request_hashes` / `wait_for_hashes`, the background hasher); the
sidecars are written by `CivitaiClient.fetch_for_file(s)`; then `Library.refresh(path)` re-reads
them so trigger words, base model and previews show. Network problems end as messages, never as
exceptions, so the app works offline. No torch. The worker holds no lock the generation path
takes, so fetching never blocks generation.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from .civitai import API_KEY_ENV, DEFAULT_BASE_URL, CivitaiClient

logger = logging.getLogger(__name__)

NSFW_THRESHOLDS = ["PG", "PG13", "R", "X", "XXX", "show all"]
HASH_WAIT_S = 600.0


@dataclass(frozen=True)
class CivitaiSettings:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None          # None or "": the environment's CIVITAI_API_KEY, if any
    nsfw_threshold: str = "PG13"        # previews above it are blurred; none above it are downloaded
    enabled: bool = True                # False: no request is ever made

    def preview_limit(self) -> str | None:
        """max_preview_level for the client (None = any level)."""
        t = (self.nsfw_threshold or "").strip()
        return None if t.lower() in ("show all", "all", "") else t


@dataclass(frozen=True)
class SyncStatus:
    running: bool = False
    phase: str = "idle"       # idle | hashing | fetching | done | cancelled | error
    done: int = 0
    total: int = 0
    found: int = 0
    not_found: int = 0
    errors: int = 0
    message: str = ""
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))

    def text(self) -> str:
        if self.phase == "idle":
            return ""
        counts = f"{self.found} found, {self.not_found} not on Civitai, {self.errors} errors"
        if self.phase == "hashing":
            return f"Civitai: hashing {self.total} file(s) first…"
        if self.phase == "fetching":
            return f"Civitai: {self.done}/{self.total} looked up ({counts})"
        tail = f" {self.message}" if self.message else ""
        return f"Civitai {self.phase}: {self.done}/{self.total} looked up ({counts}).{tail}"


class CivitaiSync:
    """One per host. `settings_provider` is read at each call, so changed settings apply at once."""

    def __init__(self, library_provider: Callable[[], Any], settings_provider: Callable[[], CivitaiSettings],
                 client_factory: Callable[..., CivitaiClient] = CivitaiClient):
        self.library_provider = library_provider
        self.settings_provider = settings_provider
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._status = SyncStatus()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    # -- helpers -----------------------------------------------------------------------------
    def settings(self) -> CivitaiSettings:
        try:
            return self.settings_provider() or CivitaiSettings(enabled=False)
        except Exception:  # noqa: BLE001 - broken settings read: behave as "off"
            logger.exception("reading Civitai settings failed")
            return CivitaiSettings(enabled=False)

    def client(self, settings: CivitaiSettings | None = None) -> CivitaiClient:
        s = settings or self.settings()
        lib = self.library_provider()
        key = (s.api_key or "").strip() or None
        return self._client_factory(s.base_url or DEFAULT_BASE_URL, api_key=key,
                                    data_dir=getattr(lib, "data_dir", None), use_env_key=key is None)

    def _sha256(self, lib: Any, path: str, timeout: float) -> str | None:
        entry = lib.entry(path)
        if entry.sha256:
            return entry.sha256
        lib.request_hashes([entry.path])
        lib.wait_for_hashes(timeout)
        return lib.entry(entry.path).sha256

    # -- one file ----------------------------------------------------------------------------
    def fetch_one(self, path: str, hash_timeout: float = 120.0) -> str:
        """Look one LoRA up (by sha256) and write its sidecars; returns a status line."""
        s = self.settings()
        if not s.enabled:
            return "Civitai is turned off in the settings."
        try:
            lib = self.library_provider()
            entry = lib.entry(path)
            if entry.error:
                return f"{entry.name}: cannot be looked up ({entry.error})."
            sha = self._sha256(lib, entry.path, hash_timeout)
            if not sha:
                return f"{entry.name}: the file could not be hashed yet; try again in a moment."
            client = self.client(s)
            result = client.fetch_for_file(entry.path, sha, force=True, max_preview_level=s.preview_limit())
            lib.refresh(entry.path)
        except ValueError as exc:  # a bad base URL
            return f"Civitai settings: {exc}"
        except LookupError:
            return "This LoRA is no longer in the library."
        except Exception as exc:  # noqa: BLE001 - storage trouble etc.: a message, not a crash
            logger.exception("Civitai fetch for %s failed", path)
            return f"Civitai fetch failed: {exc}"
        status = result.lookup.status
        if status == "found":
            name = result.lookup.version.model_name if result.lookup.version else ""
            extra = f" ({result.message})" if result.message else ""
            return f"Civitai: found {name or 'the model'}; saved its info{' and preview' if result.preview_path else ''}.{extra}"
        if status == "not_found":
            return f"{entry.name} is not on Civitai (no version with this file's hash)."
        return f"Civitai lookup failed: {result.lookup.message or result.message}"

    # -- every missing file, in the background -----------------------------------------------
    def status(self) -> SyncStatus:
        with self._lock:
            return self._status

    def _set(self, **changes) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def running(self) -> bool:
        t = self._thread
        return bool(t and t.is_alive())

    def start_all(self) -> bool:
        """Start fetching Civitai data for every entry without it. False if a run is going on."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            if not self.settings().enabled:
                self._status = SyncStatus(phase="error", message="Civitai is turned off in the settings.")
                return False
            self._cancel.clear()
            self._status = SyncStatus(running=True, phase="hashing", started=time.time())
            self._thread = threading.Thread(target=self._run_all, name="lora_core-civitai", daemon=True)
            self._thread.start()
        return True

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.running()

    def _run_all(self) -> None:
        try:
            self._work()
        except Exception as exc:  # noqa: BLE001 - the worker reports, never dies silently
            logger.exception("Civitai background fetch failed")
            self._set(phase="error", message=str(exc))
        finally:
            self._set(running=False, finished=time.time())

    def _work(self) -> None:
        s = self.settings()
        lib = self.library_provider()
        todo = [e for e in lib.all() if not e.error and not e.civitai]
        self._set(total=len(todo))
        if not todo:
            self._set(phase="done", message="Every LoRA already has Civitai data.")
            return
        missing = [e.path for e in todo if not e.sha256]
        if missing:
            lib.request_hashes(missing)
            deadline = time.time() + HASH_WAIT_S
            while not lib.wait_for_hashes(0.5):
                if self._cancel.is_set() or time.time() > deadline:
                    break
        if self._cancel.is_set():
            self._set(phase="cancelled")
            return
        pairs = []
        for e in todo:
            try:
                sha = e.sha256 or lib.entry(e.path).sha256
            except LookupError:
                continue
            if sha:
                pairs.append((e.path, sha))
        self._set(phase="fetching", total=len(pairs),
                  message="" if len(pairs) == len(todo) else f"{len(todo) - len(pairs)} file(s) not hashed")
        client = self.client(s)
        counts = {"found": 0, "not_found": 0, "error": 0}

        def progress(done, total, result):
            key = result.status if result.status in counts else "error"
            counts[key] += 1
            self._set(done=done, total=total, found=counts["found"], not_found=counts["not_found"],
                      errors=counts["error"])
            return not self._cancel.is_set()

        results = client.fetch_for_files(pairs, progress=progress, max_preview_level=s.preview_limit())
        for r in results:
            if r.lookup.status == "found":
                try:
                    lib.refresh(os.fspath(r.path))
                except Exception:  # noqa: BLE001 - removed meanwhile: the next scan tidies up
                    logger.warning("refreshing %s after the Civitai fetch failed", r.path, exc_info=True)
        errors = [r.lookup.message for r in results if r.lookup.status == "error" and r.lookup.message]
        self._set(phase="cancelled" if self._cancel.is_set() else "done",
                  message=(errors[0] if errors else self.status().message))


def settings_from_env(base_url: str | None = None, api_key: str | None = None, nsfw_threshold: str | None = None,
                      enabled: bool = True) -> CivitaiSettings:
    """Settings from explicit values, falling back to the environment's API key."""
    return CivitaiSettings(base_url=base_url or DEFAULT_BASE_URL,
                           api_key=api_key or os.environ.get(API_KEY_ENV) or None,
                           nsfw_threshold=nsfw_threshold or "PG13", enabled=enabled)
