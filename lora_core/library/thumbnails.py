"""Small preview thumbnails cached under the data dir (Pillow, imported only when needed).

The cache file name hashes the source path, size and mtime, so a replaced preview gets a new
thumbnail and stale ones are simply never used again.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os

from lora_core.library.sidecars import write_bytes
from lora_core.library.errors import StorageError

logger = logging.getLogger(__name__)

MAX_SOURCE_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs


def _key(source_id: str, size: int) -> str:
    return hashlib.sha256(f"{source_id}|{size}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _render(data_or_path, size: int) -> tuple[bytes, str] | None:
    from PIL import Image  # lazy: Pillow is only needed when a thumbnail is asked for

    try:
        with Image.open(data_or_path) as img:
            if img.width * img.height > MAX_SOURCE_PIXELS:
                logger.warning("preview image too large to thumbnail (%dx%d)", img.width, img.height)
                return None
            img.seek(0)
            img = img.convert("RGBA") if img.mode in ("P", "LA", "RGBA") else img.convert("RGB")
            img.thumbnail((size, size))
            out = io.BytesIO()
            fmt = "WEBP" if img.mode == "RGBA" else "JPEG"
            img.save(out, format=fmt, quality=85)
            return out.getvalue(), ".webp" if fmt == "WEBP" else ".jpg"
    except Exception as exc:  # Pillow raises many types on hostile images
        logger.warning("cannot make a thumbnail: %s", exc)
        return None


def thumbnail(cache_dir: str, source_path: str | None = None, data: bytes | None = None,
              source_id: str | None = None, size: int = 256) -> str | None:
    """Path of a cached thumbnail of an image file (or of image bytes with a stable `source_id`)."""
    try:
        if source_path is not None:
            st = os.stat(source_path)
            source_id = f"{os.path.abspath(source_path)}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return None
    if source_id is None:
        return None
    base = os.path.join(cache_dir, _key(source_id, size))
    for ext in (".jpg", ".webp"):
        if os.path.exists(base + ext):
            return base + ext
    rendered = _render(source_path if source_path is not None else io.BytesIO(data or b""), size)
    if rendered is None:
        return None
    rendered, ext = rendered
    target = base + ext
    try:
        os.makedirs(cache_dir, exist_ok=True)
        write_bytes(target, rendered)
    except (StorageError, OSError) as exc:
        logger.warning("thumbnail cache not written: %s", exc)
        return None
    return target
