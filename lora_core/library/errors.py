"""Exceptions of the library package."""
from __future__ import annotations

from lora_core.formats.header import HeaderError


class LibraryError(Exception):
    """A library operation failed; the message is meant for the user."""


class NotFound(LibraryError, LookupError):
    """No LoRA matches a name (or the name points outside the library)."""

    def __init__(self, name: str, reason: str = "no LoRA with that name in the library",
                 suggestions: list[str] | tuple[str, ...] = ()):
        self.name = name
        self.reason = reason
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"LoRA {name!r}: {reason}{hint}")


class AmbiguousName(LibraryError, LookupError):
    """Several LoRA files answer to one name; `candidates` are their `folder/name`s."""

    def __init__(self, name: str, candidates: list[str]):
        self.name = name
        self.candidates = list(candidates)
        listed = ", ".join(self.candidates)
        super().__init__(
            f"LoRA name {name!r} is ambiguous: {listed}. Use the folder path, e.g. <lora:{self.candidates[0]}:1>"
        )


class StorageError(LibraryError):
    """Writing the index or a sidecar failed (disk full, read-only, permission)."""


__all__ = ["LibraryError", "NotFound", "AmbiguousName", "StorageError", "HeaderError"]
