"""What the user adds to the index: favourites, tags, when a LoRA was last used, named stacks.

Kept by path in their own tables, so a rescan or a rebuilt file index keeps them. The functions take
an indexed file's path (the Library resolves and checks it first).
"""
from __future__ import annotations

import time

from lora_core.library import queries, scanner


def set_favorite(db, path: str, favorite: bool) -> None:
    db.set_user_data(path, favorite=1 if favorite else 0)


def set_user_tags(db, path: str, tags) -> None:
    """Store the tags (trimmed, no commas, sorted, at most 100 characters each); searches find them."""
    clean = sorted({str(t).strip().replace(",", " ")[:100] for t in tags if str(t).strip()})
    db.set_user_data(path, tags=",".join(clean))
    base = queries.stored_search_text(db, path).split(scanner.USER_TAGS_SEPARATOR)[0]
    db.set_search_text(path, base + scanner.USER_TAGS_SEPARATOR + " ".join(clean))


def mark_used(db, path: str, when: float) -> None:
    db.set_user_data(path, last_used=when)


def save_stack(db, name: str, items) -> None:
    """Save a named stack: a list of (lora name, weight)."""
    clean = [(str(n), float(w)) for n, w in items]
    if not str(name).strip():
        raise ValueError("a stack needs a name")
    db.save_stack(str(name).strip(), clean, time.time())


def stacks(db) -> dict[str, list[tuple[str, float]]]:
    return queries.stacks(db)


def delete_stack(db, name: str) -> bool:
    return db.delete_stack(name)
