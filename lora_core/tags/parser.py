"""Prompt tag parser: `<lora:NAME[:TE[:UNET[:DYN]]]>` (and `<lyco:...>`), read the way A1111 reads it.

A1111 semantics (modules/extra_networks.py + extensions-builtin/Lora/extra_networks_lora.py):

* A tag is `<type:args>`; args are split on ``:``. An item with exactly one ``=`` is *named*
  (``te=0.5``), every other item is *positional*. The name is the first positional item.
* ``te`` = positional 2 (default 1.0), overridden by ``te=``.
  ``unet`` = positional 3, default **the te value**, overridden by ``unet=``.
  ``dyn`` = positional 4 (an integer rank limit, default none), overridden by ``dyn=``.
* Tags are removed from the text that goes to the text encoder. Every ``<word:...>`` tag is
  removed, as A1111 does; tags that are not lora/lyco give a warning and are otherwise ignored.

Additions/choices of this parser (documented because they differ from "A1111 throws"):

* Malformed tags (no name, non-numeric weight, non-integer dyn, bad block weights, unclosed tag)
  give a problem message naming the tag; the tag produces no request. Nothing raises.
* Names are stripped of surrounding whitespace and ``\\`` becomes ``/`` (``folder/name``).
* Block weights: ``lbw=`` (or ``w=``) with a preset name or 12/17/20/26 comma values, see
  `block_weights`. Like the lbw extension, a preset/comma list in the third position
  (``<lora:x:1:OUTD>``) is read as block weights instead of a unet weight. ``x=`` feeds ``X``.
* Weights outside 0..1.5 give a warning (strong weights distort images).
* The same LoRA (same name) twice in one prompt: te weights add and unet weights add
  (``<lora:a:0.5> <lora:a:0.3>`` == ``<lora:a:0.8>``); see `_merge` for dyn and block weights.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from lora_core.tags import block_weights

# Same shape as A1111's `<(\w+):([^>]+)>`, but args may not contain `<` so that a tag
# nested in an unclosed one is still found (the unclosed one becomes a problem).
_TAG = re.compile(r"<(\w+):([^<>]*)>")
_UNCLOSED = re.compile(r"<(?:lora|lyco):[^<>]*(?=<|$)", re.IGNORECASE)
LORA_TYPES = ("lora", "lyco")
WEIGHT_RANGE = (0.0, 1.5)
_IGNORED_OPTIONS = {"lbwe", "start", "stop", "step"}
_MAX_SHOWN = 120


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA asked for by a prompt.

    lbw: None, or the 26-float block-weight vector (layout in `lora_core.tags.block_weights`):
    index 0 BASE multiplies `te`; IN00..IN11, M00, OUT00..OUT11 multiply `unet` per UNet block.
    """

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    lbw: tuple[float, ...] | None = None
    source: str = ""
    kind: str = "lora"


@dataclass
class ParsedPrompt:
    clean_text: str
    requests: list[LoraRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _TagError(ValueError):
    pass


def _shown(tag: str) -> str:
    return tag if len(tag) <= _MAX_SHOWN else tag[: _MAX_SHOWN - 3] + "..."


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (ValueError, TypeError):
        raise _TagError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise _TagError(f"{what} {text.strip()!r} is not a finite number")
    return value


def _integer(text: str, what: str) -> int:
    value = _number(text, what)
    if value != int(value):
        raise _TagError(f"{what} {text.strip()!r} is not a whole number")
    if value < 1:
        raise _TagError(f"{what} must be at least 1, got {text.strip()!r}")
    return int(value)


def _looks_like_block_weights(text: str) -> bool:
    text = text.strip()
    if "," in text:
        return True
    return text.upper() in block_weights.PRESET_NAMES


def _parse_tag(kind: str, args: str, tag: str, family: str | None) -> tuple[LoraRequest, list[str]]:
    warnings: list[str] = []
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        parts = item.split("=")
        if len(parts) == 2:
            key = parts[0].strip().lower()
            if key in named:
                warnings.append(f"{_shown(tag)}: {key}= given twice, the last one wins")
            named[key] = parts[1]
        else:
            positional.append(item)
    if not positional or not positional[0].strip():
        raise _TagError("no LoRA name")
    name = positional[0].strip().replace("\\", "/")

    lbw_spec = named.get("lbw", named.get("w"))
    unet_text = positional[2] if len(positional) > 2 else None
    if unet_text is not None and _looks_like_block_weights(unet_text):
        # lbw extension's older positional form <lora:name:te:PRESET>
        if lbw_spec is None:
            lbw_spec = unet_text
        unet_text = None

    te = _number(positional[1], "te weight") if len(positional) > 1 else 1.0
    if "te" in named:
        te = _number(named["te"], "te weight")
    unet = _number(unet_text, "unet weight") if unet_text is not None else te
    if "unet" in named:
        unet = _number(named["unet"], "unet weight")
    dyn = _integer(positional[3], "dyn") if len(positional) > 3 else None
    if "dyn" in named:
        dyn = _integer(named["dyn"], "dyn")
    if len(positional) > 4:
        warnings.append(f"{_shown(tag)}: extra positional values {positional[4:]!r} ignored")

    lbw = None
    if lbw_spec is not None:
        x_value = _number(named["x"], "x") if "x" in named else 1.0
        try:
            lbw = block_weights.resolve(lbw_spec, family, x_value)
        except block_weights.BlockWeightError as exc:
            raise _TagError(f"block weights: {exc}") from None

    for key in named:
        if key in _IGNORED_OPTIONS:
            warnings.append(f"{_shown(tag)}: {key}= is not supported and was ignored")
        elif key not in ("te", "unet", "dyn", "lbw", "w", "x"):
            warnings.append(f"{_shown(tag)}: unknown option {key}= ignored")
    return LoraRequest(name=name, te=te, unet=unet, dyn=dyn, lbw=lbw, source=tag, kind=kind), warnings


def _range_warning(req: LoraRequest, what: str) -> list[str]:
    low, high = WEIGHT_RANGE
    out = []
    for label, value in (("te", req.te), ("unet", req.unet)):
        if not low <= value <= high:
            hint = "weights above 1.5 usually distort the image" if value > high else "negative weights invert the LoRA"
            out.append(f"{what}: {label} weight {value:g} is outside {low:g}..{high:g} ({hint})")
    return out


def _merge(first: LoraRequest, second: LoraRequest) -> tuple[LoraRequest, list[str]]:
    """Combine two requests for the same LoRA: te adds to te, unet adds to unet.

    dyn: the first one given wins (a warning when they differ). Block weights: the effective
    per-block multiplier is additive (te·lbw[BASE], unet·lbw[block]); the merged vector is
    that sum divided by the summed te/unet, or, when a summed weight is 0, te/unet become 1
    and the vector holds the effective multipliers themselves.
    """
    warnings = []
    te = first.te + second.te
    unet = first.unet + second.unet
    dyn = first.dyn if first.dyn is not None else second.dyn
    if first.dyn is not None and second.dyn is not None and first.dyn != second.dyn:
        warnings.append(f"{first.name}: dyn given as {first.dyn} and {second.dyn}; using {first.dyn}")
    lbw = None
    if first.lbw is not None or second.lbw is not None:
        n = len(first.lbw if first.lbw is not None else second.lbw)
        ones = (1.0,) * n
        a, b = first.lbw or ones, second.lbw or ones
        if len(b) != n:  # a UNet vector and a Flux/SD3 one: they cannot both describe this LoRA
            warnings.append(f"{first.name}: block weights of {n} and {len(b)} values; using the first")
            b = ones
        # leading text-encoder entries: BASE of the 26-value UNet vector; CLIP and T5 of Flux/SD3's
        n_te = 2 if block_weights.layout_ids(n) is not None else 1
        eff = [first.te * a[i] + second.te * b[i] for i in range(n_te)] + [
            first.unet * a[i] + second.unet * b[i] for i in range(n_te, n)
        ]
        if te != 0 and unet != 0:
            lbw = tuple([v / te for v in eff[:n_te]] + [v / unet for v in eff[n_te:]])
        else:
            te, unet, lbw = 1.0, 1.0, tuple(eff)
    source = f"{first.source} {second.source}"
    return replace(first, te=te, unet=unet, dyn=dyn, lbw=lbw, source=source), warnings


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def parse_prompt(text: str, family: str | None = None) -> ParsedPrompt:
    """Split a prompt into clean text and LoRA requests. Never raises on any string.

    `family` ("sd1", "sd2", "sdxl", ...) selects the lbw preset table; None means SD1/SD2 presets.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    result = ParsedPrompt(clean_text="")
    merged: dict[str, LoraRequest] = {}
    order: list[str] = []

    def found(match: re.Match) -> str:
        tag, kind, args = match.group(0), match.group(1), match.group(2)
        if kind.lower() not in LORA_TYPES:
            result.warnings.append(f"{_shown(tag)}: <{kind}:...> is not a LoRA tag; removed and ignored")
            return ""
        if not args.strip():
            result.problems.append(f"{_shown(tag)}: empty tag, expected <{kind}:NAME:WEIGHT>")
            return ""
        try:
            req, warnings = _parse_tag(kind.lower(), args, tag, family)
        except _TagError as exc:
            result.problems.append(f"{_shown(tag)}: {exc}; tag ignored")
            return ""
        result.warnings.extend(warnings)
        result.warnings.extend(_range_warning(req, _shown(tag)))
        if req.name in merged:
            req, warnings = _merge(merged[req.name], req)
            result.warnings.extend(warnings)
            result.warnings.append(f"{req.name}: given more than once; weights added (te {req.te:g}, unet {req.unet:g})")
        else:
            order.append(req.name)
        merged[req.name] = req
        return ""

    # The same tag syntax with an empty argument list (`<lora:>`) never matches `[^<>]*` with
    # content, so `<lora:>` is matched too (args == "") and reported above.
    clean = _TAG.sub(found, text)
    for match in _UNCLOSED.finditer(clean):
        result.problems.append(f"{_shown(match.group(0).strip())}: tag is not closed with '>'; left in the text")
    result.requests = [merged[name] for name in order]
    result.clean_text = _tidy(clean)
    return result
