"""Search of the library index: matching ids in sort order, with the caches that make every page cost
about the same.

The matching ids in sort order are computed once per (query, filters, sort) and index version and
kept; the unfiltered order of each sort is also stored in the index (`sort_orders`), so a new
process has it at once; a page is a slice. Three caches, all keyed by the index's change counters:
sort orders per filter, result ids per text query, and full-text id sets per MATCH expression.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from array import array

from lora_core.library import queries
from lora_core.library.errors import StorageError

logger = logging.getLogger(__name__)

SMALL_MATCH = 5000   # text matches up to this many are sorted by SQL; more use the cached order
CACHED_ORDERS = 8    # id lists kept per kind (sort orders, text results)
CACHED_MATCHES = 4   # FTS id sets kept (up to every row each)

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


class Search:
    """Searches of one library (its folders `dirs`, resolved to `roots`) over the index `db`."""

    def __init__(self, db, dirs: list[str], roots: list[str]):
        self.db = db
        self.dirs = dirs
        self.roots = roots
        self._base = queries.Filter(tuple(roots))
        self._order_cache: dict = {}  # (filter, sort) -> (index version, ordered ids)
        self._hits_cache: dict = {}   # (filter, sort, words) -> (index version, ordered ids)
        self._match_cache: dict = {}  # FTS match expression -> (index version, set of ids)
        self._lock = threading.Lock()

    def clear_caches(self) -> None:
        """Forget the id lists kept in memory (the orders stored in the index stay)."""
        with self._lock:
            self._order_cache.clear()
            self._hits_cache.clear()
            self._match_cache.clear()

    def page_ids(self, query: str, page: int, page_size: int, sort: str, family: str | None = None,
                 folder: str | None = None, favorites_only: bool = False, with_problems: bool = False,
                 problems_only: bool = False) -> tuple[int, list[int]]:
        """(total matches, ids of page `page`); see Library.search for what matches."""
        terms = search_terms(query)
        paths = [t for t in terms if "/" in t]
        long_terms = [t for t in terms if len(t) >= 3 and "/" not in t]
        short_terms = [t for t in terms if len(t) < 3 and "/" not in t]
        alone = not long_terms and not paths  # short words alone: folder/name and alias only
        flt = queries.search_filter(self.roots, short_terms if alone else (), family, folder, favorites_only,
                                    with_problems, problems_only)
        if alone:
            short_terms = []
        offset = page * page_size
        versions = self.db.versions()
        if paths or short_terms:
            hits = self._mixed_hits(flt, sort, long_terms, short_terms, paths, versions)
        elif not long_terms:
            hits = self._ordered_ids(flt, sort, versions, compute=page > 0 or bool(terms))
            if hits is None:  # first page, nothing cached: SQL stops after one page
                return queries.count_matching(self.db, flt), queries.first_ids(self.db, flt, sort, page_size)
        else:
            hits = self._text_hits(flt, sort, long_terms, versions)
        return len(hits), list(hits[offset:offset + page_size])

    # -- text ----------------------------------------------------------------------------------------
    def _text_hits(self, flt: queries.Filter, sort: str, long_terms: list[str], versions: tuple[int, int]):
        """Ids matching the text terms (FTS trigram index) and `flt`, in sort order; cached."""
        version = versions[0]
        key = (flt.key, sort, tuple(long_terms))
        cached = self._hits_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        match = queries.fts_match(long_terms)
        cached = self._match_cache.get(match)  # the same words in another sort or filter: no FTS query
        if cached is not None and cached[0] == version:
            matched = cached[1]
        else:
            matched = queries.fts_ids(self.db, match)
            self._remember(self._match_cache, match, (version, matched), CACHED_MATCHES)
        if not matched:
            hits = array("q")
        else:
            ordered = self._ordered_ids(flt, sort, versions, compute=False)
            if ordered is None and len(matched) <= SMALL_MATCH:
                # few matches and no order at hand: let SQL sort just those
                hits = array("q", queries.fts_ids_in_order(self.db, flt, match, sort))
            else:
                if ordered is None:
                    ordered = self._ordered_ids(flt, sort, versions)
                hits = array("q", [i for i in ordered if i in matched])
        self._remember(self._hits_cache, key, (version, hits))
        return hits

    def _mixed_hits(self, flt: queries.Filter, sort: str, long_terms: list[str], short_terms: list[str],
                    paths: list[str], versions: tuple[int, int]):
        """Like `_text_hits`, for queries with paths or with short words beside long ones: the
        long words through the FTS index, each path through it and the library folders' own
        paths, then the short words as substrings of those entries' search text."""
        version = versions[0]
        key = (flt.key, sort, tuple(long_terms), tuple(short_terms), tuple(paths))
        cached = self._hits_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        matched = None
        if long_terms:
            matched = queries.fts_ids(self.db, queries.fts_match(long_terms))
        for p in paths:
            if matched is not None and not matched:
                break
            found = self._path_ids(p)
            matched = found if matched is None else matched & found
        if matched and short_terms:
            matched = queries.ids_containing(self.db, matched, short_terms)
        hits = array("q")
        if matched:
            hits = array("q", [i for i in self._ordered_ids(flt, sort, versions) if i in matched])
        self._remember(self._hits_cache, key, (version, hits))
        return hits

    def _path_ids(self, term: str) -> set[int]:
        """Ids whose path contains `term` ("/"-separated, lower case): in folder/name (the FTS
        index), or reaching back into a library folder's own path ("models/lora/chars/al" is the
        root ".../models/Lora" then folder/name "chars/al...")."""
        ids = queries.fts_ids(self.db, queries.fts_match([term])) if len(term) >= 3 else set()
        whole_roots, root_tails = [], []
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
                whole_roots.append(root)
                continue
            for i in range(1, len(term)):
                if term[i - 1] == "/" and full.endswith(term[:i]):
                    root_tails.append((root, term[i:]))
        return ids | queries.ids_by_path(self.db, term if len(term) < 3 else None, whole_roots, root_tails)

    def _remember(self, cache: dict, key, value, limit: int = CACHED_ORDERS) -> None:
        with self._lock:  # UI handlers search from several threads
            cache.pop(key, None)
            if len(cache) >= limit:  # a handful of sort/filter/query combinations is all a UI uses
                cache.pop(next(iter(cache)))
            cache[key] = value

    # -- sort orders ---------------------------------------------------------------------------------
    def _order_key(self, sort: str) -> str:
        return sort + "\n" + "\n".join(self.roots)

    @staticmethod
    def _base_version(sort: str, versions: tuple[int, int]) -> int:
        # user data (favorites, tags, last used) changes only the last-used order
        return versions[0] if sort == "last_used" else versions[1]

    def _ordered_ids(self, flt: queries.Filter, sort: str, versions: tuple[int, int], compute: bool = True):
        """Ids of the filtered rows in sort order (an array), cached per index version. The
        unfiltered order of a sort is also stored in the index; a filtered order is that order
        with the non-matching ids dropped (cheaper than an ORDER BY that looks up every row).
        None when not at hand and not `compute`."""
        version = self._base_version(sort, versions) if flt.is_base else versions[0]
        key = (flt.key, sort)
        cached = self._order_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        if flt.is_base:
            ordered = self._base_order(sort, version, versions, compute)
            if ordered is None:
                return None
        else:
            order = self._ordered_ids(self._base, sort, versions, compute)
            if order is None:
                return None
            # the base order already holds only this library's roots: the clauses alone decide
            members = queries.clause_members(self.db, flt)
            ordered = array("q", [i for i in order if i in members])
        self._remember(self._order_cache, key, (version, ordered))
        return ordered

    def _base_order(self, sort: str, version: int, versions: tuple[int, int], compute: bool):
        """The whole library in sort order: stored in the index, else computed (and stored)."""
        blob = self.db.sort_order(self._order_key(sort), version)
        if blob is not None:
            ordered = array("q")
            ordered.frombytes(blob)
            return ordered
        if not compute:
            return None
        if sort == "last_used":
            # used rows by time, then the never-used ones in name order (the same order SQL
            # gives them): marking a LoRA used re-reads a few hundred rows, not every row
            name = self._ordered_ids(self._base, "name", versions)
            used = queries.used_ids_in_order(self.db, self._base)
            used_set = set(used)
            ordered = array("q", used)
            ordered.extend(i for i in name if i not in used_set)
            self._store_order(sort, version, "files_version", ordered)
        else:
            ordered = array("q", queries.ids_in_order(self.db, self._base, sort))
            self._store_order(sort, version, "rows_version", ordered)
        return ordered

    def _store_order(self, sort: str, version: int, counter: str, ordered) -> None:
        try:
            self.db.store_sort_order(self._order_key(sort), version, counter, ordered.tobytes())
        except StorageError as exc:  # only a cache: searching goes on without it
            logger.debug("sort order not stored: %s", exc)

    def refresh_sort_orders(self, changed: bool) -> None:
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
                self._ordered_ids(self._base, sort, versions)
