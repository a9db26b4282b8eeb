"""The LoRA library: index of LoRA files under configured folders, name resolution, search.

    lib = Library(["models/Lora", "/extra/loras"], data_dir)
    lib.scan(progress=cb)            # reads only new/changed files; warm start reads none
    lib.find("folder/name")          # -> Entry, or NotFound / AmbiguousName
    lib.search("girl", page=0, page_size=50, sort="name") -> Page
    lib.request_hashes()             # background sha256/AutoV2/AutoV3, cached in the index

Name resolution (`find`): an exact `folder/name` first, then a unique folder-path suffix, then the
file stem, then the training alias (ss_output_name); each level case-sensitive before
case-insensitive. A level that matches several files raises AmbiguousName listing them; the user
picks one with its folder path. Names are never paths: absolute paths and `..` are refused, and a
file whose real location has left the library folders is not returned.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time

from lora_core.library import scanner, sidecars, thumbnails
from lora_core.library.entry import Entry, Page, ScanReport
from lora_core.library.errors import AmbiguousName, NotFound, StorageError
from lora_core.library.hashing import HashWorker
from lora_core.library.index_db import IndexDB
from lora_core.library.inspect_header import embedded_cover
from lora_core.library.safetensors_header import HeaderError, read_header

logger = logging.getLogger(__name__)

SORTS = {
    "name": "f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "date": "f.mtime_ns DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "size": "f.size DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "last_used": "f.last_used DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",   # never used (NULL) last
}
MAX_PAGE_SIZE = 1000
SMALL_MATCH = 5000   # text matches up to this many are sorted by SQL; more use the cached order
WRITE_BATCH = 500
_HEX = re.compile(r"^[0-9a-f]+$")


def default_data_dir() -> str:
    """$LORA_CORE_DATA_DIR, else $XDG_CACHE_HOME/lora_core, else ~/.cache/lora_core."""
    if os.environ.get("LORA_CORE_DATA_DIR"):
        return os.environ["LORA_CORE_DATA_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lora_core")


def _loads(text, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


class Library:
    def __init__(self, dirs, data_dir: str | None = None):
        self.dirs = [str(d) for d in dirs]
        self.roots = scanner.real_roots(self.dirs)
        self.data_dir = str(data_dir) if data_dir is not None else default_data_dir()
        self.db = IndexDB(os.path.join(self.data_dir, "library.sqlite3"))
        self.problems: list[str] = [self.db.problem] if self.db.problem else []
        self._hasher = HashWorker(self._hash_lookup, self._hash_store)
        self._root_marks = ",".join("?" * len(self.roots)) or "NULL"
        self._order_cache: dict = {}  # (filters, sort) -> (index version, ordered ids)
        self._order_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._hasher.stop()
        self.db.close()

    # -- scanning ------------------------------------------------------------------------------
    def scan(self, progress=None, hashes: bool = False) -> ScanReport:
        """Bring the index up to date with the folders. progress(done, total, path) per file read.

        Unchanged files (same path, size, mtime) are not opened; changed sidecars alone are
        re-read without the LoRA. Files that vanished leave the index. Never raises for bad files.
        """
        start = time.perf_counter()
        report = ScanReport()
        for d, root in zip(self.dirs, self.roots):
            if not os.path.isdir(root):
                report.problems.append(f"library folder {d} does not exist")
        present = [r for r in self.roots if os.path.isdir(r)]
        walked = scanner.walk(present)
        report.problems.extend(walked.problems)
        report.total = len(walked.files)
        # Only folders whose digest changed are compared file by file (a warm start with nothing
        # new reads one digest per folder). Rows under a missing root (unmounted drive) stay.
        by_folder = walked.folders()
        digests = {key: scanner.folder_digest(files) for key, files in by_folder.items()}
        stored = self.db.folder_digests(self.roots) if self.roots else {}
        dirty = {key for key, digest in digests.items() if stored.get(key) != digest}
        dirty |= {key for key in stored if key not in digests and key[0] in present}
        known = self.db.known_in_folders(sorted(dirty))
        changed, side_changed = [], []
        for key in dirty:
            for found in by_folder.get(key, ()):
                old = known.get(found.path)
                # "cannot read/stat" errors are retried: fixing permissions does not change mtime
                retry = old is not None and old[3] is not None and old[3].startswith("cannot ")
                if old is None or (old[0], old[1]) != (found.size, found.mtime_ns) or found.error or retry:
                    changed.append(found)
                elif old[2] != found.sidecar_sig:
                    side_changed.append(found)
        removed = [p for p in known if p not in walked.files]
        retry_folders: set = set()
        try:
            self._write_changed(changed, progress, report, retry_folders)
            self._write_sidecar_changes(side_changed, report)
            if removed:
                self.db.write(self.db.delete_files, removed)
                report.removed = len(removed)
            # saved last: a failed write above leaves the folder dirty for the next scan
            self.db.write(self.db.set_folder_digests, {
                key: None if key in retry_folders else digests.get(key) for key in dirty
            })
        except StorageError as exc:
            report.problems.append(str(exc))
            logger.error("%s", exc)
        report.errors = self.db.query(
            f"SELECT COUNT(*) FROM files WHERE root IN ({self._root_marks}) AND error IS NOT NULL", self.roots
        )[0][0] if self.roots else 0
        report.seconds = time.perf_counter() - start
        if hashes:
            self.request_hashes()
        return report

    def _user_tags(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for i in range(0, len(paths), 900):
            chunk = paths[i:i + 900]
            rows = self.db.query(
                f"SELECT path, tags FROM user_data WHERE path IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update({r[0]: r[1] for r in rows})
        return out

    def _write_changed(self, changed, progress, report: ScanReport, retry_folders: set) -> None:
        tags = self._user_tags([f.path for f in changed]) if changed else {}
        batch = []
        for i, found in enumerate(changed):
            if found.error:
                summary, error, side = {}, found.error, {}
            else:
                summary, error = scanner.read_file_summary(found.path, found.ext)
                side = scanner.read_sidecars(found)
            if error:
                logger.warning("%s: %s", found.path, error)
                if error.startswith("cannot "):
                    retry_folders.add((found.root, found.folder))
            batch.append(scanner.record(found, summary, error, side, tags.get(found.path, "")))
            report.read += 1
            if len(batch) >= WRITE_BATCH:
                self.db.write(self.db.upsert_files, batch)
                batch = []
            if progress is not None:
                progress(i + 1, len(changed), found.path)
        if batch:
            self.db.write(self.db.upsert_files, batch)

    def _write_sidecar_changes(self, side_changed, report: ScanReport) -> None:
        if not side_changed:
            return
        tags = self._user_tags([f.path for f in side_changed])
        batch = []
        for found in side_changed:
            row = self.db.query("SELECT d.summary FROM files f JOIN details d ON d.id = f.id WHERE f.path=?", (found.path,))
            summary = _loads(row[0]["summary"], {}) if row else {}
            side = scanner.read_sidecars(found)
            rec = scanner.record(found, summary, None, side, tags.get(found.path, ""))
            batch.append(rec)
            report.sidecars += 1
            if len(batch) >= WRITE_BATCH:
                self.db.write(self.db.update_sidecars, batch)
                batch = []
        if batch:
            self.db.write(self.db.update_sidecars, batch)

    def refresh(self, path: str) -> Entry | None:
        """Re-read one file's sidecars (after the UI or Civitai code wrote them)."""
        entry = self.entry(path)
        sig, preview = scanner.folder_signature(entry.path, self.roots)
        found = scanner.Found(entry.path, entry.root, entry.rel_name, entry.folder, entry.name, entry.ext,
                              entry.size, int(round(entry.mtime * 1e9)), sig, preview)
        side = scanner.read_sidecars(found)
        rec = scanner.record(found, entry.summary, None, side, " ".join(entry.user_tags))
        self.db.write(self.db.update_sidecars, [rec])
        return self.entry(entry.path)

    # -- rows -> entries -----------------------------------------------------------------------
    _SELECT = "SELECT f.*, d.summary, d.user_meta, d.civitai, " \
              "u.favorite AS u_favorite, u.tags AS u_tags, u.last_used AS u_last_used " \
              "FROM files f JOIN details d ON d.id = f.id LEFT JOIN user_data u ON u.path = f.path"

    @staticmethod
    def _entry(row) -> Entry:
        keys = row.keys()
        hashed = row["sha256"] is not None and (row["hashed_size"], row["hashed_mtime_ns"]) == (row["size"], row["mtime_ns"])
        tags = row["u_tags"] if "u_tags" in keys and row["u_tags"] else ""
        return Entry(
            path=row["path"], name=row["stem"], rel_name=row["rel"], folder=row["folder"], root=row["root"],
            ext=row["ext"], size=row["size"], mtime=row["mtime_ns"] / 1e9, alias=row["alias"],
            family=row["family"], algorithm=row["algorithm"], summary=_loads(row["summary"], {}),
            user_metadata=_loads(row["user_meta"], {}), civitai=_loads(row["civitai"], None),
            preview=row["preview"], sha256=row["sha256"] if hashed else None,
            addnet_sha256=row["addnet"] if hashed else None, error=row["error"],
            favorite=bool(row["u_favorite"]) if "u_favorite" in keys else False,
            user_tags=tuple(t for t in tags.split(",") if t),
            last_used=row["u_last_used"] if "u_last_used" in keys else None,
        )

    def _rows(self, where: str, params=()) -> list:
        if not self.roots:
            return []
        return self.db.query(
            f"{self._SELECT} WHERE +f.root IN ({self._root_marks}) AND ({where})", list(self.roots) + list(params)
        )

    def all(self) -> list[Entry]:
        return [self._entry(r) for r in self._rows("1") ]

    def __len__(self) -> int:
        if not self.roots:
            return 0
        return self.db.query(f"SELECT COUNT(*) FROM files WHERE root IN ({self._root_marks})", self.roots)[0][0]

    def _inside(self, path: str) -> bool:
        return scanner.is_within(path, self.roots)

    def entry(self, path) -> Entry:
        """The entry of a file path; NotFound when it is not indexed or lies outside the library."""
        path = os.path.abspath(str(path))
        if not self._inside(path):
            raise NotFound(path, "outside the library folders")
        rows = self._rows("f.path = ?", (path,)) or self._rows("f.path = ?", (os.path.realpath(path),))
        if not rows:
            raise NotFound(path, "not in the library index (rescan?)")
        return self._entry(rows[0])

    # -- names ---------------------------------------------------------------------------------
    @staticmethod
    def _clean_name(name: str) -> str:
        raw = str(name)
        text = raw.strip().replace("\\", "/")
        if not text:
            raise NotFound(raw, "empty name")
        if text.startswith("./") and "/" not in text[2:].strip("/"):
            return "./" + Library._clean_name(text[2:])
        if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or text.startswith("~"):
            raise NotFound(raw, "refused: absolute paths are not LoRA names; use a name inside the library")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise NotFound(raw, "refused: '..' would leave the library folders")
        text = "/".join(parts)
        for ext in scanner.LORA_EXTENSIONS:
            if text.lower().endswith(ext):
                text = text[: -len(ext)]
        return text

    def _pick(self, name: str, rows) -> Entry | None:
        entries = [self._entry(r) for r in rows]
        entries = [e for e in entries if e.error == "broken symbolic link (target missing)" or self._inside(e.path)]
        if not entries:
            return None
        if len(entries) > 1:
            labels = sorted({e.rel_name if "/" in e.rel_name else "./" + e.rel_name for e in entries})
            if len(labels) < len(entries):  # same folder/name under two roots: show paths
                labels = sorted(e.path for e in entries)
            raise AmbiguousName(name, labels)
        return entries[0]

    def find(self, name: str) -> Entry:
        """The one entry a prompt name means (see module doc). Raises NotFound / AmbiguousName."""
        text = self._clean_name(name)
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        levels = []
        if text.startswith("./"):  # "./name": the file directly in a library folder
            levels += [("f.rel = ?", (text[2:],)), ("f.rel = ? COLLATE NOCASE", (text[2:],))]
        elif "/" in text:
            levels += [("f.rel = ?", (text,)), ("f.rel = ? COLLATE NOCASE", (text,)),
                       ("f.rel LIKE ? ESCAPE '\\'", ("%/" + escaped,))]
        else:
            levels += [("f.stem = ?", (text,)), ("f.alias = ?", (text,)),
                       ("f.stem = ? COLLATE NOCASE", (text,)), ("f.alias = ? COLLATE NOCASE", (text,))]
        for where, params in levels:
            rows = self._rows(where, params)
            if "LIKE" in where:  # LIKE is case-insensitive: keep case-exact suffix matches first
                exact = [r for r in rows if r["rel"].endswith("/" + text)]
                rows = exact or rows
            hit = self._pick(str(name), rows)
            if hit is not None:
                return hit
        raise NotFound(str(name))

    def by_hash(self, h: str) -> list[Entry]:
        """Entries whose sha256 (AutoV2 is its prefix) or addnet hash (AutoV3) starts with `h`."""
        text = str(h).strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        if len(text) < 6 or not _HEX.match(text):
            return []
        upper = text + "g"  # 'g' sorts after every hex digit: [text, upper) is the prefix range
        rows = self._rows(
            "(f.sha256 >= ? AND f.sha256 < ?) OR (f.addnet >= ? AND f.addnet < ?)", (text, upper, text, upper)
        )
        return [e for e in map(self._entry, rows) if e.sha256 is not None]

    # -- search --------------------------------------------------------------------------------
    def search(self, query: str = "", page: int = 0, page_size: int = 50, sort: str = "name",
               family: str | None = None, folder: str | None = None, favorites_only: bool = False) -> Page:
        """One page (0-based) of entries matching every word of `query` (substring, any case) in
        folder/name, alias, trigger words (activation text, Civitai trainedWords), training tags or
        user tags. Words shorter than 3 characters match folder/name and alias only. `folder`
        includes its subfolders."""
        page = max(0, int(page))
        page_size = max(1, min(MAX_PAGE_SIZE, int(page_size)))
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {sorted(SORTS)}")
        if not self.roots:
            return Page(0, [], page, page_size)
        # `+f.root` keeps SQLite from picking the root index, so the sort index drives the scan
        # and LIMIT stops early instead of sorting every row.
        where, params = [f"+f.root IN ({self._root_marks})"], list(self.roots)
        terms = [t for t in str(query or "").lower().split() if t]
        long_terms = [t for t in terms if len(t) >= 3]
        for t in terms:
            if len(t) < 3:  # too short for the trigram index: folder/name and alias only
                like = "%" + t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                where.append("(f.rel LIKE ? ESCAPE '\\' OR f.alias LIKE ? ESCAPE '\\')")
                params += [like, like]
        if family:
            where.append("f.family = ?")
            params.append(family)
        if folder:
            folder = folder.strip("/")
            # subfolders as an index range: "a/" <= folder < "a0" ('0' follows '/')
            where.append("(f.folder = ? OR (f.folder >= ? AND f.folder < ?))")
            params += [folder, folder + "/", folder + "0"]
        if favorites_only:
            where.append("f.path IN (SELECT path FROM user_data WHERE favorite = 1)")
        cond = " AND ".join(where)
        offset = page * page_size
        if not terms:
            total = self.db.query(f"SELECT COUNT(*) FROM files f WHERE {cond}", params)[0][0]
            ids = [r[0] for r in self.db.query(
                f"SELECT f.id FROM files f WHERE {cond} ORDER BY {SORTS[sort]} LIMIT ? OFFSET ?",
                params + [page_size, offset])]
            return Page(total=total, items=self._entries_by_id(ids), page=page, page_size=page_size)
        # Text query: the FTS index gives the matching ids; their order comes from the filtered,
        # sorted id list (read once through a covering sort index, kept until the index changes).
        # Joining and sorting thousands of matches in SQL was the slow part at 50,000 files.
        if not long_terms:  # short words only: the LIKE filter is part of the cached order
            hits = self._ordered_ids(cond, params, sort)
            return Page(total=len(hits), items=self._entries_by_id(hits[offset:offset + page_size]), page=page,
                        page_size=page_size)
        match = " AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms)
        matched = self._fts_ids(match)
        if not matched:
            return Page(total=0, items=[], page=page, page_size=page_size)
        if len(matched) <= SMALL_MATCH and not self._has_order(cond, params, sort):
            # few matches and no cached order: let SQL sort just those
            hits = self._ids_in_order(
                f"{cond} AND f.id IN (SELECT rowid FROM files_fts WHERE files_fts MATCH ?)", params + [match], sort)
        else:
            hits = [i for i in self._ordered_ids(cond, params, sort) if i in matched]
        return Page(total=len(hits), items=self._entries_by_id(hits[offset:offset + page_size]), page=page,
                    page_size=page_size)

    def _fts_ids(self, match: str) -> set[int]:
        cur = self.db.connection().cursor()
        cur.row_factory = None
        return {r[0] for r in cur.execute("SELECT rowid FROM files_fts WHERE files_fts MATCH ?", (match,))}

    def _has_order(self, cond: str, params: list, sort: str) -> bool:
        cached = self._order_cache.get((cond, tuple(params), sort))
        return cached is not None and cached[0] == (self.db.generation, self.db.data_version())

    def _ids_in_order(self, cond: str, params: list, sort: str) -> list[int]:
        cur = self.db.connection().cursor()
        cur.row_factory = None  # plain tuples: this may read every row
        return [r[0] for r in cur.execute(f"SELECT f.id FROM files f WHERE {cond} ORDER BY {SORTS[sort]}", params)]

    def _ordered_ids(self, cond: str, params: list, sort: str) -> list[int]:
        """Ids of the filtered rows in sort order, cached per index version."""
        key = (cond, tuple(params), sort)
        version = (self.db.generation, self.db.data_version())
        cached = self._order_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        ordered = self._ids_in_order(cond, params, sort)
        with self._order_lock:  # UI handlers search from several threads
            if len(self._order_cache) >= 8:  # a handful of sort/filter combinations is all a UI uses
                self._order_cache.pop(next(iter(self._order_cache)))
            self._order_cache[key] = (version, ordered)
        return ordered

    def _entries_by_id(self, ids: list[int]) -> list[Entry]:
        if not ids:
            return []
        rows = self.db.query(f"{self._SELECT} WHERE f.id IN ({','.join('?' * len(ids))})", ids)
        by_id = {r["id"]: self._entry(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def folders(self) -> list[tuple[str, int]]:
        """Folder tree as (folder path, LoRA count including subfolders), sorted; "" is the root."""
        if not self.roots:
            return []
        counts: dict[str, int] = {}
        for folder, n in self.db.query(
            f"SELECT folder, COUNT(*) FROM files WHERE root IN ({self._root_marks}) GROUP BY folder", self.roots
        ):
            parts = folder.split("/") if folder else []
            for depth in range(len(parts) + 1):
                key = "/".join(parts[:depth])
                counts[key] = counts.get(key, 0) + n
        return sorted(counts.items())

    # -- hashes --------------------------------------------------------------------------------
    def _hash_lookup(self, path: str):
        rows = self.db.query("SELECT size, mtime_ns, sha256, hashed_size, hashed_mtime_ns FROM files WHERE path=?", (path,))
        if not rows:
            return None
        r = rows[0]
        has = r["sha256"] is not None and (r["hashed_size"], r["hashed_mtime_ns"]) == (r["size"], r["mtime_ns"])
        return r["size"], r["mtime_ns"], has

    def _hash_store(self, path, size, mtime_ns, sha, addnet):
        try:
            self.db.store_hashes(path, size, mtime_ns, sha, addnet)
        except StorageError as exc:
            logger.error("%s", exc)

    def request_hashes(self, paths=None, progress=None) -> int:
        """Queue files for background hashing (default: every indexed file without a current hash).
        Returns how many were queued; never blocks. progress(done, total, path) runs on the worker."""
        if paths is None:
            rows = self._rows(
                "f.error IS NULL AND (f.sha256 IS NULL OR f.hashed_size IS NOT f.size OR f.hashed_mtime_ns IS NOT f.mtime_ns)"
            )
            paths = [r["path"] for r in rows]
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

    # -- sidecars and previews -----------------------------------------------------------------
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

    # -- user data -----------------------------------------------------------------------------
    def set_favorite(self, path, favorite: bool = True) -> None:
        self.db.set_user_data(self.entry(path).path, favorite=1 if favorite else 0)

    def set_user_tags(self, path, tags) -> None:
        entry = self.entry(path)
        clean = sorted({str(t).strip().replace(",", " ")[:100] for t in tags if str(t).strip()})
        self.db.set_user_data(entry.path, tags=",".join(clean))
        row = self.db.query("SELECT d.search_text FROM files f JOIN details d ON d.id = f.id WHERE f.path=?", (entry.path,))[0]
        base = row[0].split(scanner.USER_TAGS_SEPARATOR)[0]
        self.db.set_search_text(entry.path, base + scanner.USER_TAGS_SEPARATOR + " ".join(clean))

    def mark_used(self, paths, when: float | None = None) -> None:
        when = time.time() if when is None else when
        for path in paths:
            self.db.set_user_data(self.entry(path).path, last_used=when)

    def save_stack(self, name: str, items) -> None:
        """Save a named stack: a list of (lora name, weight)."""
        clean = [(str(n), float(w)) for n, w in items]
        if not str(name).strip():
            raise ValueError("a stack needs a name")
        self.db.save_stack(str(name).strip(), clean, time.time())

    def stacks(self) -> dict[str, list[tuple[str, float]]]:
        out = {}
        for row in self.db.query("SELECT name, items FROM stacks ORDER BY name"):
            out[row["name"]] = [tuple(x) for x in _loads(row["items"], [])]
        return out

    def delete_stack(self, name: str) -> bool:
        return self.db.delete_stack(name)
