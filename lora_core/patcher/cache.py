"""LRU of parsed LoRA files, so switching back to a recent LoRA costs no disk read or parse.

Keyed by (path, size, mtime): a file rewritten on disk is parsed again and its old entry is
dropped at once (a "hidden" version is never served again). Entries are evicted least recently
used first when `max_count` or `max_mb` (sum of `LoraFile.nbytes`) is exceeded. Evicting only
drops the cache's reference; a LoRA still in the active stack stays alive through the patcher.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger(__name__)


def _default_loader(path: str):
    from lora_core.formats import load_lora

    return load_lora(path)


class LoraCache:
    def __init__(self, max_count: int | None = None, max_mb: float | None = None,
                 loader: Callable[[str], Any] | None = None):
        if max_count is not None and max_count < 0:
            raise ValueError("max_count must be >= 0")
        self.max_count = max_count
        self.max_bytes = None if max_mb is None else int(max_mb * 1024 * 1024)
        self._loader = loader or _default_loader
        self._entries: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()  # path -> (stamp, lora)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _stamp(path: str) -> tuple:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)

    def get(self, path: str | os.PathLike) -> Any:
        """The parsed LoraFile for `path` (raises whatever the loader raises for a bad file)."""
        path = os.path.abspath(os.fspath(path))
        stamp = self._stamp(path)
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(path)
                self.hits += 1
                return hit[1]
            if hit is not None:  # the file changed on disk: the old parse must not be served
                del self._entries[path]
        lora = self._loader(path)  # parse outside the lock: other paths stay servable meanwhile
        with self._lock:
            self.misses += 1
            self._entries[path] = (stamp, lora)
            self._entries.move_to_end(path)
            self._evict()
        return lora

    def _evict(self) -> None:
        while self._entries and (
            (self.max_count is not None and len(self._entries) > self.max_count)
            or (self.max_bytes is not None and self.nbytes > self.max_bytes and len(self._entries) > 1)
        ):
            path, _ = self._entries.popitem(last=False)
            log.debug("lora cache: evicted %s", path)
        if self.max_count == 0:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(lora, "nbytes", 0) or 0) for _s, lora in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path) -> bool:
        return os.path.abspath(os.fspath(path)) in self._entries

    def discard(self, path) -> None:
        with self._lock:
            self._entries.pop(os.path.abspath(os.fspath(path)), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
