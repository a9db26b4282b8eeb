"""SQLite index of the library: one file `library.sqlite3` under the data dir, WAL mode.

One connection per thread (sqlite3 connections are not shared between threads). Every write is
a short transaction (BEGIN IMMEDIATE + busy timeout), so two processes sharing a data dir wait for
each other instead of failing, and a crash or a full disk leaves the previous consistent state.
Rows carry the library root they were found under; a Library only sees and prunes rows of its
own roots, so processes with different model folders can share one index.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import uuid

from lora_core.library.errors import StorageError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 6  # 6: files.base_model (library/base_models.py)
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    rel TEXT NOT NULL,
    folder TEXT NOT NULL,
    stem TEXT NOT NULL,
    ext TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sidecar_sig TEXT NOT NULL DEFAULT '',
    alias TEXT,
    family TEXT NOT NULL DEFAULT 'unknown',
    algorithm TEXT NOT NULL DEFAULT 'unknown',
    preview TEXT,
    error TEXT,
    sha256 TEXT,
    addnet TEXT,
    hashed_size INTEGER,
    hashed_mtime_ns INTEGER,
    last_used REAL,
    base_model TEXT NOT NULL DEFAULT ''   -- base_models.classify at index time: a filter is an index lookup
);
-- the bulky per-file text lives apart, so filtering and sorting scan small rows
CREATE TABLE IF NOT EXISTS details(
    id INTEGER PRIMARY KEY,
    summary TEXT NOT NULL DEFAULT '{}',
    user_meta TEXT NOT NULL DEFAULT '{}',
    civitai TEXT,
    search_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS files_stem_nc ON files(stem COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS files_stem ON files(stem);
CREATE INDEX IF NOT EXISTS files_rel_nc ON files(rel COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS files_rel ON files(rel);
CREATE INDEX IF NOT EXISTS files_alias_nc ON files(alias COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS files_alias ON files(alias);
CREATE INDEX IF NOT EXISTS files_root ON files(root);
-- sort indexes also carry root/rel/alias so listing in order never touches the table
CREATE INDEX IF NOT EXISTS files_sort_name ON files(stem COLLATE NOCASE, rel COLLATE NOCASE, root, alias);
CREATE INDEX IF NOT EXISTS files_sort_date ON files(mtime_ns DESC, stem COLLATE NOCASE, rel COLLATE NOCASE, root, alias);
CREATE INDEX IF NOT EXISTS files_sort_size ON files(size DESC, stem COLLATE NOCASE, rel COLLATE NOCASE, root, alias);
CREATE INDEX IF NOT EXISTS files_sort_used ON files(last_used DESC, stem COLLATE NOCASE, rel COLLATE NOCASE, root, alias);
CREATE INDEX IF NOT EXISTS files_family ON files(family);
CREATE INDEX IF NOT EXISTS files_base_model ON files(base_model);
CREATE INDEX IF NOT EXISTS files_folder ON files(folder);
CREATE INDEX IF NOT EXISTS files_root_folder ON files(root, folder);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE INDEX IF NOT EXISTS files_addnet ON files(addnet);
CREATE VIRTUAL TABLE IF NOT EXISTS files_fts USING fts5(text, tokenize='trigram');
-- one digest per folder: a warm start compares 1 row per folder, not 1 per file
CREATE TABLE IF NOT EXISTS folder_digests(root TEXT NOT NULL, folder TEXT NOT NULL, digest TEXT NOT NULL,
                                          PRIMARY KEY(root, folder));
-- per listed folder: its signature and subfolders, so a quick scan skips unchanged folders
CREATE TABLE IF NOT EXISTS folder_listings(root TEXT NOT NULL, folder TEXT NOT NULL, path TEXT NOT NULL,
                                           signature TEXT, subdirs TEXT NOT NULL, links INTEGER NOT NULL,
                                           PRIMARY KEY(root, folder));
-- the full sort order of a library's rows as packed ids, valid while meta 'files_version' matches
CREATE TABLE IF NOT EXISTS sort_orders(key TEXT PRIMARY KEY, version INTEGER NOT NULL, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS user_data(
    path TEXT PRIMARY KEY,
    favorite INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '',
    last_used REAL
);
CREATE INDEX IF NOT EXISTS user_last_used ON user_data(last_used);
CREATE TABLE IF NOT EXISTS stacks(name TEXT PRIMARY KEY, items TEXT NOT NULL, updated REAL);
"""

FILE_COLUMNS = (
    "path", "root", "rel", "folder", "stem", "ext", "size", "mtime_ns", "sidecar_sig", "alias",
    "family", "algorithm", "preview", "error", "base_model",
)
DETAIL_COLUMNS = ("summary", "user_meta", "civitai", "search_text")


def storage_message(exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    if "full" in low:
        return f"the library index could not be written: disk full ({text})"
    if "readonly" in low or "read-only" in low or "permission" in low:
        return f"the library index could not be written: read-only location ({text})"
    return f"the library index could not be written ({text})"


class IndexDB:
    """Thread-aware access to the index file. `path=None` keeps the index in memory only."""

    def __init__(self, path: str | None):
        self.path = path
        self.problem: str | None = None
        self.generation = 0  # bumped by every write through this object (search cache key)
        self._local = threading.local()
        self._memory_uri = None
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            if path is None:
                raise sqlite3.OperationalError("no data directory")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._init_schema(self.connection())
        except (sqlite3.DatabaseError, OSError) as exc:
            if path is not None:
                self.problem = (
                    f"cannot use the library index at {path} ({exc}); using a temporary in-memory index"
                )
                logger.warning("%s", self.problem)
            self._drop_connections()
            self._memory_uri = f"file:lora_core_{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._keepalive = self.connection()  # a shared in-memory DB lives while one connection does
            self._init_schema(self._keepalive)

    # -- connections ---------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._memory_uri:
                conn = sqlite3.connect(self._memory_uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_connections(self):
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def close(self):
        self._drop_connections()

    def _init_schema(self, conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and row[0] != str(SCHEMA_VERSION):
                # the file index is a cache: rebuild it; user data and stacks are kept
                logger.info("library index schema %s -> %s: the file index will be rebuilt", row[0], SCHEMA_VERSION)
                for table in ("files_fts", "details", "files", "folder_digests", "folder_listings", "sort_orders"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES('files_version', '0')")
            conn.execute("INSERT OR IGNORE INTO meta VALUES('rows_version', '0')")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- transactions --------------------------------------------------------------------------
    def write(self, fn, *args, bump: bool | str = True):
        """Run fn(conn, *args) in one IMMEDIATE transaction. Raises StorageError on failure.

        `bump` advances persistent counters (before fn runs, so fn sees the new values), by which
        cached sort orders and result lists are keyed, in this process and in others:
        True: file rows change ('rows_version' and 'files_version'); "user": only user data
        (favorites, tags, last used) changes ('files_version'); False: nothing a search sees."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StorageError(storage_message(exc)) from None
        try:
            if bump:
                keys = ("files_version", "rows_version") if bump is True else ("files_version",)
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                             f"WHERE key IN ({','.join('?' * len(keys))})", keys)
            result = fn(conn, *args)
            conn.execute("COMMIT")
            self.generation += 1
            return result
        except sqlite3.DatabaseError as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            raise StorageError(storage_message(exc)) from None
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            raise

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    # -- files ---------------------------------------------------------------------------------
    def folder_digests(self, roots: list[str]) -> dict[tuple[str, str], str]:
        marks = ",".join("?" * len(roots))
        rows = self.connection().execute(f"SELECT root, folder, digest FROM folder_digests WHERE root IN ({marks})", roots)
        return {(r[0], r[1]): r[2] for r in rows}

    def known_in_folders(self, folders) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, sidecar_sig, error) of the rows in the given (root, folder)s."""
        cur = self.connection().cursor()
        cur.row_factory = None
        out = {}
        for root, folder in folders:
            for path, size, mtime, sig, error in cur.execute(
                "SELECT path, size, mtime_ns, sidecar_sig, error FROM files WHERE root=? AND folder=?", (root, folder)
            ):
                out[path] = (size, mtime, sig, error)
        return out

    @staticmethod
    def set_folder_digests(conn, digests: dict[tuple[str, str], str | None]) -> None:
        for (root, folder), digest in digests.items():
            if digest is None:
                conn.execute("DELETE FROM folder_digests WHERE root=? AND folder=?", (root, folder))
            else:
                conn.execute("INSERT OR REPLACE INTO folder_digests(root, folder, digest) VALUES(?, ?, ?)",
                             (root, folder, digest))

    @staticmethod
    def _put_details(conn, file_id: int, rec: dict, fresh: bool) -> None:
        values = [rec[c] for c in DETAIL_COLUMNS]
        conn.execute(
            f"INSERT OR REPLACE INTO details(id, {','.join(DETAIL_COLUMNS)}) VALUES(?, ?, ?, ?, ?)", [file_id] + values
        )
        if not fresh:
            conn.execute("DELETE FROM files_fts WHERE rowid=?", (file_id,))
        conn.execute("INSERT INTO files_fts(rowid, text) VALUES(?, ?)", (file_id, rec["search_text"]))

    @staticmethod
    def _ids_of(conn, paths: list[str]) -> dict[str, tuple[int, int, int]]:
        """path -> (id, size, mtime_ns) of the rows that exist, in one query per 900 paths."""
        cur = conn.cursor()
        cur.row_factory = None
        out = {}
        for i in range(0, len(paths), 900):
            chunk = paths[i:i + 900]
            for path, file_id, size, mtime in cur.execute(
                f"SELECT path, id, size, mtime_ns FROM files WHERE path IN ({','.join('?' * len(chunk))})", chunk
            ):
                out[path] = (file_id, size, mtime)
        return out

    @staticmethod
    def upsert_files(conn, records: list[dict]) -> None:
        """Insert or replace file rows; a changed size/mtime drops cached hashes.

        New rows (the bulk of a first scan) go in with one executemany per table and ids handed
        out here (the IMMEDIATE transaction this runs in keeps other writers out)."""
        by_path = {rec["path"]: rec for rec in records}  # one row per path, the last record wins
        existing = IndexDB._ids_of(conn, list(by_path))
        fresh = [rec for path, rec in by_path.items() if path not in existing]
        if fresh:
            cur = conn.cursor()
            cur.row_factory = None
            first = cur.execute(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM files), 0), COALESCE((SELECT MAX(id) FROM details), 0))"
            ).fetchone()[0] + 1
            ids = range(first, first + len(fresh))
            cur.executemany(
                f"INSERT INTO files(id, {','.join(FILE_COLUMNS)}, last_used) "
                f"VALUES(?, {','.join('?' * len(FILE_COLUMNS))}, (SELECT last_used FROM user_data WHERE path=?))",
                [(file_id, *[rec[c] for c in FILE_COLUMNS], rec["path"]) for file_id, rec in zip(ids, fresh)],
            )
            cur.executemany(
                f"INSERT OR REPLACE INTO details(id, {','.join(DETAIL_COLUMNS)}) VALUES(?, ?, ?, ?, ?)",
                [(file_id, *[rec[c] for c in DETAIL_COLUMNS]) for file_id, rec in zip(ids, fresh)],
            )
            cur.executemany("INSERT INTO files_fts(rowid, text) VALUES(?, ?)",
                            [(file_id, rec["search_text"]) for file_id, rec in zip(ids, fresh)])
        sets = ",".join(f"{c}=?" for c in FILE_COLUMNS)
        for path, (file_id, size, mtime) in existing.items():
            rec = by_path[path]
            conn.execute(f"UPDATE files SET {sets} WHERE id=?", [rec[c] for c in FILE_COLUMNS] + [file_id])
            if (size, mtime) != (rec["size"], rec["mtime_ns"]):
                conn.execute(
                    "UPDATE files SET sha256=NULL, addnet=NULL, hashed_size=NULL, hashed_mtime_ns=NULL WHERE id=?",
                    (file_id,),
                )
            IndexDB._put_details(conn, file_id, rec, fresh=False)

    # -- bulk loads ----------------------------------------------------------------------------
    _SECONDARY_INDEXES = ("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='files' "
                          "AND sql IS NOT NULL AND upper(sql) NOT LIKE 'CREATE UNIQUE%'")

    def begin_bulk(self) -> list[str]:
        """Drop the secondary (non-unique) indexes of `files` before inserting many rows: building
        an index once from sorted rows costs a fraction of updating 16 b-trees row by row. Returns
        the statements `end_bulk` runs. Searches stay correct meanwhile (just slower); a process
        that opens the index (or a crash before `end_bulk`) gets them back from the schema."""
        def run(conn):
            rows = conn.execute(self._SECONDARY_INDEXES).fetchall()
            for name, _sql in rows:
                conn.execute(f'DROP INDEX IF EXISTS "{name}"')
            return [sql for _name, sql in rows]
        return self.write(run, bump=False)

    def end_bulk(self, statements: list[str]) -> None:
        """Create the indexes `begin_bulk` dropped (the ones another process has not already)."""
        def run(conn):
            for sql in statements:
                conn.execute(re.sub(r"^\s*CREATE\s+INDEX\s+(?!IF\s+NOT\s+EXISTS)", "CREATE INDEX IF NOT EXISTS ",
                                    sql, count=1, flags=re.IGNORECASE))
        self.write(run, bump=False)

    @staticmethod
    def update_sidecars(conn, records: list[dict]) -> None:
        for rec in records:
            row = conn.execute("SELECT id FROM files WHERE path=?", (rec["path"],)).fetchone()
            if row is None:
                continue
            conn.execute("UPDATE files SET sidecar_sig=?, preview=? WHERE id=?", (rec["sidecar_sig"], rec["preview"], row[0]))
            if "base_model" in rec:  # a new .civitai.info may name the base model
                conn.execute("UPDATE files SET base_model=? WHERE id=?", (rec["base_model"], row[0]))
            IndexDB._put_details(conn, row[0], rec, fresh=False)

    @staticmethod
    def delete_files(conn, paths: list[str]) -> None:
        for path in paths:
            row = conn.execute("SELECT id FROM files WHERE path=?", (path,)).fetchone()
            if row is not None:
                for table in ("files_fts WHERE rowid=?", "details WHERE id=?", "files WHERE id=?"):
                    conn.execute(f"DELETE FROM {table}", (row[0],))

    def set_search_text(self, path: str, text: str) -> None:
        def run(conn):
            row = conn.execute("SELECT id FROM files WHERE path=?", (path,)).fetchone()
            if row is not None:
                conn.execute("UPDATE details SET search_text=? WHERE id=?", (text, row[0]))
                conn.execute("DELETE FROM files_fts WHERE rowid=?", (row[0],))
                conn.execute("INSERT INTO files_fts(rowid, text) VALUES(?, ?)", (row[0], text))
        self.write(run, bump="user")

    def versions(self) -> tuple[int, int]:
        """(files_version, rows_version): persistent change counters (see `write`), shared by
        every process using this index file."""
        rows = dict(self.connection().execute(
            "SELECT key, value FROM meta WHERE key IN ('files_version', 'rows_version')").fetchall())
        return int(rows.get("files_version", 0)), int(rows.get("rows_version", 0))

    # -- quick scans and sort orders ------------------------------------------------------------
    def folder_listings(self, roots: list[str]) -> dict[tuple[str, str], tuple]:
        """(root, folder) -> (path, signature, [(subfolder path, rel)], links)."""
        marks = ",".join("?" * len(roots))
        rows = self.connection().execute(
            f"SELECT root, folder, path, signature, subdirs, links FROM folder_listings WHERE root IN ({marks})", roots)
        out = {}
        for root, folder, path, sig, subdirs, links in rows:
            try:
                subs = [(str(p), str(r)) for p, r in json.loads(subdirs)]
            except (ValueError, TypeError):
                continue  # unreadable row: the folder is listed again
            out[(root, folder)] = (path, sig, subs, bool(links))
        return out

    @staticmethod
    def set_folder_listings(conn, listings: dict[tuple[str, str], tuple | None]) -> None:
        for (root, folder), value in listings.items():
            if value is None:
                conn.execute("DELETE FROM folder_listings WHERE root=? AND folder=?", (root, folder))
            else:
                path, sig, subdirs, links = value
                conn.execute("INSERT OR REPLACE INTO folder_listings VALUES(?, ?, ?, ?, ?, ?)",
                             (root, folder, path, sig, json.dumps(subdirs), 1 if links else 0))

    def file_counts(self, roots: list[str]) -> dict[tuple[str, str], int]:
        marks = ",".join("?" * len(roots))
        rows = self.connection().execute(
            f"SELECT root, folder, COUNT(*) FROM files WHERE root IN ({marks}) GROUP BY root, folder", roots)
        return {(r[0], r[1]): r[2] for r in rows}

    def sort_order(self, key: str, version: int) -> bytes | None:
        row = self.connection().execute("SELECT version, ids FROM sort_orders WHERE key=?", (key,)).fetchone()
        return row[1] if row is not None and row[0] == version else None

    def stored_sort_orders(self) -> dict[str, int]:
        return dict(self.connection().execute("SELECT key, version FROM sort_orders").fetchall())

    def store_sort_order(self, key: str, version: int, counter: str, ids: bytes) -> None:
        """Store a sort order computed at `version` of the meta counter `counter`, unless the index
        changed since (then it is stale already). Raises StorageError."""
        def run(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (counter,)).fetchone()
            if row is not None and int(row[0]) == version:  # nothing changed since it was read
                conn.execute("INSERT OR REPLACE INTO sort_orders(key, version, ids) VALUES(?, ?, ?)",
                             (key, version, ids))
        self.write(run, bump=False)

    def save_folder_state(self, digests: dict, listings: dict) -> None:
        """After a scan: folder digests and listings in one transaction (None values delete)."""
        def run(conn):
            IndexDB.set_folder_digests(conn, digests)
            IndexDB.set_folder_listings(conn, listings)
        self.write(run, bump=False)

    def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version)."""
        return self.connection().execute("PRAGMA data_version").fetchone()[0]

    # -- hashes --------------------------------------------------------------------------------
    def store_hashes(self, path: str, size: int, mtime_ns: int, sha256: str, addnet: str) -> bool:
        def run(conn):
            cur = conn.execute(
                "UPDATE files SET sha256=?, addnet=?, hashed_size=?, hashed_mtime_ns=? "
                "WHERE path=? AND size=? AND mtime_ns=?",
                (sha256, addnet, size, mtime_ns, path, size, mtime_ns),
            )
            return cur.rowcount > 0
        return self.write(run, bump=False)  # hashes change no search result or order

    # -- user data -----------------------------------------------------------------------------
    def set_user_data(self, path: str, **fields) -> None:
        def run(conn):
            conn.execute("INSERT OR IGNORE INTO user_data(path) VALUES(?)", (path,))
            for key, value in fields.items():
                conn.execute(f"UPDATE user_data SET {key}=? WHERE path=?", (value, path))
            if "last_used" in fields:  # copied into files so the last-used sort can use an index
                conn.execute("UPDATE files SET last_used=? WHERE path=?", (fields["last_used"], path))
        self.write(run, bump="user")

    def save_stack(self, name: str, items: list, now: float) -> None:
        self.write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO stacks(name, items, updated) VALUES(?, ?, ?)", (name, json.dumps(items), now)
        ), bump=False)

    def delete_stack(self, name: str) -> bool:
        return self.write(lambda conn: conn.execute("DELETE FROM stacks WHERE name=?", (name,)).rowcount > 0, bump=False)
