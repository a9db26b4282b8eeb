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
from array import array

from lora_core.library import inspect_header, scanner, sidecars, thumbnails
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
CACHED_ORDERS = 8    # id lists kept per kind (sort orders, text results)
CACHED_MATCHES = 4   # FTS id sets kept (up to every row each)
WRITE_BATCH = 500
BULK_MIN_ROWS = 2000  # new rows from which a scan rebuilds the file indexes instead of updating them
BULK_WRITE_BATCH = 5000  # rows per transaction then: fewer, larger full-text segments to merge
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


_SEARCH_TERM = re.compile(r'"([^"]+)"|(\S+)')


def search_terms(query) -> list[str]:
    """The terms of a search, lower case: words, "quoted phrases" (inner spaces collapsed) and
    paths (a "\\" read as "/")."""
    terms: list[str] = []
    for m in _SEARCH_TERM.finditer(str(query or "").lower()):
        term = " ".join((m.group(1) if m.group(1) is not None else m.group(2)).split())
        if "\\" in term:
            term = term.replace("\\", "/")
        if term and term not in terms:
            terms.append(term)
    return terms


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Library:
    def __init__(self, dirs, data_dir: str | None = None):
        self.dirs = [str(d) for d in dirs]
        self.roots = scanner.real_roots(self.dirs)
        self.data_dir = str(data_dir) if data_dir is not None else default_data_dir()
        self.db = IndexDB(os.path.join(self.data_dir, "library.sqlite3"))
        self.problems: list[str] = [self.db.problem] if self.db.problem else []
        self._hasher = HashWorker(self._hash_lookup, self._hash_store)
        self._root_marks = ",".join("?" * len(self.roots)) or "NULL"
        self._base_cond = f"+f.root IN ({self._root_marks})"
        self._order_cache: dict = {}  # (filters, sort) -> (index version, ordered ids)
        self._hits_cache: dict = {}   # (filters, sort, words) -> (index version, ordered ids)
        self._match_cache: dict = {}  # FTS match expression -> (index version, set of ids)
        self._order_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._hasher.stop()
        self.db.close()

    # -- scanning ------------------------------------------------------------------------------
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
        start = time.perf_counter()
        report = ScanReport()
        for d, root in zip(self.dirs, self.roots):
            if not os.path.isdir(root):
                report.problems.append(f"library folder {d} does not exist")
        present = [r for r in self.roots if os.path.isdir(r)]
        listings = self.db.folder_listings(self.roots) if self.roots else {}
        reuse = None
        if quick and not any(v[3] for v in listings.values()):
            reuse = {v[0]: (v[1], v[2]) for v in listings.values() if v[1] is not None}
        walked = scanner.walk(present, reuse)
        if reuse is not None and any(listing.links for listing in walked.listed.values()):
            walked = scanner.walk(present)  # which of two linked copies is kept depends on the walk order
        report.problems.extend(walked.problems)
        skipped = set(walked.skipped)
        report.total = len(walked.files)
        if skipped:
            counts = self.db.file_counts(self.roots)
            report.total += sum(counts.get(key, 0) for key in skipped)
        # Only folders whose digest changed are compared file by file (a warm start with nothing
        # new reads one digest per folder). Rows under a missing root (unmounted drive) stay.
        by_folder = walked.folders()
        digests = {key: scanner.folder_digest(files) for key, files in by_folder.items()}
        stored = self.db.folder_digests(self.roots) if self.roots else {}
        dirty = {key for key, digest in digests.items() if stored.get(key) != digest}
        dirty |= {key for key in stored if key not in digests and key not in skipped and key[0] in present}
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
            new_rows = sum(1 for found in changed if found.path not in known)
            self._write_changed(changed, progress, report, retry_folders, bulk=self._bulk_load(new_rows))
            self._write_sidecar_changes(side_changed, report)
            if removed:
                self.db.write(self.db.delete_files, removed)
                report.removed = len(removed)
            # saved last: a failed write above leaves the folder dirty for the next scan
            new_listings = {
                key: None if key in retry_folders else (v.path, v.signature, v.subdirs, v.links)
                for key, v in walked.listed.items()
            }
            new_listings.update({key: None for key in listings if key not in walked.listed
                                 and key not in skipped and key[0] in present})
            self.db.write(self._save_folder_state, {
                key: None if key in retry_folders else digests.get(key) for key in dirty
            }, new_listings, bump=False)
            self._refresh_sort_orders(changed=bool(changed or side_changed or removed))
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

    @staticmethod
    def _save_folder_state(conn, digests, listings) -> None:
        IndexDB.set_folder_digests(conn, digests)
        IndexDB.set_folder_listings(conn, listings)

    def _user_tags(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for i in range(0, len(paths), 900):
            chunk = paths[i:i + 900]
            rows = self.db.query(
                f"SELECT path, tags FROM user_data WHERE path IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update({r[0]: r[1] for r in rows})
        return out

    def _bulk_load(self, new_rows: int) -> bool:
        """Whether inserting `new_rows` rows is cheaper with the file indexes rebuilt afterwards:
        many rows, and at least half as many as the index holds already."""
        if new_rows < BULK_MIN_ROWS:
            return False
        held = self.db.query("SELECT COALESCE(MAX(id), 0) FROM files")[0][0]  # rows ever, roughly
        return new_rows * 2 >= held

    def _write_changed(self, changed, progress, report: ScanReport, retry_folders: set, bulk: bool = False) -> None:
        indexes = self.db.begin_bulk() if bulk else None
        try:
            self._write_changed_rows(changed, progress, report, retry_folders,
                                     BULK_WRITE_BATCH if bulk else WRITE_BATCH)
        finally:
            if indexes is not None:
                self.db.end_bulk(indexes)

    def _write_changed_rows(self, changed, progress, report: ScanReport, retry_folders: set,
                            batch_size: int) -> None:
        tags = self._user_tags([f.path for f in changed]) if changed else {}
        summarizer = inspect_header.Summarizer()
        batch = []
        for i, found in enumerate(changed):
            if found.error:
                summary, error, side = {}, found.error, {}
            else:
                summary, error = scanner.read_file_summary(found.path, found.ext, summarizer)
                side = scanner.read_sidecars(found)
            if error:
                logger.warning("%s: %s", found.path, error)
                if error.startswith("cannot "):
                    retry_folders.add((found.root, found.folder))
            batch.append(scanner.record(found, summary, error, side, tags.get(found.path, "")))
            report.read += 1
            if len(batch) >= batch_size:
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
        raise NotFound(str(name), suggestions=self.close_names(text))

    def close_names(self, name: str, limit: int = 3) -> list[str]:
        """Names in the library (file stems, aliases, folder/names) closest to `name` (difflib),
        for "did you mean ...?". Runs only after a miss; reads names only."""
        import difflib

        if not self.roots:
            return []
        text = str(name)[2:] if str(name).startswith("./") else str(name)
        by_lower: dict[str, str] = {}
        for stem, alias, rel in self.db.query(
                f"SELECT stem, alias, rel FROM files WHERE root IN ({self._root_marks})", list(self.roots)):
            for candidate in ((rel,) if "/" in text else (stem, alias)):
                if candidate:
                    by_lower.setdefault(candidate.lower(), candidate)
        close = difflib.get_close_matches(text.lower(), list(by_lower), n=limit, cutoff=0.72)
        return [by_lower[c] for c in close]

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
        # `+f.root` keeps SQLite from picking the root index, so the sort index drives the scan
        # and LIMIT stops early instead of sorting every row.
        where, params = [self._base_cond], list(self.roots)
        terms = search_terms(query)
        paths = [t for t in terms if "/" in t]
        long_terms = [t for t in terms if len(t) >= 3 and "/" not in t]
        short_terms = [t for t in terms if len(t) < 3 and "/" not in t]
        if not long_terms and not paths:
            for t in short_terms:  # short words alone: folder/name and alias only (indexed, cheap)
                like = "%" + _like_escape(t) + "%"
                where.append("(f.rel LIKE ? ESCAPE '\\' OR f.alias LIKE ? ESCAPE '\\')")
                params += [like, like]
            short_terms = []
        if problems_only:
            where.append("f.error IS NOT NULL")
        elif family and with_problems:
            where.append("(f.family = ? OR f.error IS NOT NULL)")
            params.append(family)
        elif family:
            where.append("f.family = ?")
            params.append(family)
        if folder:
            folder = folder.strip("/")
            # subfolders as an index range: "a/" <= folder < "a0" ('0' follows '/')
            where.append("(f.folder = ? OR (f.folder >= ? AND f.folder < ?))")
            params += [folder, folder + "/", folder + "0"]
        if favorites_only:
            where.append("f.id IN (SELECT g.id FROM user_data u JOIN files g ON g.path = u.path WHERE u.favorite = 1)")
        cond = " AND ".join(where)
        offset = page * page_size
        versions = self.db.versions()
        if paths or short_terms:
            hits = self._mixed_hits(cond, params, sort, long_terms, short_terms, paths, versions)
        elif not long_terms:
            hits = self._ordered_ids(cond, params, sort, versions, compute=page > 0 or bool(terms))
            if hits is None:  # first page, nothing cached: SQL stops after one page
                total = self.db.query(f"SELECT COUNT(*) FROM files f WHERE {cond}", params)[0][0]
                ids = [r[0] for r in self.db.query(
                    f"SELECT f.id FROM files f WHERE {cond} ORDER BY {SORTS[sort]} LIMIT ?", params + [page_size])]
                return Page(total=total, items=self._entries_by_id(ids), page=page, page_size=page_size)
        else:
            hits = self._text_hits(cond, params, sort, long_terms, versions)
        return Page(total=len(hits), items=self._entries_by_id(list(hits[offset:offset + page_size])), page=page,
                    page_size=page_size)

    def _text_hits(self, cond: str, params: list, sort: str, long_terms: list[str], versions: tuple[int, int]):
        """Ids matching the text terms (FTS trigram index) and `cond`, in sort order; cached."""
        version = versions[0]
        key = (cond, tuple(params), sort, tuple(long_terms))
        cached = self._hits_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        match = " AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms)
        cached = self._match_cache.get(match)  # the same words in another sort or filter: no FTS query
        if cached is not None and cached[0] == version:
            matched = cached[1]
        else:
            matched = self._fts_ids(match)
            self._remember(self._match_cache, match, (version, matched), CACHED_MATCHES)
        if not matched:
            hits = array("q")
        else:
            ordered = self._ordered_ids(cond, params, sort, versions, compute=False)
            if ordered is None and len(matched) <= SMALL_MATCH:
                # few matches and no order at hand: let SQL sort just those
                hits = array("q", self._ids_in_order(
                    f"{cond} AND f.id IN (SELECT rowid FROM files_fts WHERE files_fts MATCH ?)", params + [match], sort))
            else:
                if ordered is None:
                    ordered = self._ordered_ids(cond, params, sort, versions)
                hits = array("q", [i for i in ordered if i in matched])
        self._remember(self._hits_cache, key, (version, hits))
        return hits

    def _mixed_hits(self, cond: str, params: list, sort: str, long_terms: list[str], short_terms: list[str],
                    paths: list[str], versions: tuple[int, int]):
        """Like `_text_hits`, for queries with paths or with short words beside long ones: the
        long words through the FTS index, each path through it and the library folders' own
        paths, then the short words as substrings of those entries' search text."""
        version = versions[0]
        key = (cond, tuple(params), sort, tuple(long_terms), tuple(short_terms), tuple(paths))
        cached = self._hits_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        matched = None
        if long_terms:
            matched = self._fts_ids(" AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms))
        for p in paths:
            if matched is not None and not matched:
                break
            found = self._path_ids(p)
            matched = found if matched is None else matched & found
        if matched and short_terms:
            matched = self._text_contains(matched, short_terms)
        hits = array("q")
        if matched:
            hits = array("q", [i for i in self._ordered_ids(cond, params, sort, versions) if i in matched])
        self._remember(self._hits_cache, key, (version, hits))
        return hits

    def _path_ids(self, term: str) -> set[int]:
        """Ids whose path contains `term` ("/"-separated, lower case): in folder/name (the FTS
        index), or reaching back into a library folder's own path ("models/lora/chars/al" is the
        root ".../models/Lora" then folder/name "chars/al...")."""
        ids = self._fts_ids('"' + term.replace('"', '""') + '"') if len(term) >= 3 else set()
        conds, args = [], []
        if len(term) < 3:
            conds.append("(f.rel || f.ext) LIKE ? ESCAPE '\\'")
            args.append("%" + _like_escape(term) + "%")
        spellings = {}
        for d in self.dirs:
            real = os.path.realpath(os.path.expanduser(d))
            for spelled in (os.path.abspath(os.path.expanduser(d)), real):
                spellings.setdefault(spelled, real)
        for spelled, root in spellings.items():
            if root not in self.roots:
                continue
            full = spelled.replace("\\", "/").rstrip("/").lower() + "/"
            if term in full:
                conds.append("f.root = ?")
                args.append(root)
                continue
            for i in range(1, len(term)):
                if term[i - 1] == "/" and full.endswith(term[:i]):
                    conds.append("(f.root = ? AND (f.rel || f.ext) LIKE ? ESCAPE '\\')")
                    args += [root, _like_escape(term[i:]) + "%"]
        if conds:
            cur = self.db.connection().cursor()
            cur.row_factory = None
            ids |= {r[0] for r in cur.execute(f"SELECT f.id FROM files f WHERE {' OR '.join(conds)}", args)}
        return ids

    def _text_contains(self, ids: set[int], words: list[str]) -> set[int]:
        """The ids among `ids` whose search text contains every one of `words` (any case)."""
        likes = " AND ".join("d.search_text LIKE ? ESCAPE '\\'" for _ in words)
        like_args = ["%" + _like_escape(w) + "%" for w in words]
        cur = self.db.connection().cursor()
        cur.row_factory = None
        ordered, out = sorted(ids), set()
        for start in range(0, len(ordered), 500):
            chunk = ordered[start:start + 500]
            out.update(r[0] for r in cur.execute(
                f"SELECT d.id FROM details d WHERE d.id IN ({','.join('?' * len(chunk))}) AND {likes}",
                chunk + like_args))
        return out

    def _remember(self, cache: dict, key, value, limit: int = CACHED_ORDERS) -> None:
        with self._order_lock:  # UI handlers search from several threads
            cache.pop(key, None)
            if len(cache) >= limit:  # a handful of sort/filter/query combinations is all a UI uses
                cache.pop(next(iter(cache)))
            cache[key] = value

    def _fts_ids(self, match: str) -> set[int]:
        cur = self.db.connection().cursor()
        cur.row_factory = None
        return {r[0] for r in cur.execute("SELECT rowid FROM files_fts WHERE files_fts MATCH ?", (match,))}

    def _ids_in_order(self, cond: str, params: list, sort: str) -> list[int]:
        cur = self.db.connection().cursor()
        cur.row_factory = None  # plain tuples: this may read every row
        return [r[0] for r in cur.execute(f"SELECT f.id FROM files f WHERE {cond} ORDER BY {SORTS[sort]}", params)]

    def _order_key(self, sort: str) -> str:
        return sort + "\n" + "\n".join(self.roots)

    @staticmethod
    def _base_version(sort: str, versions: tuple[int, int]) -> int:
        # user data (favorites, tags, last used) changes only the last-used order
        return versions[0] if sort == "last_used" else versions[1]

    def _ordered_ids(self, cond: str, params: list, sort: str, versions: tuple[int, int], compute: bool = True):
        """Ids of the filtered rows in sort order (an array), cached per index version. The
        unfiltered order of a sort is also stored in the index; a filtered order is that order
        with the non-matching ids dropped (cheaper than an ORDER BY that looks up every row).
        None when not at hand and not `compute`."""
        base = cond == self._base_cond
        version = self._base_version(sort, versions) if base else versions[0]
        key = (cond, tuple(params), sort)
        cached = self._order_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        if base:
            ordered = None
            blob = self.db.sort_order(self._order_key(sort), version)
            if blob is not None:
                ordered = array("q")
                ordered.frombytes(blob)
            elif not compute:
                return None
            elif sort == "last_used":
                # used rows by time, then the never-used ones in name order (the same order SQL
                # gives them): marking a LoRA used re-reads a few hundred rows, not every row
                name = self._ordered_ids(cond, params, "name", versions)
                used = self._ids_in_order(f"{cond} AND f.last_used IS NOT NULL", params, sort)
                used_set = set(used)
                ordered = array("q", used)
                ordered.extend(i for i in name if i not in used_set)
                self._store_order(sort, version, "files_version", ordered)
            else:
                ordered = array("q", self._ids_in_order(cond, params, sort))
                self._store_order(sort, version, "rows_version", ordered)
        else:
            order = self._ordered_ids(self._base_cond, list(self.roots), sort, versions, compute)
            if order is None:
                return None
            # the filters alone (cond = base AND filters): the base order already holds only
            # this library's roots, and without `+f.root` a filter's index answers by itself
            filters, filter_params = cond[len(self._base_cond) + len(" AND "):], params[len(self.roots):]
            cur = self.db.connection().cursor()
            cur.row_factory = None
            members = {r[0] for r in cur.execute(f"SELECT f.id FROM files f WHERE {filters}", filter_params)}
            ordered = array("q", [i for i in order if i in members])
        self._remember(self._order_cache, key, (version, ordered))
        return ordered

    def _store_order(self, sort: str, version: int, counter: str, ordered) -> None:
        def run(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (counter,)).fetchone()
            if row is not None and int(row[0]) == version:  # nothing changed since it was read
                conn.execute("INSERT OR REPLACE INTO sort_orders(key, version, ids) VALUES(?, ?, ?)",
                             (self._order_key(sort), version, ordered.tobytes()))
        try:
            self.db.write(run, bump=False)
        except StorageError as exc:  # only a cache: searching goes on without it
            logger.debug("sort order not stored: %s", exc)

    def _refresh_sort_orders(self, changed: bool) -> None:
        """After a scan: store the name order if missing, and after changes also the date and
        size orders and a last-used order stored before, so the first search of a new process
        (or after a rescan) does not sort every row."""
        if not self.roots:
            return
        versions = self.db.versions()
        stored = self.db.stored_sort_orders()
        sorts = ["name"] + (["date", "size"] if changed else [])
        if changed and self._order_key("last_used") in stored:
            sorts.append("last_used")
        for sort in sorts:
            if stored.get(self._order_key(sort)) != self._base_version(sort, versions):
                self._ordered_ids(self._base_cond, list(self.roots), sort, versions)

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
