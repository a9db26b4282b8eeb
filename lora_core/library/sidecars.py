"""Files that sit next to a LoRA: A1111 user metadata, Civitai Helper info, preview images.

`<stem>.json`           A1111 user metadata ("description", "activation text", "preferred weight",
                        "negative text", "notes", "sd version").
`<stem>.civitai.info`   Civitai Helper's copy of the Civitai model-version JSON.
`<stem>.<ext>` / `<stem>.preview.<ext>` for ext in png, jpg, jpeg, webp, gif: preview image,
                        looked up in A1111's order.
Writes are atomic (temp file in the same folder, fsync, os.replace): a failure leaves the old file.
"""
from __future__ import annotations

import json
import logging
import os

from lora_core.library.atomic import atomic_write
from lora_core.library.errors import StorageError

logger = logging.getLogger(__name__)

PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
USER_METADATA_KEYS = ("description", "activation text", "preferred weight", "negative text", "notes", "sd version")
MAX_USER_METADATA_BYTES = 1 * 1024 * 1024
MAX_CIVITAI_BYTES = 8 * 1024 * 1024
MAX_TEXT = 10_000


def stem_of(lora_path: str) -> str:
    return os.path.splitext(lora_path)[0]


def user_metadata_path(lora_path: str) -> str:
    return stem_of(lora_path) + ".json"


def civitai_info_path(lora_path: str) -> str:
    return stem_of(lora_path) + ".civitai.info"


def preview_candidates(stem_name: str) -> list[str]:
    """File names (not paths) that can be the preview of `stem_name`, best first."""
    names = []
    for ext in PREVIEW_EXTENSIONS:
        names += [f"{stem_name}.{ext}", f"{stem_name}.preview.{ext}"]
    return names


def _read_json(path: str, limit: int) -> dict | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read %s: %s", path, exc.strerror or exc)
        return None
    if len(raw) > limit:
        logger.warning("%s is over %d bytes; ignored", path, limit)
        return None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        logger.warning("%s is not valid JSON (%s); ignored", path, str(exc)[:120])
        return None
    if not isinstance(data, dict):
        logger.warning("%s does not hold a JSON object; ignored", path)
        return None
    return data


def _plain(value, depth: int = 0):
    """Keep JSON-ish values bounded: long strings clipped, deep nesting dropped."""
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if depth > 4:
        return None
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value[:100]]
    if isinstance(value, dict):
        return {str(k)[:200]: _plain(v, depth + 1) for k, v in list(value.items())[:200]}
    return str(value)[:MAX_TEXT]


def read_user_metadata(lora_path: str) -> dict:
    data = _read_json(user_metadata_path(lora_path), MAX_USER_METADATA_BYTES)
    return _plain(data) if data else {}


def read_civitai_info(lora_path: str) -> dict | None:
    """The whole `.civitai.info` JSON (None when absent or unreadable)."""
    return _read_json(civitai_info_path(lora_path), MAX_CIVITAI_BYTES)


def trim_civitai(info: dict | None) -> dict | None:
    """The part of a Civitai model-version JSON the library indexes and shows."""
    if not info:
        return None
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    words = info.get("trainedWords") if isinstance(info.get("trainedWords"), list) else []
    images = []
    for image in (info.get("images") if isinstance(info.get("images"), list) else [])[:8]:
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            images.append({k: _plain(image.get(k)) for k in ("url", "nsfw", "nsfwLevel", "width", "height")})
    return _plain({
        "id": info.get("id"),
        "modelId": info.get("modelId"),
        "name": info.get("name"),
        "baseModel": info.get("baseModel"),
        "trainedWords": [w for w in words if isinstance(w, str)][:50],
        "model": {k: model.get(k) for k in ("name", "type", "nsfw") if k in model},
        "description": info.get("description"),
        "images": images,
    })


def write_bytes(path: str, data: bytes) -> None:
    """Replace `path` with `data` by `atomic.atomic_write` (keeps its mode; a new file gets the
    umask's default). Raises StorageError with a readable message."""
    try:
        atomic_write(path, data, prefix=".tmp-")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json(path: str, data: dict) -> None:
    write_bytes(path, json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8"))


def write_user_metadata(lora_path: str, updates: dict) -> dict:
    """Merge `updates` into the `.json` sidecar (keys not given are kept) and write it atomically."""
    current = _read_json(user_metadata_path(lora_path), MAX_USER_METADATA_BYTES) or {}
    current.update(updates)
    write_json(user_metadata_path(lora_path), current)
    return current


def write_civitai_info(lora_path: str, info: dict) -> None:
    write_json(civitai_info_path(lora_path), info)


def find_preview(lora_path: str, names_in_folder: set[str] | None = None) -> str | None:
    folder, base = os.path.split(stem_of(lora_path))
    for candidate in preview_candidates(base):
        if names_in_folder is not None:
            if candidate in names_in_folder:
                return os.path.join(folder, candidate)
        elif os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None
