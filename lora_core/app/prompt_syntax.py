"""A1111's prompt emphasis syntax, read into (text, weight) pieces. No torch here.

    (word)        weight x 1.1, nested: ((word)) x 1.21
    [word]        weight / 1.1
    (word:1.3)    weight x 1.3 for that span
    \\( \\) \\[ \\] \\\\   literal brackets / backslash
    BREAK         (upper case, a word of its own) starts a new 75-token chunk

As in A1111, an unclosed bracket still applies to the rest of the prompt, a stray closing bracket
is kept as text, and a "(text:x)" whose x is not a number is plain emphasis with ":x" as text.
The encoder side (prompt_encode.py) turns the pieces into weighted CLIP embeddings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

EMPHASIS = 1.1
BREAK = "BREAK"

# tokens: escapes, brackets, ":number)" closing a weighted span, BREAK as a word, or plain text
_TOKEN = re.compile(r"""
    \\[\\()\[\]]                       # an escaped bracket or backslash
  | \(|\[|\]                           # openers and the square closer
  | :\s*(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ":1.2)" ends a weighted round span
  | \)
  | (?<![^\s,])BREAK(?![^\s,])         # BREAK standing alone (between spaces/commas)
  | [^\\()\[\]:B]+ | :|B|\\
""", re.VERBOSE)


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float  # 1.0 for plain text
    is_break: bool = False


def parse_prompt(prompt: str) -> list[Piece]:
    """The prompt as (text, weight) pieces in order, adjacent pieces of equal weight merged, with
    BREAK markers as pieces of their own (is_break=True, empty text)."""
    out: list[Piece] = []
    # each open bracket: (kind, index in out where its span starts)
    stack: list[tuple[str, int]] = []

    def add(text: str) -> None:
        if text:
            out.append(Piece(text, 1.0))

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(out)):
            if not out[i].is_break:
                out[i] = Piece(out[i].text, out[i].weight * factor)

    for m in _TOKEN.finditer(prompt):
        tok = m.group(0)
        if tok.startswith("\\") and len(tok) == 2:
            add(tok[1])
        elif tok == "(" or tok == "[":
            stack.append((tok, len(out)))
        elif m.group("num") is not None:
            if stack and stack[-1][0] == "(":
                scale(stack.pop()[1], float(m.group("num")))
            else:
                add(tok)
        elif tok == ")":
            if stack and stack[-1][0] == "(":
                scale(stack.pop()[1], EMPHASIS)
            else:
                add(tok)
        elif tok == "]":
            if stack and stack[-1][0] == "[":
                scale(stack.pop()[1], 1 / EMPHASIS)
            else:
                add(tok)
        elif tok == BREAK:
            out.append(Piece("", 1.0, is_break=True))
        else:
            add(tok)
    for kind, start in reversed(stack):  # unclosed: applies to the end of the prompt
        scale(start, EMPHASIS if kind == "(" else 1 / EMPHASIS)
    return _merge(out)


def _merge(pieces: list[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for p in pieces:
        if merged and not p.is_break and not merged[-1].is_break and merged[-1].weight == p.weight:
            merged[-1] = Piece(merged[-1].text + p.text, p.weight)
        else:
            merged.append(p)
    return merged


def needs_weighting(prompt: str) -> bool:
    """Whether the prompt uses any emphasis or BREAK (plain prompts take diffusers' own path)."""
    pieces = parse_prompt(prompt)
    return any(p.is_break or p.weight != 1.0 for p in pieces) or "".join(p.text for p in pieces) != prompt
