"""The one typed request from prompt tags (or the command line) to the Engine, and the one function
that makes them from a prompt: `tags.parse_prompt` + `Library.find`.

    resolved = resolve_prompt(prompt, library, family=engine.family)
    report = engine.apply_resolved(resolved)   # = engine.activate(prompt, library)
    report = engine.apply([ApplyRequest(path, te=0.8, unet=0.8)])

Torch-free: hosts resolve a prompt without touching the model, and keep `resolved.requests` for
what they write afterwards (A1111's `Lora hashes`: the name as written in the prompt).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lora_core.tags import parse_prompt


@dataclass(frozen=True)
class ApplyRequest:
    """One LoRA file for the Engine and how strongly to apply it.

    block_weights: None; the 26-float lbw vector tags resolve (BASE, IN00..IN11, M00, OUT00..OUT11;
    BASE multiplies `te`, each block `unet`); a 12/17/20-value lbw list; or {block id: weight}.
    name: the name as written in the prompt ("" when a file was given directly).
    entry: the library Entry the name resolved to (None for a file given directly); hosts read its
    hashes, the engine never looks at it.
    """

    path: str | os.PathLike[str]
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    block_weights: Any = None
    name: str = ""
    entry: Any = field(default=None, compare=False, repr=False)


@dataclass
class PromptRequests:
    """A prompt resolved against a library: its clean text, the requests in tag order, and the
    messages for the user, kept apart because hosts show them differently."""

    clean_text: str
    requests: list[ApplyRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # malformed tags (no request made)
    advice: list[str] = field(default_factory=list)      # the parser's soft warnings (weights out of range, ...)
    unresolved: list[str] = field(default_factory=list)  # names the library does not know (or cannot read)

    @property
    def warnings(self) -> list[str]:
        return [*self.problems, *self.advice, *self.unresolved]


def resolve_prompt(prompt: str, library: Any, family: str | None = None,
                   skip_broken: bool = False) -> PromptRequests:
    """`<lora:...>` tags of `prompt` -> ApplyRequests for the files `library.find` names. Never
    raises for user input: unknown or ambiguous names become `unresolved` messages.

    family: picks the lbw preset table (see tags.parse_prompt). skip_broken: a file the library's
    index marks unreadable (`entry.error`) is reported as `LoRA NAME: error` instead of requested
    (the standalone app's choice; otherwise the engine reports the load error itself).
    `library` is only called when the prompt has tags.
    """
    parsed = parse_prompt(prompt, family=family)
    out = PromptRequests(parsed.clean_text, problems=list(parsed.problems), advice=list(parsed.warnings))
    for req in parsed.requests:
        try:
            entry = library.find(req.name)
        except LookupError as exc:  # NotFound / AmbiguousName carry a readable message
            out.unresolved.append(str(exc))
            continue
        if skip_broken and entry.error:
            out.unresolved.append(f"LoRA {req.name}: {entry.error}")
            continue
        out.requests.append(ApplyRequest(entry.path, te=req.te, unet=req.unet, dyn=req.dyn,
                                         block_weights=req.lbw, name=req.name, entry=entry))
    return out
