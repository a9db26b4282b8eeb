"""What the LoRA tab shows about one library entry, as plain data (no HTML, no gradio, no torch).

The library owns the facts (`lora_core.library.Entry`); this module picks and normalises the few
the UI needs, so that the HTML renderer and the JSON routes read one shape. Every string here is
still untrusted (it comes from file names, safetensors metadata, sidecars or Civitai): escaping
happens where it is rendered, in `lora_core.ui.render`, and nowhere is it considered safe.
"""
from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import quote

# Training-tag lists can be huge (one entry per caption token); the UI needs the top few only.
TOP_TRAINING_TAGS = 24
# A metadata value larger than this is shown truncated: a 10 MB string must not reach the page.
MAX_VALUE_CHARS = 4000
# ss_tag_frequency larger than this is not parsed at all (untrusted JSON).
MAX_TAG_JSON_CHARS = 2_000_000
# Characters that would end or split a `<lora:name:w>` tag if they were part of the name.
_TAG_BREAKERS = set("<>:\n\r")


@dataclass
class EntryView:
    """One card / details panel worth of data about a LoRA."""

    key: str                       # the file path: identifies the entry in JS ↔ Python round trips
    name: str                      # file stem
    alias: str                     # ss_output_name or the name
    tag_name: str                  # what goes into <lora:...>: alias unless that is ambiguous/unusable
    folder: str = ""
    family: str = "unknown"
    algorithm: str = ""
    size: int = 0
    mtime: float = 0.0
    triggers: str = ""             # activation text (user sidecar) or Civitai trained words
    activation_text: str = ""      # the sidecar's own activation text (what the editor edits)
    preferred_weight: float = 1.0
    negative_text: str = ""
    description: str = ""
    notes: str = ""
    sd_version: str = ""
    preview_url: str | None = None
    error: str | None = None
    ambiguous: bool = False        # another entry answers to the same name or alias
    favorite: bool = False
    training_tags: list[tuple[str, int]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)     # the file's own metadata (details only)
    summary: dict[str, str] = field(default_factory=dict)      # the library's header summary, flattened
    last_used: float = 0.0
    hashes: dict[str, str] = field(default_factory=dict)
    civitai: dict[str, str] = field(default_factory=dict)
    user_tags: list[str] = field(default_factory=list)
    nsfw_level: str = ""           # Civitai rating of the preview ("R", ...) when known
    blurred: bool = False          # preview above the user's NSFW threshold: shown blurred
    civitai_description: str = ""  # plain text (Civitai sends HTML; tags are stripped, details only)
    civitai_link: str = ""         # http(s) link to the model page (details only)
    match_text: str = ""           # "12 matched, 0 unmatched" for the loaded checkpoint (details only)
    base_model: str = ""           # base_models label ("pony", ...; "" unknown), from the index
    update_name: str = ""          # the newer Civitai version's name, when one exists (badge)
    update_download: str = ""      # what the download queue takes for it ("civitai:model@version")

    @property
    def tag_text(self) -> str:
        """The prompt tag a click inserts, with the preferred weight."""
        return f"<lora:{self.tag_name}:{format_weight(self.preferred_weight)}>"


def format_weight(w: float) -> str:
    """1.0 -> '1', 0.75 -> '0.75': short and stable, like A1111 prints multipliers."""
    if not math.isfinite(w):
        return "1"
    text = f"{w:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    """First present, non-None attribute or mapping key among `names`."""
    for n in names:
        if isinstance(obj, Mapping):
            v = obj.get(n)
        else:
            v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


def _text(v: Any, limit: int = MAX_VALUE_CHARS) -> str:
    if v is None:
        return ""
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= limit else s[:limit] + "…"


def _float(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def parse_training_tags(raw: Any, top: int = TOP_TRAINING_TAGS) -> list[tuple[str, int]]:
    """Most frequent training tags from kohya's `ss_tag_frequency` ({dataset: {tag: count}}).

    Accepts the JSON string as stored in safetensors metadata or an already-decoded dict. Bad JSON
    or odd shapes give an empty list: this is display sugar, never a reason to fail.
    """
    if isinstance(raw, str):
        if len(raw) > MAX_TAG_JSON_CHARS:
            return []
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return []
    if not isinstance(raw, Mapping):
        return []
    totals: dict[str, int] = {}
    for dataset in raw.values():
        if not isinstance(dataset, Mapping):
            continue
        for tag, count in dataset.items():
            tag_s = str(tag).strip()
            if not tag_s:
                continue
            try:
                n = int(count)
            except (TypeError, ValueError):
                continue
            totals[tag_s] = totals.get(tag_s, 0) + n
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(t[:200], n) for t, n in ranked[:top]]


def _string_dict(d: Any) -> dict[str, str]:
    if not isinstance(d, Mapping):
        return {}
    return {str(k): _text(v) for k, v in d.items()}


def _civitai_summary(info: Any) -> tuple[dict[str, str], str]:
    """(display fields, trained words) from a Civitai model-version record (dict or object)."""
    if info is None:
        return {}, ""
    if not isinstance(info, Mapping):
        info = getattr(info, "__dict__", {}) or {}
    out: dict[str, str] = {}
    model = info.get("model") if isinstance(info.get("model"), Mapping) else {}
    for label, value in (
        ("model", model.get("name") or info.get("model_name")),
        ("version", info.get("name") or info.get("version_name")),
        ("base model", info.get("baseModel") or info.get("base_model")),
        ("model id", info.get("modelId") or info.get("model_id")),
        ("url", info.get("url")),
    ):
        if value not in (None, ""):
            out[label] = _text(value, 500)
    words = info.get("trainedWords") or info.get("trained_words") or []
    if isinstance(words, str):
        words = [words]
    trained = ", ".join(_text(w, 200).strip() for w in words if isinstance(w, (str, int, float)) and str(w).strip())
    return out, _text(trained, 1000)


def usable_in_tag(name: str) -> bool:
    return bool(name) and not (set(name) & _TAG_BREAKERS)


def _summary_rows(summary: Any) -> dict[str, str]:
    """Flat, displayable facts from the library's header summary (nested values as JSON text)."""
    if not isinstance(summary, Mapping):
        return {}
    rows: dict[str, str] = {}
    for k, v in summary.items():
        if k in ("top_tags", "family", "algorithm", "alias") or v in (None, "", {}, []):
            continue
        if isinstance(v, (Mapping, list, tuple)):
            try:
                v = json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
            except (TypeError, ValueError):
                v = str(v)
        rows[str(k)] = _text(v, 1000)
    return rows


def view_of(
    entry: Any,
    *,
    favorites: Iterable[str] = (),
    ambiguous_names: Iterable[str] = (),
    preview_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    tag_name: str | None = None,
    ambiguous: bool | None = None,
) -> EntryView:
    """Normalise a library entry (`lora_core.library.Entry`, or any object/mapping with the same
    field names) into an `EntryView`.

    favorites: paths marked favorite (in addition to the entry's own `favorite` flag).
    ambiguous_names: names/aliases (any case) that more than one entry answers to.
    metadata: the file's full safetensors metadata, when the caller read it (details view).
    tag_name / ambiguous: what the caller found by resolving names against the library (see
        `controller.resolve_tag_name`); without them both are guessed from `ambiguous_names`.
    """
    path = str(_attr(entry, "path", default=""))
    name = _text(_attr(entry, "name", default="")) or path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    alias = _text(_attr(entry, "alias", default="")) or name
    ambiguous_set = {a.lower() for a in ambiguous_names}
    flagged = bool(_attr(entry, "ambiguous", default=False))
    alias_ambiguous = alias.lower() in ambiguous_set
    name_ambiguous = name.lower() in ambiguous_set or (flagged and alias == name)
    folder = _text(_attr(entry, "folder", default="")).replace("\\", "/").strip("/")
    if usable_in_tag(alias) and not alias_ambiguous and not (flagged and alias == name):
        guessed_tag = alias
    elif not name_ambiguous or not folder:
        guessed_tag = name
    else:
        # `<lora:folder/NAME>` picks one of several files with the same name (see README).
        guessed_tag = f"{folder}/{name}"
    user = _attr(entry, "user_metadata", "user", default={}) or {}
    if not isinstance(user, Mapping):
        user = {}
    civitai_fields, trained_words = _civitai_summary(_attr(entry, "civitai", "civitai_info"))
    summary = _attr(entry, "summary", default={}) or {}
    raw_meta = metadata if metadata is not None else _attr(entry, "metadata", default={})
    raw_tags = summary.get("top_tags") if isinstance(summary, Mapping) else None
    if raw_tags:
        training_tags = []
        for item in list(raw_tags)[:TOP_TRAINING_TAGS]:
            try:
                tag, count = item
                training_tags.append((_text(tag, 200), int(count)))
            except (TypeError, ValueError):
                continue
    else:
        training_tags = parse_training_tags(raw_meta.get("ss_tag_frequency") if isinstance(raw_meta, Mapping) else None)
    hashes = _attr(entry, "hashes", default=None)
    if not isinstance(hashes, Mapping):
        hashes = {k: _attr(entry, k) for k in ("sha256", "autov2", "addnet_sha256", "autov3") if _attr(entry, k)}
    activation = _text(_attr(user, "activation text", "activation_text", default=""), 2000).strip()
    words = _attr(entry, "trigger_words", default=None)
    if isinstance(words, (list, tuple)):
        triggers = ", ".join(_text(w, 500).strip() for w in words if str(w).strip())
    else:
        triggers = activation or trained_words
    favorite = bool(_attr(entry, "favorite", default=False)) or path in set(favorites)
    if tag_name:
        tag_name = _text(tag_name, 500)
    else:
        tag_name = guessed_tag
    if ambiguous is None:
        ambiguous = flagged or alias_ambiguous or name_ambiguous
    return EntryView(
        key=path,
        name=name,
        alias=alias,
        tag_name=tag_name,
        folder=folder,
        family=_text(_attr(entry, "family", default="unknown")) or "unknown",
        algorithm=_text(_attr(entry, "algorithm", default="")),
        size=int(_float(_attr(entry, "size", default=0), 0)),
        mtime=_float(_attr(entry, "mtime", default=0), 0.0),
        triggers=_text(triggers, 2000),
        activation_text=activation,
        preferred_weight=_float(_attr(user, "preferred weight", "preferred_weight", default=1.0), 1.0) or 1.0,
        negative_text=_text(_attr(user, "negative text", "negative_text", default="")),
        description=_text(_attr(user, "description", default="")),
        notes=_text(_attr(user, "notes", default="")),
        sd_version=_text(_attr(user, "sd version", "sd_version", default="")),
        preview_url=preview_url,
        error=(_text(_attr(entry, "error")) or None),
        ambiguous=bool(ambiguous),
        favorite=favorite,
        training_tags=training_tags,
        metadata=_string_dict(raw_meta),
        summary=_summary_rows(summary),
        hashes={str(k): _text(v, 200) for k, v in hashes.items() if v},
        civitai=civitai_fields,
        last_used=_float(_attr(entry, "last_used", default=0), 0.0),
        user_tags=_user_tags(_attr(entry, "user_tags", default=())),
        base_model=_text(_attr(entry, "base_model", default=""), 40),
    )


def _user_tags(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, (list, tuple, set, frozenset)):
        return []
    return [_text(t, 100).strip() for t in raw if str(t).strip()][:50]


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; block-level tags become line breaks."""

    BREAKS = {"p", "br", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def plain_text(fragment: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """Civitai's HTML description as plain text (tags and scripts dropped, entities decoded).
    The result is still untrusted text: it is escaped where it is rendered."""
    if not isinstance(fragment, str) or not fragment.strip():
        return ""
    parser = _TextOnly()
    try:
        parser.feed(fragment[: limit * 4])
        parser.close()
    except Exception:  # noqa: BLE001 - malformed markup: fall back to the raw text, escaped later
        return _text(fragment, limit)
    text = re.sub(r"[ \t]+", " ", "".join(parser.parts))
    text = re.sub(r"\s*\n\s*(\n\s*)*", "\n", text).strip()
    return _text(text, limit)


def safe_link(url: Any) -> str:
    """The URL if it is plain http(s) (no javascript:, data:, ...), else ''."""
    if not isinstance(url, str):
        return ""
    u = url.strip()
    return u if re.match(r"^https?://[^\s<>\"']+$", u, re.IGNORECASE) and len(u) < 2000 else ""


def preview_url_for(api_prefix: str, path: str, mtime: float = 0.0) -> str:
    """URL of the thumbnail route for an entry; mtime busts the browser cache after an edit."""
    return f"{api_prefix}/thumb?path={quote(path, safe='')}&v={int(mtime)}"
