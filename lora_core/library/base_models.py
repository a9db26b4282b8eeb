"""The base model a LoRA was made for, finer than its family, without the network.

`formats.family` tells sd1/sd2/sdxl/flux/sd3 from the tensor keys and shapes; people filter by the
checkpoint lineage on top of that (Pony, Illustrious, NoobAI, SDXL Turbo/Lightning are all "sdxl" to
the patcher). This module reads the evidence a file and its sidecars carry, strongest first:

1. Civitai's `baseModel` from a `.civitai.info` sidecar (the uploader's own label);
2. the checkpoint it was trained on (`ss_sd_model_name`), `modelspec.architecture`,
   `ss_base_model_version`;
3. training captions (`ss_tag_frequency`: Pony's `score_9` tags);
4. the file and folder names ("pony/", "...IllustriousXL...").

An answer whose family contradicts the key-based family (when that is known) is dropped: the keys
are the only evidence a renamed or mislabelled file cannot fake. Pure functions on the index record,
computed once at index time (the index stores the label, so a filter costs an indexed lookup).
"""
from __future__ import annotations

import functools
import re

# label -> (display name, family). The label is what the index stores and the filter takes.
LABELS: dict[str, tuple[str, str]] = {
    "sd1": ("SD 1.5", "sd1"),
    "sd2": ("SD 2", "sd2"),
    "sdxl": ("SDXL", "sdxl"),
    "pony": ("Pony", "sdxl"),
    "illustrious": ("Illustrious", "sdxl"),
    "noobai": ("NoobAI", "sdxl"),
    "sdxl-turbo": ("SDXL Turbo", "sdxl"),
    "sdxl-lightning": ("SDXL Lightning", "sdxl"),
    "flux": ("Flux", "flux"),
    "flux-dev": ("Flux.1 D", "flux"),
    "flux-schnell": ("Flux.1 S", "flux"),
    "sd3": ("SD 3", "sd3"),
    "sd3.5": ("SD 3.5", "sd3"),
}
GENERIC = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "flux": "flux", "sd3": "sd3"}  # family -> label

# Civitai's baseModel strings (its model-version "baseModel" enum), lower case -> label.
_CIVITAI = {
    "sd 1.4": "sd1", "sd 1.5": "sd1", "sd 1.5 lcm": "sd1", "sd 1.5 hyper": "sd1",
    "sd 2.0": "sd2", "sd 2.0 768": "sd2", "sd 2.1": "sd2", "sd 2.1 768": "sd2", "sd 2.1 unclip": "sd2",
    "sdxl 0.9": "sdxl", "sdxl 1.0": "sdxl", "sdxl 1.0 lcm": "sdxl", "sdxl hyper": "sdxl", "sdxl distilled": "sdxl",
    "sdxl turbo": "sdxl-turbo", "sdxl lightning": "sdxl-lightning",
    "pony": "pony", "illustrious": "illustrious", "noobai": "noobai",
    "flux.1 d": "flux-dev", "flux.1 s": "flux-schnell",
    "sd 3": "sd3", "sd 3.5": "sd3.5", "sd 3.5 medium": "sd3.5", "sd 3.5 large": "sd3.5",
    "sd 3.5 large turbo": "sd3.5",
}

# Names (checkpoint names, architecture ids, file/folder names), lower case. Order matters: the
# first pattern that matches wins, sub-families before the families they belong to.
_NAME_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), label) for p, label in (
    (r"noob", "noobai"),
    (r"illustrious|(?<![a-z])ilxl|(?<![a-z])ill?[-_ ]?xl(?![a-z])", "illustrious"),
    (r"pony", "pony"),
    (r"sd[-_]?xl[-_ ]?turbo|(?<![a-z])turbo[-_ ]?xl", "sdxl-turbo"),
    (r"sd[-_]?xl[-_ ]?lightning|lightning[-_ ]?xl", "sdxl-lightning"),
    (r"flux[-_.]?1?[-_.]?schnell|(?<![a-z])schnell(?![a-z])", "flux-schnell"),
    (r"flux[-_.]?1?[-_.]?dev(?![a-z])", "flux-dev"),
    (r"flux(?!ion|ed|es)", "flux"),
    (r"stable-diffusion-3[.-]5|sd[-_ ]?3[.-_]5(?![0-9])", "sd3.5"),
    (r"stable-diffusion-3(?![0-9])|(?<![a-z0-9])sd[-_ ]?3(?![0-9.])", "sd3"),
    (r"stable-diffusion-xl|sd[-_]?xl", "sdxl"),
    (r"stable-diffusion-v2|(?<![a-z0-9])sd[-_ ]?v?2(?:[-_.][01])?(?![0-9])", "sd2"),
    (r"stable-diffusion-v1|(?<![a-z0-9])sd[-_ ]?v?1(?:[-_.][45])?(?![0-9])|(?<![a-z0-9])sd[-_ ]?15(?![0-9a-z])", "sd1"),
))
# All rules in one pattern: most names match none, and one search tells (a scan of 50,000 files
# classifies each once; see docs/BENCHMARKS.md for the index's budget).
_ANY_RULE = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _label in _NAME_RULES))
# Every rule needs one of these substrings: plain `in` tests skip the regex for most file names.
_KEYWORDS = ("noob", "il", "pony", "turbo", "lightning", "flux", "schnell", "stable-diffusion", "sd")
# Caption tags only one lineage uses.
_PONY_TAGS = ("score_9", "score_8_up", "score_7_up")


def label_name(label: str | None) -> str:
    """The display name of a label ("" for none)."""
    return LABELS.get(label or "", ("", ""))[0]


def family_of(label: str | None) -> str | None:
    return LABELS.get(label or "", (None, None))[1]


def from_civitai(base_model: object) -> str | None:
    if not isinstance(base_model, str):
        return None
    return _CIVITAI.get(" ".join(base_model.lower().split()))


def from_name(text: object) -> str | None:
    """The label one name suggests ("ponyDiffusionV6XL" -> pony), None when it says nothing."""
    if not isinstance(text, str) or not text:
        return None
    return _from_name(text[:1000])


@functools.lru_cache(maxsize=4096)  # checkpoint names and architecture ids repeat across files
def _from_name(text: str) -> str | None:
    low = text.lower()
    if not any(word in low for word in _KEYWORDS) or not _ANY_RULE.search(low):
        return None
    for pattern, label in _NAME_RULES:
        if pattern.search(low):
            return label
    return None


def _fits(label: str | None, family: str | None) -> bool:
    """A label is usable when the key-based family is unknown or is the label's family."""
    if label is None:
        return False
    return family in (None, "", "unknown") or LABELS[label][1] == family


def classify(summary: dict | None, civitai: dict | None = None, rel_name: str = "") -> str:
    """The base-model label of one indexed file ("" when nothing says more than an unknown family).

    summary: `inspect_header.summarize` output (family, base_model_version, sd_model_name,
    modelspec, top_tags); civitai: the trimmed `.civitai.info` (baseModel); rel_name: "folder/name"."""
    summary = summary if isinstance(summary, dict) else {}
    family = summary.get("family") if isinstance(summary.get("family"), str) else None
    modelspec = summary.get("modelspec") if isinstance(summary.get("modelspec"), dict) else {}
    candidates = [from_civitai((civitai or {}).get("baseModel") if isinstance(civitai, dict) else None),
                  from_name(summary.get("sd_model_name")),
                  from_name(modelspec.get("modelspec.architecture")),
                  from_name(summary.get("base_model_version"))]
    tags = summary.get("top_tags") or []
    if any(isinstance(t, (list, tuple)) and t and t[0] in _PONY_TAGS for t in tags):
        candidates.append("pony")
    candidates.append(from_name(rel_name))
    found = [c for c in candidates if _fits(c, family)]
    if found and family in (None, "", "unknown"):
        family = LABELS[found[0]][1]  # the strongest source settles the family keys could not
        found = [c for c in found if LABELS[c][1] == family]
    generic = GENERIC.get(family or "")
    # a finer label (Pony) beats a generic one (SDXL) from a stronger source: ss_sd_model_name often
    # names plain "sd_xl_base_1.0" for a LoRA trained on a Pony merge whose name says "pony".
    for label in found:
        if label not in GENERIC:
            return label
    if found:
        return found[0]
    return generic or ""


def compatible(label: str | None) -> tuple[str, ...]:
    """Labels whose LoRAs suit a checkpoint of `label`: its own, and the generic labels of its
    family (a plain SDXL LoRA works on a Pony checkpoint); NoobAI is trained from Illustrious."""
    if not label or label not in LABELS:
        return ()
    family = LABELS[label][1]
    out = [label]
    if label == "noobai":
        out.append("illustrious")
    elif label == "illustrious":
        out.append("noobai")
    if GENERIC.get(family) and GENERIC[family] not in out:
        out.append(GENERIC[family])
    return tuple(out)
