"""Keeping the index up to date with the library folders: a scan compares what `scanner.walk` finds
with the index folder by folder and writes only what changed.

Unchanged files (same path, size, mtime) are not opened; changed sidecars alone are re-read
without the LoRA. Files that vanished leave the index; rows under a missing root (unmounted
drive) stay. Never raises for bad files; storage failures end up in the report's problems.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from lora_core.library import inspect_header, queries, scanner
from lora_core.library.entry import Entry, ScanReport
from lora_core.library.errors import StorageError

logger = logging.getLogger(__name__)

WRITE_BATCH = 500
BULK_MIN_ROWS = 2000  # new rows from which a scan rebuilds the file indexes instead of updating them
BULK_WRITE_BATCH = 5000  # rows per transaction then: fewer, larger full-text segments to merge


@dataclass
class _Plan:
    """What a scan writes: files to read, files whose sidecars alone changed, rows to drop, and the
    folder state to save after them."""
    changed: list = field(default_factory=list)
    side_changed: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    known: dict = field(default_factory=dict)
    dirty: set = field(default_factory=set)
    digests: dict = field(default_factory=dict)


class Indexer:
    def __init__(self, db, dirs: list[str], roots: list[str]):
        self.db = db
        self.dirs = dirs
        self.roots = roots

    def scan(self, progress=None, quick: bool = False, after_write=None) -> ScanReport:
        """See Library.scan. after_write(changed: bool) runs once the index is written (the search
        stores its sort orders then)."""
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
        plan = self._plan(walked, skipped, present)
        retry_folders: set = set()
        try:
            new_rows = sum(1 for found in plan.changed if found.path not in plan.known)
            self._write_changed(plan.changed, progress, report, retry_folders, bulk=self._bulk_load(new_rows))
            self._write_sidecar_changes(plan.side_changed, report)
            if plan.removed:
                self.db.write(self.db.delete_files, plan.removed)
                report.removed = len(plan.removed)
            # saved last: a failed write above leaves the folder dirty for the next scan
            new_listings = {
                key: None if key in retry_folders else (v.path, v.signature, v.subdirs, v.links)
                for key, v in walked.listed.items()
            }
            new_listings.update({key: None for key in listings if key not in walked.listed
                                 and key not in skipped and key[0] in present})
            self.db.save_folder_state({
                key: None if key in retry_folders else plan.digests.get(key) for key in plan.dirty
            }, new_listings)
            if after_write is not None:
                after_write(bool(plan.changed or plan.side_changed or plan.removed))
        except StorageError as exc:
            report.problems.append(str(exc))
            logger.error("%s", exc)
        report.errors = queries.count_errors(self.db, self.roots)
        report.seconds = time.perf_counter() - start
        return report

    def _plan(self, walked, skipped: set, present: list[str]) -> _Plan:
        """Only folders whose digest changed are compared file by file (a warm start with nothing
        new reads one digest per folder)."""
        plan = _Plan()
        by_folder = walked.folders()
        plan.digests = {key: scanner.folder_digest(files) for key, files in by_folder.items()}
        stored = self.db.folder_digests(self.roots) if self.roots else {}
        plan.dirty = {key for key, digest in plan.digests.items() if stored.get(key) != digest}
        plan.dirty |= {key for key in stored if key not in plan.digests and key not in skipped and key[0] in present}
        plan.known = known = self.db.known_in_folders(sorted(plan.dirty))
        for key in plan.dirty:
            for found in by_folder.get(key, ()):
                old = known.get(found.path)
                # "cannot read/stat" errors are retried: fixing permissions does not change mtime
                retry = old is not None and old[3] is not None and old[3].startswith("cannot ")
                if old is None or (old[0], old[1]) != (found.size, found.mtime_ns) or found.error or retry:
                    plan.changed.append(found)
                elif old[2] != found.sidecar_sig:
                    plan.side_changed.append(found)
        plan.removed = [p for p in known if p not in walked.files]
        return plan

    def _bulk_load(self, new_rows: int) -> bool:
        """Whether inserting `new_rows` rows is cheaper with the file indexes rebuilt afterwards:
        many rows, and at least half as many as the index holds already."""
        if new_rows < BULK_MIN_ROWS:
            return False
        return new_rows * 2 >= queries.max_file_id(self.db)  # rows ever, roughly

    def _write_changed(self, changed, progress, report: ScanReport, retry_folders: set, bulk: bool = False) -> None:
        indexes = self.db.begin_bulk() if bulk else None
        try:
            self._write_changed_rows(changed, progress, report, retry_folders,
                                     BULK_WRITE_BATCH if bulk else WRITE_BATCH)
        finally:
            if indexes is not None:
                self.db.end_bulk(indexes)

    def index_found(self, found) -> ScanReport:
        """Write the row of one file a walk described (scanner.Found) exactly as a scan would,
        without walking any folder (a finished download)."""
        report = ScanReport()
        self._write_changed_rows([found], None, report, set(), 1)
        return report

    def _write_changed_rows(self, changed, progress, report: ScanReport, retry_folders: set,
                            batch_size: int) -> None:
        tags = queries.user_tags(self.db, [f.path for f in changed]) if changed else {}
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
        tags = queries.user_tags(self.db, [f.path for f in side_changed])
        batch = []
        for found in side_changed:
            summary = queries.stored_summary(self.db, found.path)
            side = scanner.read_sidecars(found)
            batch.append(scanner.record(found, summary, None, side, tags.get(found.path, "")))
            report.sidecars += 1
            if len(batch) >= WRITE_BATCH:
                self.db.write(self.db.update_sidecars, batch)
                batch = []
        if batch:
            self.db.write(self.db.update_sidecars, batch)

    def reread_sidecars(self, entry: Entry) -> None:
        """Re-read one indexed file's sidecars into the index (after the UI or Civitai code wrote them)."""
        sig, preview = scanner.folder_signature(entry.path, self.roots)
        found = scanner.Found(entry.path, entry.root, entry.rel_name, entry.folder, entry.name, entry.ext,
                              entry.size, int(round(entry.mtime * 1e9)), sig, preview)
        side = scanner.read_sidecars(found)
        rec = scanner.record(found, entry.summary, None, side, " ".join(entry.user_tags))
        self.db.write(self.db.update_sidecars, [rec])
