"""Memory of hashes Civitai does not know, so a library scan does not ask again every time.

A small JSON file `{"version": 1, "hashes": {HASH: unix_time_of_the_404}}` under the data dir the
caller gives. Entries older than `recheck_days` count as unknown again (a model may be uploaded
later). Written atomically; a corrupt or foreign file is ignored and rebuilt.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from .atomic import atomic_write

logger = logging.getLogger(__name__)

FILENAME = "civitai_not_found.json"
MAX_ENTRIES = 200_000


class NotFoundStore:
    def __init__(self, data_dir: str | os.PathLike | None, recheck_days: float = 7.0,
                 clock=time.time):
        self.path = Path(data_dir) / FILENAME if data_dir is not None else None
        self.recheck_seconds = recheck_days * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, float] | None = None  # loaded lazily

    def _load(self) -> dict[str, float]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                if self.path.stat().st_size <= 64 * 1024 * 1024:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    hashes = data.get("hashes") if isinstance(data, dict) else None
                    if isinstance(hashes, dict):
                        for key, ts in hashes.items():
                            if isinstance(key, str) and isinstance(ts, (int, float)) and not isinstance(ts, bool):
                                entries[key.upper()] = float(ts)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                logger.warning("ignoring unreadable Civitai not-found record %s: %s", self.path, exc)
        self._entries = entries
        return entries

    def _save(self) -> None:
        if self.path is None:
            return
        entries = self._entries or {}
        if len(entries) > MAX_ENTRIES:  # keep the newest
            keep = sorted(entries.items(), key=lambda kv: kv[1], reverse=True)[:MAX_ENTRIES]
            entries = self._entries = dict(keep)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            payload = json.dumps({"version": 1, "hashes": entries}, indent=0, sort_keys=True)
            atomic_write(self.path, payload.encode("utf-8"))
        except OSError as exc:
            logger.warning("cannot save Civitai not-found record %s: %s", self.path, exc)

    def is_known_missing(self, hash_: str) -> bool:
        """True when Civitai said 404 for this hash less than `recheck_days` ago."""
        with self._lock:
            ts = self._load().get(hash_.upper())
        return ts is not None and (self._clock() - ts) < self.recheck_seconds

    def when(self, hash_: str) -> float | None:
        with self._lock:
            return self._load().get(hash_.upper())

    def remember(self, hashes) -> None:
        now = self._clock()
        with self._lock:
            entries = self._load()
            for h in hashes:
                entries[h.upper()] = now
            self._save()

    def forget(self, hashes) -> None:
        with self._lock:
            entries = self._load()
            changed = False
            for h in hashes:
                changed |= entries.pop(h.upper(), None) is not None
            if changed:
                self._save()
