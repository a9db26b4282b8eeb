"""The LoRA library: index of LoRA files under configured folders, name resolution, search.

    lib = Library(["models/Lora", "/extra/loras"], data_dir)
    lib.scan(progress=cb)            # reads only new/changed files; warm start reads none
    lib.find("folder/name")          # -> Entry, or NotFound / AmbiguousName
    lib.search("girl", page=0, page_size=50, sort="name") -> Page
    lib.request_hashes()             # background sha256/AutoV2/AutoV3, cached in the index

`Library` is the one object hosts hold; each concern lives in its own module and changes there:
indexer.py (scan: folders -> index), search.py (search and its caches), names.py (find, "did you
mean", hash look-ups), user_data.py (favourites, tags, last used, stacks), queries.py + index_db.py
(every SQL statement), sidecars.py / thumbnails.py (files next to a LoRA), hashing.py (hashes).
"""
from __future__ import annotations

import logging
import os
import time

from lora_core.library import names, queries, sidecars, thumbnails, user_data
from lora_core.library.entry import Entry, Page, ScanReport
from lora_core.library.errors import NotFound, StorageError
from lora_core.library.hashing import HashWorker
from lora_core.library.index_db import IndexDB
from lora_core.library.indexer import Indexer
from lora_core.library.inspect_header import embedded_cover
from lora_core.formats.header import HeaderError, read_header
from lora_core.library.scanner import is_within, real_roots
from lora_core.library.search import Search

logger = logging.getLogger(__name__)

SORTS = queries.SORTS
MAX_PAGE_SIZE = 1000


def default_data_dir() -> str:
    """$LORA_CORE_DATA_DIR, else $XDG_CACHE_HOME/lora_core, else ~/.cache/lora_core."""
    if os.environ.get("LORA_CORE_DATA_DIR"):
        return os.environ["LORA_CORE_DATA_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lora_core")


class Library:
    def __init__(self, dirs, data_dir: str | None = None):
        self.dirs = [str(d) for d in dirs]
        self.roots = real_roots(self.dirs)
        self.data_dir = str(data_dir) if data_dir is not None else default_data_dir()
        self.db = IndexDB(os.path.join(self.data_dir, "library.sqlite3"))
        self.problems: list[str] = [self.db.problem] if self.db.problem else []
        self._hasher = HashWorker(self._hash_lookup, self._hash_store)
        self._indexer = Indexer(self.db, self.dirs, self.roots)
        self._search = Search(self.db, self.dirs, self.roots)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._hasher.stop()
        self.db.close()

    # -- scanning (indexer.py) -----------------------------------------------------------------
    def scan(self, progress=None, hashes: bool = False, quick: bool = False) -> ScanReport:
        """Bring the index up to date with the folders. progress(done, total, path) per file read.

        Unchanged files (same path, size, mtime) are not opened; changed sidecars alone are
        re-read without the LoRA. Files that vanished leave the index. Never raises for bad files.

        quick=True (for start-up) lists only folders whose own signature (mtime/ctime/inode)
        changed since they were last listed: adding, removing or renaming a file or sidecar, or
        replacing one atomically, is seen; a file or sidecar rewritten *in place* is not (its
        folder does not change) until the next full scan. Libraries with symbolic links always
        get a full scan. The default full scan stats every file.
        """
        report = self._indexer.scan(progress, quick, after_write=self._search.refresh_sort_orders)
        if hashes:
            self.request_hashes()
        return report

    def refresh(self, path: str) -> Entry | None:
        """Re-read one file's sidecars (after the UI or Civitai code wrote them)."""
        entry = self.entry(path)
        self._indexer.reread_sidecars(entry)
        return self.entry(entry.path)

    # -- entries -------------------------------------------------------------------------------
    def all(self) -> list[Entry]:
        return [queries.entry_from_row(r) for r in queries.all_rows(self.db, self.roots)]

    def __len__(self) -> int:
        return queries.count_files(self.db, self.roots)

    def _inside(self, path: str) -> bool:
        return is_within(path, self.roots)

    def index_found(self, found) -> None:
        """Index one file described like a scan's walk describes it (see download_index.add_file)."""
        self._indexer.index_found(found)

    def entry(self, path) -> Entry:
        """The entry of a file path; NotFound when it is not indexed or lies outside the library."""
        path = os.path.abspath(str(path))
        if not self._inside(path):
            raise NotFound(path, "outside the library folders")
        rows = (queries.rows_by_path(self.db, self.roots, path)
                or queries.rows_by_path(self.db, self.roots, os.path.realpath(path)))
        if not rows:
            raise NotFound(path, "not in the library index (rescan?)")
        return queries.entry_from_row(rows[0])

    def _entries_by_id(self, ids: list[int]) -> list[Entry]:
        by_id = {r["id"]: queries.entry_from_row(r) for r in queries.rows_by_ids(self.db, ids)}
        return [by_id[i] for i in ids if i in by_id]

    # -- names (names.py) ----------------------------------------------------------------------
    def find(self, name: str) -> Entry:
        """The one entry a prompt name means (see names.py). Raises NotFound / AmbiguousName."""
        return names.find(self.db, self.roots, name)

    def close_names(self, name: str, limit: int = 3) -> list[str]:
        """Names in the library (file stems, aliases, folder/names) closest to `name` (difflib),
        for "did you mean ...?". Runs only after a miss; reads names only."""
        return names.close_names(self.db, self.roots, name, limit)

    def by_hash(self, h: str) -> list[Entry]:
        """Entries whose sha256 (AutoV2 is its prefix) or addnet hash (AutoV3) starts with `h`."""
        return names.by_hash(self.db, self.roots, h)

    # -- search (search.py) --------------------------------------------------------------------
    def search(self, query: str = "", page: int = 0, page_size: int = 50, sort: str = "name",
               family: str | None = None, folder: str | None = None, favorites_only: bool = False,
               with_problems: bool = False, problems_only: bool = False) -> Page:
        """One page (0-based) of entries matching every word of `query` (substring, any case) in
        folder/name, alias, trigger words (activation text, Civitai trainedWords), training tags or
        user tags. `"on the left"` in double quotes matches as one phrase. A word with a "/" (or
        "\\") is a path: it also matches the library folder's own path ("models/Lora",
        "Lora/chars/al"). Words shorter than 3 characters alone match folder/name and alias only;
        beside longer words they match anywhere. `folder` includes its subfolders.
        with_problems: entries that cannot be used (unreadable files) pass the `family` filter
        whatever their family; problems_only: only those entries.

        Every page costs about the same: the matching ids in sort order are computed once per
        (query, filters, sort) and index version and kept (the unfiltered order of each sort is
        also stored in the index, so a new process has it at once); a page is a slice of it."""
        page = max(0, int(page))
        page_size = max(1, min(MAX_PAGE_SIZE, int(page_size)))
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {sorted(SORTS)}")
        if not self.roots:
            return Page(0, [], page, page_size)
        total, ids = self._search.page_ids(query, page, page_size, sort, family, folder, favorites_only,
                                           with_problems, problems_only)
        return Page(total=total, items=self._entries_by_id(ids), page=page, page_size=page_size)

    def folders(self) -> list[tuple[str, int]]:
        """Folder tree as (folder path, LoRA count including subfolders), sorted; "" is the root."""
        counts: dict[str, int] = {}
        for folder, n in queries.folder_counts(self.db, self.roots):
            parts = folder.split("/") if folder else []
            for depth in range(len(parts) + 1):
                key = "/".join(parts[:depth])
                counts[key] = counts.get(key, 0) + n
        return sorted(counts.items())

    # -- hashes (hashing.py) -------------------------------------------------------------------
    def _hash_lookup(self, path: str):
        return queries.hash_state(self.db, path)

    def _hash_store(self, path, size, mtime_ns, sha, addnet):
        try:
            self.db.store_hashes(path, size, mtime_ns, sha, addnet)
        except StorageError as exc:
            logger.error("%s", exc)

    def request_hashes(self, paths=None, progress=None) -> int:
        """Queue files for background hashing (default: every indexed file without a current hash).
        Returns how many were queued; never blocks. progress(done, total, path) runs on the worker."""
        if paths is None:
            paths = queries.paths_needing_hashes(self.db, self.roots)
        else:
            paths = [os.path.abspath(str(p)) for p in paths]
        if paths:
            self._hasher.submit(paths, progress)
        return len(paths)

    def wait_for_hashes(self, timeout: float | None = None) -> bool:
        return self._hasher.wait(timeout)

    @property
    def hashing(self) -> bool:
        return self._hasher.busy()

    # -- sidecars and previews (sidecars.py, thumbnails.py) ------------------------------------
    def write_user_metadata(self, path, updates: dict) -> Entry:
        """Merge `updates` into the A1111 `.json` sidecar (atomic) and refresh the index."""
        entry = self.entry(path)
        side = sidecars.user_metadata_path(entry.path)
        if os.path.islink(side) and not self._inside(side):  # merging would copy an outside file in
            raise StorageError(f"cannot write {side}: it links outside the library folders")
        sidecars.write_user_metadata(entry.path, updates)
        return self.refresh(entry.path)

    def thumbnail(self, entry: Entry, size: int = 256) -> str | None:
        """Path of a cached thumbnail: the preview file, else the first cover embedded in the file."""
        cache = os.path.join(self.data_dir, "thumbnails")
        if entry.preview and not self._inside(entry.preview):  # replaced by a link out after the scan
            return None
        if entry.preview:
            return thumbnails.thumbnail(cache, source_path=entry.preview, size=size)
        if entry.summary.get("cover_images") and entry.ext == ".safetensors" and self._inside(entry.path):
            try:
                _, metadata, _ = read_header(entry.path)
            except HeaderError as exc:
                logger.warning("%s", exc)
                return None
            data = embedded_cover(metadata)
            if data:
                source_id = f"{entry.path}|{entry.size}|{entry.mtime}|cover"
                return thumbnails.thumbnail(cache, data=data, source_id=source_id, size=size)
        return None

    # -- user data (user_data.py) --------------------------------------------------------------
    def set_favorite(self, path, favorite: bool = True) -> None:
        user_data.set_favorite(self.db, self.entry(path).path, favorite)

    def set_user_tags(self, path, tags) -> None:
        user_data.set_user_tags(self.db, self.entry(path).path, tags)

    def mark_used(self, paths, when: float | None = None) -> None:
        when = time.time() if when is None else when
        for path in paths:
            user_data.mark_used(self.db, self.entry(path).path, when)

    def save_stack(self, name: str, items) -> None:
        """Save a named stack: a list of (lora name, weight)."""
        user_data.save_stack(self.db, name, items)

    def stacks(self) -> dict[str, list[tuple[str, float]]]:
        return user_data.stacks(self.db)

    def delete_stack(self, name: str) -> bool:
        return user_data.delete_stack(self.db, name)
