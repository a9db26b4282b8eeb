"""What a key layout is: who wrote the file, told by its key spelling. Pure strings, torch-free.

A layout owns the keys spelled its way (`owns`, a cheap prefix/regex test) and turns each into a
`keys.ParsedKey` (raw module as written, canonical ModuleKey, canonical suffix). Most layouts only
differ from the shared vocabulary of `formats.keys` in which prefixes they use; a layout with its
own module names (XLabs) renames them here, and one whose modules do not map one-to-one onto the
model's layers may `regroup` a module's tensors after grouping (views, never copies).
"""
from __future__ import annotations

from ..keys import ParsedKey, parse_key

PEFT_WRAPPER = "base_model.model."


def unwrapped(key: str) -> str:
    """The key without PEFT's `base_model.model.` wrapper (layouts decide on what is inside)."""
    return key[len(PEFT_WRAPPER):] if key.startswith(PEFT_WRAPPER) else key


class Layout:
    """One producer's key spelling. Subclasses set `name`/`label` and override `owns` (and `parse`,
    `regroup` where their names are their own)."""

    name = ""    # short id shown by `info` and stored by the library ("kohya", "diffusers", ...)
    label = ""   # who writes it, for messages and docs

    def owns(self, key: str) -> bool:
        """Whether a raw key is spelled this layout's way (the first owning layout parses it)."""
        raise NotImplementedError

    def parse(self, key: str) -> ParsedKey | None:
        return parse_key(key)

    def regroup(self, groups: dict, module_of: dict) -> None:
        """Rewrite {raw module: {suffix: tensor}} / {raw module: ModuleKey} in place, after grouping."""

    def __repr__(self) -> str:
        return f"<layout {self.name}>"
