"""The reads of the library index behind entries, names, hashes, user data and search, by name.

The schema, the writes and the reads of scan state (folder digests and listings, stored sort
orders, change counters) are in index_db.py; no other module holds SQL. A search's row filter is a `Filter`: this
library's roots plus the clauses the search options add, kept apart so the clauses alone can be run
against the cached order of the roots (no SQL is recovered from a longer string).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from lora_core.library.entry import Entry

# ORDER BY of each sort; every order ends in name, folder/name so pages never overlap
SORTS = {
    "name": "f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "date": "f.mtime_ns DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "size": "f.size DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",
    "last_used": "f.last_used DESC, f.stem COLLATE NOCASE, f.rel COLLATE NOCASE",   # never used (NULL) last
}
CHUNK = 900  # bound parameters per IN (...) list, under SQLite's limit

ENTRY_SELECT = ("SELECT f.*, d.summary, d.user_meta, d.civitai, "
                "u.favorite AS u_favorite, u.tags AS u_tags, u.last_used AS u_last_used "
                "FROM files f JOIN details d ON d.id = f.id LEFT JOIN user_data u ON u.path = f.path")


def loads(text, default):
    """A JSON column's value; `default` when empty or unreadable."""
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _ids(db, sql: str, params=()) -> list[int]:
    cur = db.connection().cursor()
    cur.row_factory = None  # plain tuples: this may read every row
    return [r[0] for r in cur.execute(sql, params)]


# -- rows -> entries ---------------------------------------------------------------------------
def entry_from_row(row) -> Entry:
    keys = row.keys()
    hashed = (row["sha256"] is not None
              and (row["hashed_size"], row["hashed_mtime_ns"]) == (row["size"], row["mtime_ns"]))
    tags = row["u_tags"] if "u_tags" in keys and row["u_tags"] else ""
    return Entry(
        path=row["path"], name=row["stem"], rel_name=row["rel"], folder=row["folder"], root=row["root"],
        ext=row["ext"], size=row["size"], mtime=row["mtime_ns"] / 1e9, alias=row["alias"],
        family=row["family"], algorithm=row["algorithm"], summary=loads(row["summary"], {}),
        user_metadata=loads(row["user_meta"], {}), civitai=loads(row["civitai"], None),
        preview=row["preview"], sha256=row["sha256"] if hashed else None,
        addnet_sha256=row["addnet"] if hashed else None, error=row["error"],
        favorite=bool(row["u_favorite"]) if "u_favorite" in keys else False,
        user_tags=tuple(t for t in tags.split(",") if t),
        last_used=row["u_last_used"] if "u_last_used" in keys else None,
        base_model=row["base_model"] if "base_model" in keys else "",
    )


def _entry_rows(db, roots, where: str, params=()) -> list:
    if not roots:
        return []
    return db.query(f"{ENTRY_SELECT} WHERE +f.root IN ({_marks(len(roots))}) AND ({where})",
                    list(roots) + list(params))


def all_rows(db, roots) -> list:
    return _entry_rows(db, roots, "1")


def rows_by_path(db, roots, path: str) -> list:
    return _entry_rows(db, roots, "f.path = ?", (path,))


def rows_by_ids(db, ids: list[int]) -> list:
    return db.query(f"{ENTRY_SELECT} WHERE f.id IN ({_marks(len(ids))})", ids) if ids else []


def rows_by_hash_prefix(db, roots, prefix: str) -> list:
    """Rows whose sha256 or addnet hash starts with `prefix` (lower-case hex), as an index range."""
    upper = prefix + "g"  # 'g' sorts after every hex digit: [prefix, upper) is the prefix range
    return _entry_rows(db, roots, "(f.sha256 >= ? AND f.sha256 < ?) OR (f.addnet >= ? AND f.addnet < ?)",
                       (prefix, upper, prefix, upper))


def rows_by_civitai_version(db, roots, version_id: int) -> list:
    """Rows whose `.civitai.info` is of this Civitai model version (a scan of the details rows)."""
    return _entry_rows(db, roots, "json_extract(d.civitai, '$.id') = ?", (int(version_id),))


def rows_with_civitai_model(db, roots, model_ids=None) -> list:
    """Rows whose `.civitai.info` names a model id (any, or one of `model_ids`)."""
    if model_ids is None:
        return _entry_rows(db, roots, "d.civitai IS NOT NULL AND json_extract(d.civitai, '$.modelId') IS NOT NULL")
    ids = [int(m) for m in model_ids][:5000]
    if not ids:
        return []
    return _entry_rows(db, roots, f"d.civitai IS NOT NULL AND json_extract(d.civitai, '$.modelId') IN ({_marks(len(ids))})",
                       ids)


def duplicate_sha256(db, roots) -> list[str]:
    """The sha256 hashes (of the files' current size and mtime) that more than one row holds."""
    if not roots:
        return []
    return [r[0] for r in db.query(
        f"SELECT sha256 FROM files WHERE root IN ({_marks(len(roots))}) AND sha256 IS NOT NULL "
        "AND hashed_size = size AND hashed_mtime_ns = mtime_ns AND error IS NULL "
        "GROUP BY sha256 HAVING COUNT(*) > 1 ORDER BY sha256", list(roots))]


def rows_by_sha256(db, roots, sha256: str) -> list:
    return _entry_rows(db, roots, "f.sha256 = ?", (sha256,))


def paths_needing_hashes(db, roots) -> list[str]:
    """Readable files without a hash of their current size and mtime."""
    rows = _entry_rows(db, roots, "f.error IS NULL AND (f.sha256 IS NULL OR f.hashed_size IS NOT f.size "
                                  "OR f.hashed_mtime_ns IS NOT f.mtime_ns)")
    return [r["path"] for r in rows]


# -- names ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NameLevel:
    """One step of name resolution: a condition on files f, and whether it is the case-insensitive
    folder-path suffix match (whose case-exact hits are preferred)."""
    where: str
    params: tuple
    suffix: bool = False


def name_levels(text: str) -> list[NameLevel]:
    """The steps `find` tries for a cleaned name, in order (see library.py's module doc)."""
    if text.startswith("./"):  # "./name": the file directly in a library folder
        return [NameLevel("f.rel = ?", (text[2:],)), NameLevel("f.rel = ? COLLATE NOCASE", (text[2:],))]
    if "/" in text:
        return [NameLevel("f.rel = ?", (text,)), NameLevel("f.rel = ? COLLATE NOCASE", (text,)),
                NameLevel("f.rel LIKE ? ESCAPE '\\'", ("%/" + like_escape(text),), suffix=True)]
    return [NameLevel("f.stem = ?", (text,)), NameLevel("f.alias = ?", (text,)),
            NameLevel("f.stem = ? COLLATE NOCASE", (text,)), NameLevel("f.alias = ? COLLATE NOCASE", (text,))]


def rows_at_level(db, roots, level: NameLevel) -> list:
    return _entry_rows(db, roots, level.where, level.params)


def names(db, roots) -> list[tuple[str, str | None, str]]:
    """(stem, alias, folder/name) of every file."""
    if not roots:
        return []
    return db.query(f"SELECT stem, alias, rel FROM files WHERE root IN ({_marks(len(roots))})", list(roots))


# -- counts --------------------------------------------------------------------------------------
def count_files(db, roots) -> int:
    if not roots:
        return 0
    return db.query(f"SELECT COUNT(*) FROM files WHERE root IN ({_marks(len(roots))})", list(roots))[0][0]


def count_errors(db, roots) -> int:
    if not roots:
        return 0
    return db.query(f"SELECT COUNT(*) FROM files WHERE root IN ({_marks(len(roots))}) AND error IS NOT NULL",
                    list(roots))[0][0]


def folder_counts(db, roots) -> list[tuple[str, int]]:
    """(folder, files directly in it)."""
    if not roots:
        return []
    return db.query(f"SELECT folder, COUNT(*) FROM files WHERE root IN ({_marks(len(roots))}) GROUP BY folder",
                    list(roots))


def max_file_id(db) -> int:
    """The highest row id handed out (about how many rows the index ever held)."""
    return db.query("SELECT COALESCE(MAX(id), 0) FROM files")[0][0]


# -- one file's stored data ------------------------------------------------------------------------
def stored_summary(db, path: str) -> dict:
    row = db.query("SELECT d.summary FROM files f JOIN details d ON d.id = f.id WHERE f.path=?", (path,))
    return loads(row[0]["summary"], {}) if row else {}


def stored_search_text(db, path: str) -> str | None:
    row = db.query("SELECT d.search_text FROM files f JOIN details d ON d.id = f.id WHERE f.path=?", (path,))
    return row[0][0] if row else None


def hash_state(db, path: str) -> tuple[int, int, bool] | None:
    """(size, mtime_ns, whether the stored hashes are of that size and mtime), None if not indexed."""
    rows = db.query("SELECT size, mtime_ns, sha256, hashed_size, hashed_mtime_ns FROM files WHERE path=?", (path,))
    if not rows:
        return None
    r = rows[0]
    has = r["sha256"] is not None and (r["hashed_size"], r["hashed_mtime_ns"]) == (r["size"], r["mtime_ns"])
    return r["size"], r["mtime_ns"], has


# -- user data ------------------------------------------------------------------------------------
def user_tags(db, paths: list[str]) -> dict[str, str]:
    """path -> stored user tags ("a,b") of the paths that have user data."""
    out = {}
    for i in range(0, len(paths), CHUNK):
        chunk = paths[i:i + CHUNK]
        rows = db.query(f"SELECT path, tags FROM user_data WHERE path IN ({_marks(len(chunk))})", chunk)
        out.update({r[0]: r[1] for r in rows})
    return out


def stacks(db) -> dict[str, list[tuple[str, float]]]:
    return {row["name"]: [tuple(x) for x in loads(row["items"], [])]
            for row in db.query("SELECT name, items FROM stacks ORDER BY name")}


# -- search ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    """The rows a search looks at: files under `roots` that meet every one of `clauses` (SQL
    conditions on files f, with `params`). No clauses: the whole library (its "base" order)."""
    roots: tuple[str, ...]
    clauses: tuple[str, ...] = ()
    params: tuple = ()

    @property
    def is_base(self) -> bool:
        return not self.clauses

    @property
    def key(self) -> tuple:
        return self.clauses, self.params

    def where(self) -> tuple[str, list]:
        # `+f.root` keeps SQLite from picking the root index, so the sort index drives the scan
        # and LIMIT stops early instead of sorting every row.
        base = f"+f.root IN ({_marks(len(self.roots)) or 'NULL'})"
        return " AND ".join((base,) + self.clauses), list(self.roots) + list(self.params)

    def also(self, clause: str, *params) -> "Filter":
        return Filter(self.roots, self.clauses + (clause,), self.params + params)


def search_filter(roots, short_terms=(), family: str | None = None, folder: str | None = None,
                  favorites_only: bool = False, with_problems: bool = False, problems_only: bool = False) -> Filter:
    """The Filter of a search's options (short_terms: words matched in folder/name and alias only)."""
    flt = Filter(tuple(roots))
    for t in short_terms:  # indexed, cheap
        like = "%" + like_escape(t) + "%"
        flt = flt.also("(f.rel LIKE ? ESCAPE '\\' OR f.alias LIKE ? ESCAPE '\\')", like, like)
    base = base_model_labels(family)
    if base is not None:  # "base:pony,sdxl": the base-model labels (base_models.py), not a key family
        family = None
        clause = f"f.base_model IN ({_marks(len(base))})"
        flt = flt.also(f"({clause} OR f.error IS NOT NULL)" if with_problems and not problems_only else clause, *base)
    if problems_only:
        flt = flt.also("f.error IS NOT NULL")
    elif family and with_problems:
        flt = flt.also("(f.family = ? OR f.error IS NOT NULL)", family)
    elif family:
        flt = flt.also("f.family = ?", family)
    if folder:
        folder = folder.strip("/")
        # subfolders as an index range: "a/" <= folder < "a0" ('0' follows '/')
        flt = flt.also("(f.folder = ? OR (f.folder >= ? AND f.folder < ?))", folder, folder + "/", folder + "0")
    if favorites_only:
        flt = flt.also("f.id IN (SELECT g.id FROM user_data u JOIN files g ON g.path = u.path WHERE u.favorite = 1)")
    return flt


BASE_PREFIX = "base:"


def base_model_labels(family: str | None) -> tuple[str, ...] | None:
    """The labels of a family filter spelled "base:a,b" (None for a plain family)."""
    if not family or not family.startswith(BASE_PREFIX):
        return None
    return tuple(dict.fromkeys(t.strip() for t in family[len(BASE_PREFIX):].split(",") if t.strip()))[:20] or ("",)


def count_matching(db, flt: Filter) -> int:
    where, params = flt.where()
    return db.query(f"SELECT COUNT(*) FROM files f WHERE {where}", params)[0][0]


def first_ids(db, flt: Filter, sort: str, limit: int) -> list[int]:
    """The first `limit` ids of `flt` in `sort` order (SQL stops after them)."""
    where, params = flt.where()
    return [r[0] for r in db.query(f"SELECT f.id FROM files f WHERE {where} ORDER BY {SORTS[sort]} LIMIT ?",
                                   params + [limit])]


def ids_in_order(db, flt: Filter, sort: str) -> list[int]:
    where, params = flt.where()
    return _ids(db, f"SELECT f.id FROM files f WHERE {where} ORDER BY {SORTS[sort]}", params)


def used_ids_in_order(db, flt: Filter) -> list[int]:
    """Ids of the rows of `flt` ever marked used, most recent first."""
    return ids_in_order(db, flt.also("f.last_used IS NOT NULL"), "last_used")


def clause_members(db, flt: Filter) -> set[int]:
    """Ids meeting the clauses of `flt` alone: the caller intersects them with an order of the roots,
    and without `+f.root` a clause's index answers by itself."""
    return set(_ids(db, f"SELECT f.id FROM files f WHERE {' AND '.join(flt.clauses)}", flt.params))


def fts_match(terms) -> str:
    """The full-text MATCH expression for terms that must all appear (each a quoted phrase)."""
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in terms)


def fts_ids(db, match: str) -> set[int]:
    return set(_ids(db, "SELECT rowid FROM files_fts WHERE files_fts MATCH ?", (match,)))


def fts_ids_in_order(db, flt: Filter, match: str, sort: str) -> list[int]:
    """Ids of `flt` matching `match`, sorted by SQL (for a few matches)."""
    return ids_in_order(db, flt.also("f.id IN (SELECT rowid FROM files_fts WHERE files_fts MATCH ?)", match), sort)


def ids_containing(db, ids: set[int], words: list[str]) -> set[int]:
    """The ids among `ids` whose search text contains every one of `words` (any case)."""
    likes = " AND ".join("d.search_text LIKE ? ESCAPE '\\'" for _ in words)
    like_args = ["%" + like_escape(w) + "%" for w in words]
    ordered, out = sorted(ids), set()
    for start in range(0, len(ordered), 500):
        chunk = ordered[start:start + 500]
        out.update(_ids(db, f"SELECT d.id FROM details d WHERE d.id IN ({_marks(len(chunk))}) AND {likes}",
                        chunk + like_args))
    return out


def ids_by_path(db, anywhere: str | None, whole_roots: list[str], root_tails: list[tuple[str, str]]) -> set[int]:
    """Ids whose folder/name + extension contains `anywhere`, that lie under one of `whole_roots`,
    or that lie under `root` with folder/name + extension starting with `tail` (root_tails)."""
    conds, args = [], []
    if anywhere is not None:
        conds.append("(f.rel || f.ext) LIKE ? ESCAPE '\\'")
        args.append("%" + like_escape(anywhere) + "%")
    for root in whole_roots:
        conds.append("f.root = ?")
        args.append(root)
    for root, tail in root_tails:
        conds.append("(f.root = ? AND (f.rel || f.ext) LIKE ? ESCAPE '\\')")
        args += [root, like_escape(tail) + "%"]
    if not conds:
        return set()
    return set(_ids(db, f"SELECT f.id FROM files f WHERE {' OR '.join(conds)}", args))
