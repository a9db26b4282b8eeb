"""Sidecar files next to a LoRA, in the layout Civitai Helper and A1111 use.

`name.civitai.info`: the model-version JSON as Civitai returned it, plus an `extensions` entry
(`extensions.lora_core`, beside Civitai Helper's `extensions.sd_civitai_helper`) recording when and
how lora_core fetched it and the NSFW level of the preview. `name.preview.png`: the preview image,
re-encoded as PNG by Pillow (never the downloaded bytes as they came).

All writes go to a temporary file in the same folder and are moved over the target with os.replace,
so a reader never sees half a file and a crash leaves the old file intact.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from lora_core.library.atomic import atomic_write

logger = logging.getLogger(__name__)

INFO_SUFFIX = ".civitai.info"
PREVIEW_SUFFIX = ".preview.png"
EXTENSION_KEY = "lora_core"
MAX_INFO_BYTES = 32 * 1024 * 1024  # reading
MAX_INFO_WRITE = 8 * 1024 * 1024  # the library index ignores larger info files
_ESSENTIAL_KEYS = ("id", "modelId", "name", "baseModel", "baseModelType", "trainedWords", "description",
                   "model", "files", "images", "downloadUrl", "nsfwLevel", "air", "createdAt",
                   "publishedAt", "updatedAt", "stats", "creator", "extensions")
MAX_PREVIEW_PIXELS = 64_000_000  # decoding more would cost hundreds of MB: refuse
PREVIEW_MAX_SIDE = 1024  # card previews are small; keep sidecars light
# Files that count as an existing preview: a user's own image is never overwritten by default.
PREVIEW_CANDIDATES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".preview.gif",
                      ".png", ".jpg", ".jpeg", ".webp", ".gif")


class PreviewError(ValueError):
    pass


def _stem_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem)  # "/x/name.safetensors" -> "/x/name"


def info_path(model_path: str | os.PathLike) -> Path:
    return Path(str(_stem_path(model_path)) + INFO_SUFFIX)


def preview_path(model_path: str | os.PathLike) -> Path:
    return Path(str(_stem_path(model_path)) + PREVIEW_SUFFIX)


def existing_preview(model_path: str | os.PathLike) -> Path | None:
    stem = str(_stem_path(model_path))
    for suffix in PREVIEW_CANDIDATES:
        candidate = Path(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def write_info(model_path: str | os.PathLike, version_json: dict, extra: dict | None = None) -> Path:
    """Write `name.civitai.info`: Civitai's version JSON + `extensions.lora_core` = extra.

    Other extensions' entries already in an existing info file are kept.
    """
    data = dict(version_json)
    # An "extensions" key inside Civitai's answer is not trusted: only the one on disk is merged.
    extensions = {}
    old = read_info(model_path)
    if old is not None and isinstance(old.get("extensions"), dict):
        extensions.update(old["extensions"])
    extensions[EXTENSION_KEY] = dict(extra or {})
    data["extensions"] = extensions
    payload = json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_INFO_WRITE:
        # Readers (the library index, Civitai Helper) skip huge info files; keep what they use.
        data = {k: data[k] for k in _ESSENTIAL_KEYS if k in data}
        for key in ("images", "files"):
            if isinstance(data.get(key), list):
                data[key] = data[key][:20]
        if isinstance(data.get("description"), str):
            data["description"] = data["description"][:100_000]
        payload = json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8")
        if len(payload) > MAX_INFO_WRITE:
            raise ValueError(f"Civitai info for {Path(model_path).name} is too large to store")
    target = info_path(model_path)
    atomic_write(target, payload)  # keeps the mode of the file it replaces
    return target


def read_info(model_path: str | os.PathLike) -> dict | None:
    """The parsed `name.civitai.info`, or None when absent, unreadable or not a JSON object."""
    path = info_path(model_path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_INFO_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        logger.warning("unreadable Civitai info %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def image_to_png(data: bytes, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """Decode an untrusted image (any format Pillow reads; first frame of animations) to PNG bytes."""
    from PIL import Image, UnidentifiedImageError  # Pillow only when a preview is written

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w <= 0 or h <= 0 or w * h > MAX_PREVIEW_PIXELS:
                raise PreviewError(f"image too large to decode ({w}x{h})")
            im.seek(0)
            im.load()
            if im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB")
            if max(im.size) > max_side:
                im.thumbnail((max_side, max_side))
            out = io.BytesIO()
            im.save(out, format="PNG")
            return out.getvalue()
    except PreviewError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PreviewError(f"not a readable image: {type(exc).__name__}: {exc}") from None


def write_preview(model_path: str | os.PathLike, image_bytes: bytes, max_side: int = PREVIEW_MAX_SIDE) -> Path:
    """Convert to PNG and write `name.preview.png` atomically. Raises PreviewError on a bad image."""
    png = image_to_png(image_bytes, max_side)
    target = preview_path(model_path)
    atomic_write(target, png)
    return target
