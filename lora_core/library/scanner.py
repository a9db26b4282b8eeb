"""Finding LoRA files under the library roots and turning one file into an index record.

Walking never follows a symbolic link whose target lies outside every root, and never enters a
folder twice (symlink loops). Reading a file reads its header only (safetensors) or the key names
of a torch zip checkpoint; sidecars are read separately so a changed `.json` does not re-read the
LoRA.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

from lora_core.library import base_models, inspect_header, sidecars
from lora_core.formats.header import HeaderError, read_header

logger = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
USER_TAGS_SEPARATOR = "\x1f"
RACY_NS = 2_000_000_000   # folder signatures younger than this are not trusted (mtime granularity)


@dataclass(slots=True)  # one per LoRA file on every scan: no per-instance __dict__
class Found:
    path: str
    root: str
    rel: str                # "folder/name" without extension, "/" separated
    folder: str
    stem: str
    ext: str
    size: int
    mtime_ns: int
    sidecar_sig: str
    preview: str | None
    error: str | None = None


@dataclass
class FolderListing:
    path: str
    signature: str | None          # None: do not trust it next time (changed just now)
    subdirs: list                  # [(subfolder path, rel)] entered from this folder
    links: bool                    # the folder holds symbolic links (quick walks are not used)


@dataclass
class WalkResult:
    files: dict[str, Found] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    listed: dict = field(default_factory=dict)     # (root, folder) -> FolderListing
    skipped: list = field(default_factory=list)    # (root, folder) not listed (quick walk)

    def folders(self) -> dict[tuple[str, str], list[Found]]:
        """(root, folder) -> files found directly in it."""
        out: dict[tuple[str, str], list[Found]] = {}
        for found in self.files.values():
            out.setdefault((found.root, found.folder), []).append(found)
        return out


def folder_digest(files: list[Found]) -> str:
    """Changes when any file of a folder is added, removed, resized, touched or gets new sidecars."""
    text = "\n".join(
        sorted(f"{f.stem}{f.ext}\t{f.size}\t{f.mtime_ns}\t{f.sidecar_sig}\t{f.error or ''}" for f in files)
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def real_roots(dirs) -> list[str]:
    roots = []
    for d in dirs:
        real = os.path.realpath(os.path.expanduser(str(d)))
        if real not in roots:
            roots.append(real)
    return roots


def is_within(path: str, roots: list[str]) -> bool:
    """True when the real path of `path` lies inside one of `roots` (already real paths)."""
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


_PREVIEW_RANK = {}
for _i, _ext in enumerate(sidecars.PREVIEW_EXTENSIONS):  # A1111 order: a.png, a.preview.png, a.jpg, ...
    _PREVIEW_RANK[f".{_ext}"] = 2 * _i
    _PREVIEW_RANK[f".preview.{_ext}"] = 2 * _i + 1
_SIDECAR_SUFFIXES = (".json", ".civitai.info")
_LORA_EXT_SET = frozenset(LORA_EXTENSIONS)


def _folder_sidecars(entries) -> dict[str, list]:
    """stem -> [json entry, civitai entry, (preview rank, preview entry)] for one folder."""
    out: dict[str, list] = {}
    for entry in entries:
        name = entry.name
        for i, suffix in enumerate(_SIDECAR_SUFFIXES):
            if name.endswith(suffix):
                out.setdefault(name[: -len(suffix)], [None, None, None])[i] = entry
                break
        else:
            dot = name.rfind(".")
            rank = _PREVIEW_RANK.get(name[dot:]) if dot > 0 else None
            if rank is None:
                continue
            stem = name[:dot]
            if stem.endswith(".preview"):
                stem, rank = stem[:-8], rank + 1
            slot = out.setdefault(stem, [None, None, None])
            if slot[2] is None or rank < slot[2][0]:
                slot[2] = (rank, entry)
    return out


def _sidecar_signature(stem: str, folder_sidecars: dict[str, list]) -> tuple[str, str | None]:
    """A string that changes when a sidecar of `stem` changes, and the preview path."""
    slot = folder_sidecars.get(stem)
    if slot is None:
        return "", None
    parts = []
    for entry in slot[:2]:
        if entry is not None:
            try:
                st = entry.stat()
                parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{entry.name}:?")
    preview = None
    if slot[2] is not None:
        preview = slot[2][1].path
        parts.append(f"preview:{slot[2][1].name}")
    return "|".join(parts), preview


def _dir_signature(st) -> str:
    """Changes when a folder gains, loses or renames an entry (its mtime/ctime), or is replaced."""
    return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def walk(roots: list[str], reuse: dict | None = None) -> WalkResult:
    """All LoRA files under `roots` (real paths), with size, mtime and sidecar signature.

    This runs on every warm start over every file, so the common case (a plain file or folder)
    costs one cached d_type check and one stat; symbolic links take the careful path.

    `reuse` (quick mode) maps folder path -> (stored folder signature, [(subfolder path, rel)]):
    a folder whose signature is unchanged is not listed; its subfolders come from the stored
    list and its files from the index (`result.skipped`). `result.listed` records what a later
    quick walk needs for every folder that was listed."""
    result = WalkResult()
    visited: set = set()
    seen: set = set()
    racy_after = time.time_ns() - RACY_NS
    for root in roots:
        stack = [(root, "")]
        while stack:
            folder_path, folder_rel = stack.pop()
            try:
                st = os.stat(folder_path)
            except OSError as exc:
                msg = f"cannot list {folder_path}: {exc.strerror or exc}"
                logger.warning("%s", msg)
                result.problems.append(msg)
                continue
            if (st.st_dev, st.st_ino) in visited:  # symlink loops, nested roots
                continue
            visited.add((st.st_dev, st.st_ino))
            sig = _dir_signature(st)
            stored = reuse.get(folder_path) if reuse is not None else None
            if stored is not None and stored[0] == sig:
                result.skipped.append((root, folder_rel))
                stack.extend(stored[1])
                continue
            try:
                with os.scandir(folder_path) as it:
                    entries = list(it)
            except OSError as exc:
                msg = f"cannot list {folder_path}: {exc.strerror or exc}"
                logger.warning("%s", msg)
                result.problems.append(msg)
                continue
            subdirs: list = []
            links = False
            folder_sidecars = None
            prefix = folder_rel + "/" if folder_rel else ""
            for entry in entries:
                name = entry.name
                dot = name.rfind(".")
                ext = name[dot:].lower() if dot > 0 else ""
                try:
                    if entry.is_symlink():
                        links = True
                        if not os.path.exists(entry.path):
                            if ext in _LORA_EXT_SET:
                                _add_error(entry, root, folder_rel, "broken symbolic link (target missing)", result)
                            continue
                        if not is_within(entry.path, roots):
                            logger.info("not following %s: its target is outside the library folders", entry.path)
                            continue
                    if ext not in _LORA_EXT_SET:
                        if entry.is_dir():  # follows links that stay inside the roots
                            subdirs.append((entry.path, prefix + name))
                        continue
                    if not entry.is_file():  # FIFOs, sockets, devices: opening one could block
                        _add_error(entry, root, folder_rel, "not a regular file", result)
                        continue
                except OSError as exc:
                    logger.warning("cannot inspect %s: %s", entry.path, exc.strerror or exc)
                    continue
                try:
                    fst = entry.stat()
                except OSError as exc:
                    _add_error(entry, root, folder_rel, f"cannot stat: {exc.strerror or exc}", result)
                    continue
                identity = (fst.st_dev, fst.st_ino)  # the same file via links or nested roots
                if identity in seen:
                    continue
                seen.add(identity)
                if folder_sidecars is None:
                    folder_sidecars = _folder_sidecars(_not_linking_out(entries, roots))
                stem = name[:dot]
                sig_side, preview = _sidecar_signature(stem, folder_sidecars)
                result.files[entry.path] = Found(
                    entry.path, root, prefix + stem, folder_rel, stem, ext,
                    fst.st_size, fst.st_mtime_ns, sig_side, preview,
                )
            stack.extend(subdirs)
            # A folder changed within RACY_NS of now may change again within the same mtime tick
            # after this listing: keep no signature, so the next quick walk lists it again.
            racy = st.st_mtime_ns >= racy_after or st.st_ctime_ns >= racy_after
            result.listed[(root, folder_rel)] = FolderListing(folder_path, None if racy else sig, subdirs, links)
    return result


def _not_linking_out(entries, roots: list[str]) -> list:
    """Drop sidecars/previews that are symbolic links leaving the roots: they would be read (and a
    preview served over HTTP) from outside the library folders."""
    kept = []
    for entry in entries:
        try:
            if entry.is_symlink() and not is_within(entry.path, roots):
                logger.info("ignoring %s: it links outside the library folders", entry.path)
                continue
        except OSError:
            continue
        kept.append(entry)
    return kept


def folder_signature(lora_path: str, roots: list[str] | None = None) -> tuple[str, str | None]:
    """Sidecar signature and preview of one LoRA file (lists its folder). With `roots`, sidecars
    linking outside them are ignored, as in `walk`."""
    folder = os.path.dirname(lora_path)
    stem = os.path.splitext(os.path.basename(lora_path))[0]
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return "", None
    if roots is not None:
        entries = _not_linking_out(entries, roots)
    return _sidecar_signature(stem, _folder_sidecars(entries))


def _add_error(entry, root, folder_rel, reason, result):
    stem, ext = os.path.splitext(entry.name)
    rel = f"{folder_rel}/{stem}" if folder_rel else stem
    result.files[entry.path] = Found(
        path=entry.path, root=root, rel=rel, folder=folder_rel, stem=stem, ext=ext.lower(),
        size=0, mtime_ns=0, sidecar_sig="", preview=None, error=reason,
    )


def read_file_summary(path: str, ext: str, summarizer: inspect_header.Summarizer | None = None
                      ) -> tuple[dict, str | None]:
    """(summary, error) of one LoRA file from its header; never raises.

    A scan passes one `summarizer` for all its files (it remembers what files share)."""
    summarize = summarizer.summarize if summarizer is not None else inspect_header.summarize
    if ext == ".safetensors":
        try:
            header, metadata, _ = read_header(path)
        except HeaderError as exc:
            return {}, exc.problem
        return summarize(header, metadata), None
    # .pt / .ckpt: list key names from the pickle opcodes, never unpickle
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return {}, f"cannot read: {exc.strerror or exc}"
    if not magic:
        return {}, "empty file"
    if magic.startswith(b"PK"):
        try:
            keys = inspect_header.keys_from_pickle_zip(path)
        except (ValueError, OSError) as exc:
            return {}, f"damaged torch checkpoint: {exc}"
        summary = summarize({k: {} for k in keys}, {})
        return summary, None
    if magic[:1] == b"\x80":
        summary = summarize({}, {})
        summary["note"] = "legacy pickle checkpoint: contents not inspected"
        return summary, None
    return {}, "not a safetensors or torch checkpoint file"


def read_sidecars(found: Found) -> dict:
    # the signature already says which sidecars exist: skip opening absent ones
    sig = found.sidecar_sig
    user_meta = sidecars.read_user_metadata(found.path) if f"{found.stem}.json:" in sig else {}
    has_info = f"{found.stem}.civitai.info:" in sig
    civitai = sidecars.trim_civitai(sidecars.read_civitai_info(found.path)) if has_info else None
    return {"user_meta": user_meta, "civitai": civitai, "preview": found.preview}


def search_text(found: Found, alias, summary: dict, side: dict, user_tags: str = "") -> str:
    """Everything a search may match: folder/name, alias, trigger words, training tags, user tags."""
    # the path relative to its library folder: the folders above it would match every entry
    parts = [found.rel + found.ext, alias or ""]
    meta = side.get("user_meta") or {}
    if isinstance(meta.get("activation text"), str):
        parts.append(meta["activation text"])
    civitai = side.get("civitai") or {}
    parts.extend(w for w in civitai.get("trainedWords") or [] if isinstance(w, str))
    if isinstance(civitai.get("name"), str):
        parts.append(civitai["name"])
    if summary.get("trigger_phrase"):
        parts.append(summary["trigger_phrase"])
    parts.extend(tag for tag, _ in summary.get("top_tags") or [])
    # A search term never spans two lines, so a line the name line contains (often the alias)
    # or a repeated line adds nothing a search can find: leaving it out keeps the full-text
    # index smaller and the first scan faster.
    name_line = parts[0]
    kept = dict.fromkeys(p for p in parts[1:] if p and p not in name_line)
    # user tags go last, after a separator, so they can be replaced without re-reading anything
    return "\n".join([name_line, *kept]) + USER_TAGS_SEPARATOR + user_tags


def record(found: Found, summary: dict, error: str | None, side: dict, user_tags: str = "") -> dict:
    """An index row for `found` (see index_db.FILE_COLUMNS)."""
    alias = summary.get("alias")
    return {
        "path": found.path, "root": found.root, "rel": found.rel, "folder": found.folder,
        "stem": found.stem, "ext": found.ext, "size": found.size, "mtime_ns": found.mtime_ns,
        "sidecar_sig": found.sidecar_sig, "alias": alias,
        "family": summary.get("family", "unknown"), "algorithm": summary.get("algorithm", "unknown"),
        "summary": json.dumps(summary),
        "user_meta": json.dumps(side["user_meta"]) if side.get("user_meta") else "{}",
        "civitai": json.dumps(side["civitai"]) if side.get("civitai") else None,
        "preview": side.get("preview"), "error": error or found.error,
        "search_text": search_text(found, alias, summary, side, user_tags),
        # the finer base-model label, stored so its filter is an index lookup (every writer of a row gets it)
        "base_model": "" if (error or found.error) else base_models.classify(summary, side.get("civitai"), found.rel),
    }
