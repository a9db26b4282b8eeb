"""Put one new file into the library index at once (after a download), without scanning its folders.

The file is described as a scan's walk describes it (`scanner.Found` with its sidecar signature)
and written through the indexer's own write path (the one a scan
uses for a changed file), which advances the change counters the search caches are keyed on, so the next page request shows the new card. The
next scan finds the same size/mtime and leaves the row alone. Hashes are
left to the library's background hasher (it also computes AutoV3).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from . import scanner
from .errors import StorageError

logger = logging.getLogger(__name__)


def add_file(library: Any, path: str) -> Any:
    """Index `path` (inside one of the library's folders) and return its Entry, or None (logged)."""
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    roots = list(getattr(library, "roots", []) or [])
    root = next((r for r in sorted(roots, key=len, reverse=True)
                 if real == r or real.startswith(r.rstrip(os.sep) + os.sep)), None)
    if root is None:
        logger.warning("%s is outside the library folders; not indexed", path)
        return None
    try:
        st = os.stat(real)
    except OSError as exc:
        logger.warning("cannot index %s: %s", path, exc)
        return None
    rel_path = os.path.relpath(real, root).replace(os.sep, "/")
    folder = os.path.dirname(rel_path)
    stem, ext = os.path.splitext(os.path.basename(real))
    sig, preview = scanner.folder_signature(real, roots)
    found = scanner.Found(path=real, root=root, rel=f"{folder}/{stem}" if folder else stem, folder=folder,
                          stem=stem, ext=ext.lower(), size=st.st_size, mtime_ns=st.st_mtime_ns,
                          sidecar_sig=sig, preview=preview)
    try:
        # the scan's own path for one changed file: every column a scan stores (user tags,
        # base-model label, ...) is filled the same way, now and after the indexer changes
        library.index_found(found)
    except StorageError as exc:
        logger.error("%s", exc)
        return None
    library.request_hashes([real])  # AutoV3 (and the sha256 row) from the background hasher
    try:
        return library.entry(real)
    except LookupError:
        return None
