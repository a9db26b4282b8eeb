"""A1111-compatible generation parameters ("infotext"), written to and read from PNG text chunks.

Layout (as A1111 writes it, so images can be pasted between the two):

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: 0123456789, ...

Values that contain a comma, colon, quote or newline are written as JSON strings. `Lora hashes`
is `"name: shorthash, name2: shorthash2"` with `:` and `,` removed from the names; the short
hash is the first 12 hex digits of the AutoV3 ("addnet") hash. Pasting re-resolves every
`<lora:name:...>` whose hash is known to the local file with that hash.

No torch here: the UI's paste handler uses this module.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from lora_core import __version__

PNG_KEY = "parameters"
VERSION_TEXT = f"lora_core {__version__}"
NEGATIVE_PREFIX = "Negative prompt:"

# one `Key: value` pair of the settings line; value is a JSON string or runs up to the next comma
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
# the name part of a <lora:NAME:...> or <lora:NAME> tag (also lyco:)
_TAG_NAME_RE = re.compile(r"<(lora|lyco):([^:>]+)(?=[:>])", re.IGNORECASE)


def quote(value) -> str:
    text = str(value)
    if not any(c in text for c in ',:\n"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def _format_number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def hash_entry_name(name: str) -> str:
    """A LoRA name as it appears inside `Lora hashes` (A1111 drops `:` and `,`)."""
    return name.replace(":", "").replace(",", "").strip()


def format_lora_hashes(pairs: Iterable[tuple[str, str]]) -> str:
    seen: dict[str, str] = {}
    for name, short_hash in pairs:
        if short_hash:
            seen.setdefault(hash_entry_name(name), short_hash)
    return ", ".join(f"{n}: {h}" for n, h in seen.items())


def parse_lora_hashes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        name, sep, short_hash = item.partition(":")
        if sep and name.strip() and short_hash.strip():
            out[name.strip()] = short_hash.strip()
    return out


def build_infotext(prompt: str, negative: str, settings: dict) -> str:
    """settings: ordered `Key -> value`; None/empty values are left out."""
    parts = []
    for key, value in settings.items():
        if value is None or value == "":
            continue
        parts.append(f"{key}: {quote(_format_number(value))}")
    lines = [prompt or ""]
    if negative:
        lines.append(f"{NEGATIVE_PREFIX} {negative}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def generation_infotext(*, prompt: str, negative: str, steps: int, sampler: str, cfg: float, seed: int,
                        width: int, height: int, model_name: str | None, model_hash: str | None,
                        lora_hashes: Iterable[tuple[str, str]] = (), extra: dict | None = None) -> str:
    settings = {
        "Steps": int(steps),
        "Sampler": sampler,
        "CFG scale": float(cfg),
        "Seed": int(seed),
        "Size": f"{int(width)}x{int(height)}",
        "Model hash": model_hash,
        "Model": model_name,
        "Lora hashes": format_lora_hashes(lora_hashes),
    }
    settings.update(extra or {})
    settings["Version"] = VERSION_TEXT
    return build_infotext(prompt, negative, settings)


@dataclass
class ParsedInfotext:
    prompt: str = ""
    negative: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # raw `Key -> value` (unquoted)

    def get_int(self, key: str) -> int | None:
        try:
            return int(float(self.settings[key]))
        except (KeyError, ValueError):
            return None

    def get_float(self, key: str) -> float | None:
        try:
            return float(self.settings[key])
        except (KeyError, ValueError):
            return None

    def size(self) -> tuple[int, int] | None:
        m = _SIZE_RE.match(self.settings.get("Size", "").strip())
        return (int(m.group(1)), int(m.group(2))) if m else None

    def lora_hashes(self) -> dict[str, str]:
        return parse_lora_hashes(self.settings.get("Lora hashes", ""))

    def generation_fields(self) -> dict:
        """The values a generate form takes: prompt, negative, steps, cfg, seed, width, height, sampler."""
        out: dict = {"prompt": self.prompt, "negative": self.negative}
        for name, key, getter in (("steps", "Steps", self.get_int), ("cfg", "CFG scale", self.get_float),
                                  ("seed", "Seed", self.get_int)):
            value = getter(key)
            if value is not None:
                out[name] = value
        size = self.size()
        if size:
            out["width"], out["height"] = size
        if self.settings.get("Sampler"):
            out["sampler"] = self.settings["Sampler"]
        return out


def parse_infotext(text: str) -> ParsedInfotext:
    """Split pasted A1111-style parameters into prompt, negative prompt and settings."""
    lines = (text or "").strip().replace("\r\n", "\n").split("\n")
    last = lines[-1] if lines else ""
    # A1111 rule: the last line is the settings line only if it holds at least 3 `Key: value` pairs
    if len(_PARAM_RE.findall(last)) >= 3:
        lines = lines[:-1]
    else:
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(NEGATIVE_PREFIX):
            in_negative = True
            stripped = stripped[len(NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(stripped)
    settings: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(last):
        settings[key.strip()] = unquote(value.strip())
    return ParsedInfotext("\n".join(prompt_lines), "\n".join(negative_lines), settings)


def relink_loras(prompt: str, hashes: dict[str, str],
                 name_for_hash: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """Rewrite `<lora:oldname:...>` to the local name whose short hash matches `Lora hashes`.

    Returns the new prompt and human-readable notes (renames, and hashes no local file has).
    """
    notes: list[str] = []

    def replace(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        short_hash = hashes.get(hash_entry_name(name))
        if not short_hash:
            return m.group(0)
        local = name_for_hash(short_hash)
        if local is None:
            notes.append(f"LoRA {name!r} (hash {short_hash}) is not in your library")
            return m.group(0)
        if local != name:
            notes.append(f"LoRA {name!r} matched local file {local!r} by hash {short_hash}")
        return f"<{kind}:{local}"

    return _TAG_NAME_RE.sub(replace, prompt), notes


def png_info(infotext: str):
    """A PIL PngInfo holding the infotext in the `parameters` chunk (iTXt, so any Unicode survives)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_KEY, infotext)
    return info


def read_png_infotext(image_or_path) -> str | None:
    """The `parameters` text of a PNG (path or PIL image), or None."""
    from PIL import Image

    if isinstance(image_or_path, Image.Image):
        img = image_or_path
        return img.info.get(PNG_KEY) or getattr(img, "text", {}).get(PNG_KEY)
    with Image.open(image_or_path) as img:
        img.load()
        return img.info.get(PNG_KEY) or getattr(img, "text", {}).get(PNG_KEY)
