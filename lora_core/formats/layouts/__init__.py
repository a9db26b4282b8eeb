"""Key layouts: who wrote a LoRA file, told by its key spelling, and its keys in canonical form.

`LAYOUTS` are tried in order, per key: the first layout that `owns` a key parses it, so a file
mixing spellings (kohya UNet keys next to diffusers text-encoder keys) is read whole. A file's
layout (what `info` shows) is the first layout in that order owning any key that became a module.
Torch-free (the library's header index uses `split` and `detect`).
"""
from __future__ import annotations

from ..keys import ParsedKey
from . import comfyui, diffusers, kohya, lycoris, onetrainer, other, xlabs
from .base import Layout

# Order matters twice: ownership (XLabs' `double_blocks.N.processor.` before the ComfyUI/BFL bare
# `double_blocks.`), and naming (OneTrainer's transformer keys name a file whose text encoders are
# spelled kohya's way).
LAYOUTS: tuple[Layout, ...] = (xlabs.LAYOUT, onetrainer.LAYOUT, lycoris.LAYOUT, kohya.LAYOUT, comfyui.LAYOUT,
                               diffusers.LAYOUT, other.LAYOUT)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def owner(key: str) -> Layout:
    for layout in LAYOUTS:
        if layout.owns(key):
            return layout
    return other.LAYOUT


def parse(key: str) -> tuple[ParsedKey | None, Layout]:
    """(canonical parse or None, the layout that owns the key)."""
    layout = owner(key)
    return layout.parse(key), layout


def parse_key(key: str) -> ParsedKey | None:
    return owner(key).parse(key)


def split(key: str) -> tuple[str, str] | None:
    """(raw module, canonical suffix) as `load_lora` groups the key, or None (header summaries)."""
    parsed = parse_key(key)
    return None if parsed is None else (parsed.raw_module, parsed.suffix)


def detect(keys) -> Layout | None:
    """The file's layout: the first of LAYOUTS owning a key that names a module; None if no key does.

    Only a key whose owner comes before the best found so far is parsed (the library calls this
    once per distinct key list; a full parse of 1000 keys costs ~9 ms, this ~1 ms)."""
    rank = {layout.name: i for i, layout in enumerate(LAYOUTS)}
    best = len(LAYOUTS)
    for key in keys:
        layout = owner(key)
        i = rank[layout.name]
        if i < best:
            parsed = layout.parse(key)
            if parsed is not None and parsed.module is not None:
                best = i
                if best == 0:
                    break
    return LAYOUTS[best] if best < len(LAYOUTS) else None


def describe_unknown(keys, limit: int = 3) -> str:
    """What an unrecognised file's keys look like, for the refusal message."""
    sample = sorted(keys)[:limit]
    shown = ", ".join(repr(k[:80]) for k in sample)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return (f"no key is in a LoRA layout we know ({shown}{more}); known layouts: "
            + ", ".join(layout.label for layout in LAYOUTS if layout is not other.LAYOUT))
