"""The `Lora hashes` infotext field, written and read the way A1111's built-in Lora does.

Written: `Lora hashes: "name1: 0123456789ab, name2: ba9876543210"` (the name as typed in the tag,
with ':' and ',' removed; the 12-hex short hash). Read back when a user pastes parameters: every
`<lora:NAME:` whose NAME has a hash is rewritten to the local file with that hash, so pasted
prompts work when files were renamed. Pure string code: no torch, no webui imports.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

FIELD = "Lora hashes"
_TAG_NAME = re.compile(r"<(lora|lyco):([^:>]+)(?=[:>])", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")


def clean_alias(name: str) -> str:
    return name.replace(":", "").replace(",", "").strip()


def format_hashes(pairs: Iterable[tuple[str, str]]) -> str:
    """`name: hash, name: hash` for (mentioned name, short hash) pairs; empty hashes skipped."""
    seen = set()
    out = []
    for name, short in pairs:
        alias = clean_alias(name)
        if not alias or not short or alias in seen:
            continue
        seen.add(alias)
        out.append(f"{alias}: {short}")
    return ", ".join(out)


def parse_hashes(text: str) -> dict[str, str]:
    """The inverse of `format_hashes`; malformed parts are skipped (pasted text is untrusted)."""
    result: dict[str, str] = {}
    if not isinstance(text, str):
        return result
    for part in text.split(","):
        name, sep, short = part.partition(":")
        name, short = name.strip(), short.strip()
        if sep and name and _HEX.match(short):
            result[name] = short.lower()
    return result


def rewrite_prompt(prompt: str, hashes: dict[str, str], resolve: Callable[[str], str | None]) -> str:
    """Replace tag names that have a hash with `resolve(hash)` (a local name), when it finds one."""
    if not hashes or not isinstance(prompt, str):
        return prompt

    def swap(m: re.Match) -> str:
        short = hashes.get(clean_alias(m.group(2)))
        if short is None:
            return m.group(0)
        local = resolve(short)
        if not local:
            return m.group(0)
        return f"<{m.group(1)}:{local}"

    return _TAG_NAME.sub(swap, prompt)
