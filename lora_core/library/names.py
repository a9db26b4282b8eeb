"""Name resolution: the one entry a prompt name means, "did you mean" suggestions, hash look-ups.

An exact `folder/name` first, then a unique folder-path suffix, then the file stem, then the
training alias (ss_output_name); each level case-sensitive before case-insensitive. A level that
matches several files raises AmbiguousName listing them; the user picks one with its folder path.
Names are never paths: absolute paths and `..` are refused, and a file whose real location has
left the library folders is not returned.
"""
from __future__ import annotations

import re

from lora_core.library import queries, scanner
from lora_core.library.entry import Entry
from lora_core.library.errors import AmbiguousName, NotFound

_HEX = re.compile(r"^[0-9a-f]+$")
_BROKEN_LINK = "broken symbolic link (target missing)"


def clean_name(name: str) -> str:
    """A prompt name as `find` looks it up: "/"-separated, no extension; NotFound for paths."""
    raw = str(name)
    text = raw.strip().replace("\\", "/")
    if not text:
        raise NotFound(raw, "empty name")
    if text.startswith("./") and "/" not in text[2:].strip("/"):
        return "./" + clean_name(text[2:])
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


def _pick(name: str, rows, roots) -> Entry | None:
    entries = [queries.entry_from_row(r) for r in rows]
    entries = [e for e in entries if e.error == _BROKEN_LINK or scanner.is_within(e.path, roots)]
    if not entries:
        return None
    if len(entries) > 1:
        labels = sorted({e.rel_name if "/" in e.rel_name else "./" + e.rel_name for e in entries})
        if len(labels) < len(entries):  # same folder/name under two roots: show paths
            labels = sorted(e.path for e in entries)
        raise AmbiguousName(name, labels)
    return entries[0]


def find(db, roots, name: str) -> Entry:
    """The one entry `name` means. Raises NotFound (with suggestions) / AmbiguousName."""
    text = clean_name(name)
    for level in queries.name_levels(text):
        rows = queries.rows_at_level(db, roots, level)
        if level.suffix:  # LIKE is case-insensitive: keep case-exact suffix matches first
            exact = [r for r in rows if r["rel"].endswith("/" + text)]
            rows = exact or rows
        hit = _pick(str(name), rows, roots)
        if hit is not None:
            return hit
    raise NotFound(str(name), suggestions=close_names(db, roots, text))


def close_names(db, roots, name: str, limit: int = 3) -> list[str]:
    """Names in the library (file stems, aliases, folder/names) closest to `name` (difflib),
    for "did you mean ...?". Runs only after a miss; reads names only."""
    import difflib

    if not roots:
        return []
    text = str(name)[2:] if str(name).startswith("./") else str(name)
    by_lower: dict[str, str] = {}
    for stem, alias, rel in queries.names(db, roots):
        for candidate in ((rel,) if "/" in text else (stem, alias)):
            if candidate:
                by_lower.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(text.lower(), list(by_lower), n=limit, cutoff=0.72)
    return [by_lower[c] for c in close]


def by_hash(db, roots, h: str) -> list[Entry]:
    """Entries whose sha256 (AutoV2 is its prefix) or addnet hash (AutoV3) starts with `h`."""
    text = str(h).strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) < 6 or not _HEX.match(text):
        return []
    rows = queries.rows_by_hash_prefix(db, roots, text)
    return [e for e in map(queries.entry_from_row, rows) if e.sha256 is not None]
