"""Typed, validated views of Civitai's JSON answers.

Civitai's answers are untrusted: every field is type-checked, strings and lists are capped, junk
fields are ignored and a wrong shape gives a `CivitaiShapeError` with a readable reason. Strings are
kept as plain data (descriptions are HTML written by strangers: whoever renders them must escape or
sanitise them; nothing here builds markup).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .civitai_nsfw import nsfw_level

MAX_NAME = 500
MAX_DESCRIPTION = 200_000
MAX_URL = 2_000
MAX_WORDS = 200
MAX_WORD = 2_000
MAX_IMAGES = 100
MAX_FILES = 50
MAX_VERSIONS = 1_000
MAX_ID = 2**53  # JSON numbers beyond this are not exact in JavaScript; Civitai ids are far below

_HASH_RE = re.compile(r"^[0-9A-Fa-f]{8,64}$")


class CivitaiShapeError(ValueError):
    """The JSON parsed, but is not shaped like the Civitai object we asked for."""


def normalize_hash(value: object) -> str | None:
    """Upper-case hex hash (AutoV1/V2/V3, SHA256, CRC32, BLAKE3) or None when it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not _HASH_RE.match(text):
        return None
    return text.upper()


def _str(value: object, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str):
        return ""
    return value[:limit]


def _opt_str(value: object, limit: int = MAX_NAME) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _int(value: object) -> int | None:
    # bool is an int subclass in Python; a JSON true is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value < 0 or value >= MAX_ID:
        return None
    return value


def _http_url(value: object) -> str | None:
    """Only absolute http(s) URLs: urllib would also open file:// or ftp:// from a hostile answer."""
    if not isinstance(value, str) or len(value) > MAX_URL:
        return None
    low = value.strip().lower()
    if low.startswith("https://") or low.startswith("http://"):
        if any(c in value for c in "\r\n\t ") or any(ord(c) < 32 for c in value):
            return None
        return value.strip()
    return None


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class CivitaiImage:
    url: str
    nsfw_level: int  # one of civitai_nsfw.PG..BLOCKED
    width: int | None = None
    height: int | None = None
    kind: str = "image"  # Civitai's "type": "image" or "video"


@dataclass(frozen=True)
class CivitaiVersion:
    """One model version, as much as lora_core uses of it."""

    version_id: int
    model_id: int
    name: str  # version name, e.g. "v1.0"
    model_name: str
    model_type: str  # "LORA", "LoCon", "Checkpoint", ...
    base_model: str  # "SD 1.5", "SDXL 1.0", "Pony", ...
    trained_words: tuple[str, ...]
    description: str  # version description (untrusted HTML, may be empty)
    model_description: str  # parent model description when known (untrusted HTML)
    link: str
    nsfw_level: int
    images: tuple[CivitaiImage, ...] = ()
    hashes: frozenset[str] = field(default_factory=frozenset)  # all file hashes, upper-case
    download_url: str | None = None
    model_nsfw: bool = False


def model_link(base_url: str, model_id: int, version_id: int | None = None) -> str:
    link = f"{base_url.rstrip('/')}/models/{model_id}"
    if version_id is not None:
        link += f"?modelVersionId={version_id}"
    return link


def parse_images(value: object) -> tuple[CivitaiImage, ...]:
    images = []
    for item in _list(value)[:MAX_IMAGES]:
        if not isinstance(item, dict):
            continue
        url = _http_url(item.get("url"))
        if url is None:
            continue
        # nsfwLevel (int bits) is current; "nsfw" (string or bool) is the older field.
        raw_level = item.get("nsfwLevel", item.get("nsfw"))
        kind = item.get("type")
        images.append(
            CivitaiImage(
                url=url,
                nsfw_level=nsfw_level(raw_level),
                width=_int(item.get("width")),
                height=_int(item.get("height")),
                kind=kind if kind in ("image", "video") else "image",
            )
        )
    return tuple(images)


def parse_file_hashes(value: object) -> frozenset[str]:
    found = set()
    for item in _list(value)[:MAX_FILES]:
        if not isinstance(item, dict) or not isinstance(item.get("hashes"), dict):
            continue
        for h in list(item["hashes"].values())[:20]:
            norm = normalize_hash(h)
            if norm:
                found.add(norm)
    return frozenset(found)


def parse_version(data: object, base_url: str) -> CivitaiVersion:
    """A model-version object (by-hash and model-versions/{id} answers, or an element of a batch)."""
    if not isinstance(data, dict):
        raise CivitaiShapeError(f"expected a JSON object for a model version, got {type(data).__name__}")
    version_id = _int(data.get("id"))
    model_id = _int(data.get("modelId"))
    if version_id is None or model_id is None:
        raise CivitaiShapeError("model version without a numeric id/modelId")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    words = []
    for w in _list(data.get("trainedWords"))[:MAX_WORDS]:
        if isinstance(w, str) and w.strip():
            words.append(w.strip()[:MAX_WORD])
    images = parse_images(data.get("images"))
    if "nsfwLevel" in data:
        level = nsfw_level(data.get("nsfwLevel"))
    elif images:
        level = max(i.nsfw_level for i in images)
    else:
        level = nsfw_level(model.get("nsfw"))
    return CivitaiVersion(
        version_id=version_id,
        model_id=model_id,
        name=_str(data.get("name")),
        model_name=_str(model.get("name")),
        model_type=_str(model.get("type"), 50),
        base_model=_str(data.get("baseModel"), 100),
        trained_words=tuple(words),
        description=_str(data.get("description"), MAX_DESCRIPTION),
        model_description=_str(model.get("description"), MAX_DESCRIPTION),
        link=model_link(base_url, model_id, version_id),
        nsfw_level=level,
        images=images,
        hashes=parse_file_hashes(data.get("files")),
        download_url=_http_url(data.get("downloadUrl")),
        model_nsfw=model.get("nsfw") is True,
    )


def parse_version_list(data: object) -> list[dict]:
    """The batch by-hash answer: a JSON array of model versions. Non-object items are dropped."""
    if not isinstance(data, list):
        raise CivitaiShapeError(f"expected a JSON array of model versions, got {type(data).__name__}")
    return [item for item in data[:MAX_VERSIONS] if isinstance(item, dict)]


@dataclass(frozen=True)
class ModelVersionSummary:
    version_id: int
    name: str
    base_model: str
    published_at: str  # ISO date text as given ("" when absent)


@dataclass(frozen=True)
class CivitaiModel:
    """The parent model (GET /api/v1/models/{id}): enough for an update check."""

    model_id: int
    name: str
    model_type: str
    description: str
    versions: tuple[ModelVersionSummary, ...]  # in Civitai's order: newest first


def parse_model(data: object) -> CivitaiModel:
    if not isinstance(data, dict):
        raise CivitaiShapeError(f"expected a JSON object for a model, got {type(data).__name__}")
    model_id = _int(data.get("id"))
    if model_id is None:
        raise CivitaiShapeError("model without a numeric id")
    versions = []
    for item in _list(data.get("modelVersions"))[:MAX_VERSIONS]:
        if not isinstance(item, dict):
            continue
        vid = _int(item.get("id"))
        if vid is None:
            continue
        # Unpublished/draft versions are not updates anyone can download.
        status = item.get("status")
        if isinstance(status, str) and status not in ("Published", ""):
            continue
        versions.append(
            ModelVersionSummary(
                version_id=vid,
                name=_str(item.get("name")),
                base_model=_str(item.get("baseModel"), 100),
                published_at=_str(item.get("publishedAt") or item.get("createdAt"), 40),
            )
        )
    return CivitaiModel(
        model_id=model_id,
        name=_str(data.get("name")),
        model_type=_str(data.get("type"), 50),
        description=_str(data.get("description"), MAX_DESCRIPTION),
        versions=tuple(versions),
    )
