"""The same LoRA file in several places: find the copies (same SHA256) and keep one.

    find_duplicates(library) -> DuplicateReport(groups, unhashed)
    keep_one(library, keep_path) -> TrashResult     # the other copies go to <their root>/.trash/
    undo(library, batch_id) -> TrashResult          # puts them back where they were
    trash_batches(library) -> [batch dicts]         # what can be undone, newest first

Nothing is ever deleted. A trashed LoRA keeps its bytes and its sidecars (user metadata, Civitai
info, previews move with it) under `<root>/.trash/<its folder>/`, the LoRA file itself renamed to
`<name>.<ext>.trashed` so that no LoRA scanner (ours, A1111's built-in) lists it again. Names that
are taken get " (2)", " (3)", ... The moves of one "keep one" are a batch recorded in
`<root>/.trash/lora_core_trash.json` (written atomically), which `undo` reads back.

Before moving, each copy is checked again (still the size and mtime that were hashed; the file to
keep still exists), so a file changed since the hash is never trashed as a duplicate of another.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lora_core.library import atomic, queries

logger = logging.getLogger(__name__)

TRASH_DIR = ".trash"
TRASH_SUFFIX = ".trashed"
MANIFEST = "lora_core_trash.json"
MAX_BATCHES = 500
_SIDECAR_SUFFIXES = (".json", ".civitai.info", ".png", ".preview.png", ".jpg", ".preview.jpg", ".jpeg",
                     ".preview.jpeg", ".webp", ".preview.webp", ".gif", ".preview.gif", ".txt")


@dataclass
class DuplicateGroup:
    sha256: str
    size: int
    entries: list = field(default_factory=list)   # library Entries, sorted by path


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup] = field(default_factory=list)
    unhashed: int = 0          # files without a current hash: they may hide more duplicates


@dataclass
class TrashResult:
    ok: bool
    message: str
    batch_id: str = ""
    moved: list[tuple[str, str]] = field(default_factory=list)   # (from, to), LoRA files and sidecars


def find_duplicates(library: Any) -> DuplicateReport:
    db, roots = library.db, library.roots
    report = DuplicateReport(unhashed=len(queries.paths_needing_hashes(db, roots)))
    for sha in queries.duplicate_sha256(db, roots):
        entries = sorted((queries.entry_from_row(r) for r in queries.rows_by_sha256(db, roots, sha)),
                         key=lambda e: e.path)
        entries = [e for e in entries if e.sha256 == sha]
        if len(entries) > 1:
            report.groups.append(DuplicateGroup(sha, entries[0].size, entries))
    return report


def keep_one(library: Any, keep_path: str) -> TrashResult:
    """Move every other copy of `keep_path`'s file to the trash. The index is updated (quick scan)."""
    try:
        keep = library.entry(keep_path)
    except LookupError as exc:
        return TrashResult(False, f"{keep_path}: {exc}")
    if not keep.sha256:
        return TrashResult(False, f"{keep.path}: not hashed yet; try again when hashing is done")
    if not os.path.isfile(keep.path):
        return TrashResult(False, f"{keep.path}: the file to keep is gone; rescan first")
    others = [queries.entry_from_row(r) for r in queries.rows_by_sha256(library.db, library.roots, keep.sha256)]
    others = [e for e in others if e.path != keep.path and e.sha256 == keep.sha256]
    if not others:
        return TrashResult(False, f"{keep.path}: no other copy in the library")
    batch = {"id": uuid.uuid4().hex[:12], "time": time.time(), "kept": keep.path, "moves": []}
    problems = []
    for other in others:
        problem = _unchanged(other)
        if problem:
            problems.append(problem)
            continue
        try:
            moves = _trash_with_sidecars(other)
            batch["moves"].extend(moves)
            # the hashes travel with the file: undo gives them back without hashing it again
            batch.setdefault("hashes", {})[moves[0][0]] = [other.sha256, other.addnet_sha256, other.size,
                                                          _mtime_ns(other.path, moves[0][1])]
        except OSError as exc:
            problems.append(f"{other.path}: could not move to the trash ({exc.strerror or exc})")
    moved = [tuple(m) for m in batch["moves"]]
    if moved:
        try:
            _record_batch(batch)
        except Exception as exc:  # noqa: BLE001 - the files are safe in the trash; say undo is manual
            logger.error("could not record the trash batch: %s", exc)
            problems.append(f"moved, but the undo record could not be written ({exc})")
        _rescan(library)
    files = sum(1 for _src, dst in moved if dst.endswith(TRASH_SUFFIX))
    message = f"Kept {keep.path}; moved {files} other cop{'y' if files == 1 else 'ies'} to the trash."
    if problems:
        message += " " + " ".join(problems)
    return TrashResult(bool(files), message, batch["id"] if moved else "", moved)


def undo(library: Any, batch_id: str) -> TrashResult:
    """Move a batch's files back to where they were (never over a file that is there now)."""
    for root in library.roots:
        manifest = _manifest_path(root)
        batches = _read_manifest(manifest)
        batch = next((b for b in batches if b.get("id") == batch_id), None)
        if batch is None:
            continue
        back, problems, left = [], [], []
        for src, dst in reversed(batch.get("moves", [])):
            if not _in_library(library, src) or not _in_trash(library, dst):
                problems.append(f"{src}: not a path of this library's trash, skipped")
                continue
            if os.path.lexists(src):
                problems.append(f"{src}: a file is there now; left in the trash as {dst}")
                left.append([src, dst])
                continue
            try:
                _move(dst, src)
                back.append((dst, src))
            except OSError as exc:
                problems.append(f"{dst}: could not move back ({exc.strerror or exc})")
                left.append([src, dst])
        if left:
            batch["moves"] = list(reversed(left))
        else:
            batches = [b for b in batches if b.get("id") != batch_id]
        atomic.atomic_write(manifest, json.dumps(batches, indent=1).encode("utf-8"))
        _rescan(library)
        _restore_hashes(library, batch.get("hashes"), [src for _dst, src in back])
        message = f"Restored {len(back)} file(s)." + (" " + " ".join(problems) if problems else "")
        return TrashResult(bool(back) and not problems, message, batch_id, back)
    return TrashResult(False, f"no trash batch {batch_id!r} (already undone?)")


def trash_batches(library: Any) -> list[dict]:
    out = []
    for root in library.roots:
        out.extend(_read_manifest(_manifest_path(root)))
    return sorted(out, key=lambda b: -float(b.get("time") or 0))


# -- helpers ------------------------------------------------------------------------------------------
def _mtime_ns(_old: str, moved_to: str) -> int:
    try:
        return os.stat(moved_to).st_mtime_ns
    except OSError:
        return -1


def _restore_hashes(library: Any, hashes, restored: list[str]) -> None:
    """Store the recorded hashes of restored files that are still the bytes that were trashed
    (same size and mtime as when they were moved; a rename keeps both)."""
    if not isinstance(hashes, dict):
        return
    for path in restored:
        known = hashes.get(path)
        if not isinstance(known, list) or len(known) != 4 or not all(isinstance(x, str) for x in known[:2]):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (known[2], known[3]):
            try:
                library.db.store_hashes(path, st.st_size, st.st_mtime_ns, known[0], known[1])
            except Exception:  # noqa: BLE001 - the hasher computes them again
                logger.debug("hashes of %s not restored", path, exc_info=True)

def _unchanged(entry) -> str:
    """'' when the file is still the one that was hashed, else why it is skipped."""
    try:
        st = os.stat(entry.path)
    except OSError as exc:
        return f"{entry.path}: {exc.strerror or exc}; skipped"
    if st.st_size != entry.size or abs(st.st_mtime - entry.mtime) > 1e-6:
        return f"{entry.path}: changed since it was hashed; skipped (rescan to compare again)"
    return ""


def _trash_with_sidecars(entry) -> list[list[str]]:
    folder = os.path.dirname(entry.path)
    stem = os.path.basename(entry.path)[: -len(entry.ext)] if entry.ext else os.path.basename(entry.path)
    rel_folder = entry.folder.replace("/", os.sep) if entry.folder else ""
    target_dir = os.path.join(entry.root, TRASH_DIR, rel_folder)
    os.makedirs(target_dir, exist_ok=True)
    new_stem = _free_stem(target_dir, stem, entry.ext)
    moves = []
    dst = os.path.join(target_dir, new_stem + entry.ext + TRASH_SUFFIX)
    _move(entry.path, dst)
    moves.append([entry.path, dst])
    for suffix in _SIDECAR_SUFFIXES:
        side = os.path.join(folder, stem + suffix)
        if os.path.isfile(side) and not os.path.islink(side):
            side_dst = os.path.join(target_dir, new_stem + suffix)
            try:
                _move(side, side_dst)
                moves.append([side, side_dst])
            except OSError as exc:  # the LoRA is in the trash already; a sidecar left behind is harmless
                logger.warning("could not move %s to the trash: %s", side, exc)
    return moves


def _free_stem(target_dir: str, stem: str, ext: str) -> str:
    """`stem`, or `stem (2)`, `stem (3)`, ... so that neither the LoRA nor a sidecar name is taken."""
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem} ({n})"
        names = [candidate + ext + TRASH_SUFFIX] + [candidate + s for s in _SIDECAR_SUFFIXES]
        if not any(os.path.lexists(os.path.join(target_dir, name)) for name in names):
            return candidate
        n += 1


def _move(src: str, dst: str) -> None:
    """Rename without replacing; across file systems copy to a temporary name, rename, then delete
    the source (never a half file under the final name)."""
    if os.path.lexists(dst):
        raise FileExistsError(17, "destination exists", dst)
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system (a linked folder)
            raise
    tmp = dst + ".partial"
    shutil.copy2(src, tmp)
    os.rename(tmp, dst)
    os.unlink(src)


def _manifest_path(root: str) -> str:
    return os.path.join(root, TRASH_DIR, MANIFEST)


def _read_manifest(path: str) -> list[dict]:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(16 * 1024 * 1024))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        logger.warning("unreadable trash record %s: %s", path, exc)
        return []
    return [b for b in data if isinstance(b, dict) and isinstance(b.get("moves"), list)] if isinstance(data, list) else []


def _record_batch(batch: dict) -> None:
    """Append the batch to the manifest of the root its first move came from."""
    root = _root_of_trash(batch["moves"][0][1])
    path = _manifest_path(root)
    batches = _read_manifest(path)
    batches.append(batch)
    atomic.atomic_write(path, json.dumps(batches[-MAX_BATCHES:], indent=1).encode("utf-8"))


def _root_of_trash(trashed: str) -> str:
    parts = trashed.split(os.sep)
    i = len(parts) - 1 - parts[::-1].index(TRASH_DIR)
    return os.sep.join(parts[:i])


def _inside(folder: str, path: str) -> bool:
    folder = os.path.realpath(folder)
    real = os.path.realpath(os.path.dirname(path))
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def _in_library(library: Any, path: str) -> bool:
    """A path a record may restore to: inside a library folder, not inside its trash."""
    return any(_inside(root, path) and not _inside(os.path.join(root, TRASH_DIR), path) for root in library.roots)


def _in_trash(library: Any, path: str) -> bool:
    return any(_inside(os.path.join(root, TRASH_DIR), path) for root in library.roots)


def _rescan(library: Any) -> None:
    try:
        library.scan(quick=True)
    except Exception:  # noqa: BLE001 - the files moved; the next scan catches up
        logger.exception("rescan after moving duplicates failed")
