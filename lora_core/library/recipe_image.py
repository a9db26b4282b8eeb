"""The generation text embedded in a picture, read without decoding a single pixel.

PNG: the text chunks (tEXt, zTXt, iTXt) by our own chunk walk: A1111/Forge write `parameters`,
ComfyUI `prompt` (the API graph) and `workflow` (the editor graph). JPEG/WebP: EXIF UserComment
(A1111 writes "UNICODE\\0" + UTF-16, others "ASCII\\0\\0\\0"), the JPEG comment, and the
"Prompt:"/"Workflow:" EXIF strings some ComfyUI savers write.

The bytes are untrusted (a picture dropped from the web): the PNG walk checks every length
against the buffer, compressed chunks are inflated with a hard output cap (a zlib bomb stops at the
cap), JPEG/WebP headers are parsed by Pillow's lazy `open` (no pixel data), and every failure is a
`RecipeImageError` naming the problem.
"""
from __future__ import annotations

import io
import logging
import struct
import zlib

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 4 * 1024 * 1024      # one text value, after inflating
MAX_TOTAL_TEXT = 16 * 1024 * 1024     # all text values of one picture
MAX_CHUNKS = 10_000                   # a PNG of a million empty chunks is not a picture
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_KEYS = ("parameters", "prompt", "workflow", "Comment", "Description")
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_IMAGE_DESCRIPTION = 0x010E
_MAKE = 0x010F


class RecipeImageError(ValueError):
    """The picture cannot be read; str() is a message for the user."""


def image_texts(data: bytes, name: str = "the picture") -> dict[str, str]:
    """{key: text} of the generation text a picture holds ("parameters", "prompt", "workflow",
    "comment"); empty when it holds none. Raises RecipeImageError for an unreadable file."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RecipeImageError(f"{name}: empty file")
    data = bytes(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_texts(data, name)
    if data[:3] == b"\xff\xd8\xff" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return _exif_texts(data, name)
    raise RecipeImageError(f"{name}: not a PNG, JPEG or WebP picture")


# -- PNG -------------------------------------------------------------------------------------------
def _png_texts(data: bytes, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos, total, count = len(_PNG_SIGNATURE), 0, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            if out:  # a truncated tail after the text chunks: keep what was read
                logger.info("%s: PNG truncated after %d bytes", name, pos)
                break
            raise RecipeImageError(f"{name}: damaged PNG (a chunk runs past the end of the file)")
        count += 1
        if count > MAX_CHUNKS:
            raise RecipeImageError(f"{name}: damaged PNG (more than {MAX_CHUNKS} chunks)")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            item = _text_chunk(kind, data[start:end], name)
            if item is not None and item[0] in _TEXT_KEYS and item[0] not in out:
                total += len(item[1])
                if total > MAX_TOTAL_TEXT:
                    raise RecipeImageError(f"{name}: too much text in the picture (over {MAX_TOTAL_TEXT} bytes)")
                out[_key(item[0])] = item[1]
        elif kind == b"IEND":
            break
        pos = end + 4  # skip the CRC: a wrong one changes nothing we read
    return out


def _key(key: str) -> str:
    return "comment" if key in ("Comment", "Description") else key


def _text_chunk(kind: bytes, body: bytes, name: str) -> tuple[str, str] | None:
    keyword, sep, rest = body.partition(b"\0")
    if not sep or not keyword or len(keyword) > 79:
        return None
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, _clip(rest, name, key).decode("latin-1")
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            return None
        return key, _inflate(rest[1:], name, key).decode("latin-1")
    # iTXt: flag, method, language\0, translated keyword\0, text (UTF-8)
    if len(rest) < 2:
        return None
    flag, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        return None
    text = parts[2]
    if flag:
        if method != 0:
            return None
        text = _inflate(text, name, key)
    return key, _clip(text, name, key).decode("utf-8", "replace")


def _clip(raw: bytes, name: str, key: str) -> bytes:
    if len(raw) > MAX_TEXT_BYTES:
        raise RecipeImageError(f"{name}: text {key!r} too large (over {MAX_TEXT_BYTES} bytes)")
    return raw


def _inflate(raw: bytes, name: str, key: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, MAX_TEXT_BYTES + 1)
    except zlib.error as exc:
        raise RecipeImageError(f"{name}: damaged compressed text {key!r} ({exc})") from None
    if len(out) > MAX_TEXT_BYTES or inflater.unconsumed_tail:
        raise RecipeImageError(f"{name}: compressed text {key!r} inflates past {MAX_TEXT_BYTES} bytes")
    return out


# -- JPEG / WebP -----------------------------------------------------------------------------------
def _exif_texts(data: bytes, name: str) -> dict[str, str]:
    from PIL import Image, UnidentifiedImageError

    out: dict[str, str] = {}
    try:
        # open() parses headers only; no pixel is decoded (load() is never called)
        with Image.open(io.BytesIO(data)) as img:
            exif = img.getexif()
            comment = img.info.get("comment")
            exif_ifd = exif.get_ifd(_EXIF_IFD) if exif else {}
            user_comment = exif_ifd.get(_USER_COMMENT) if exif_ifd else None
            strings = [exif.get(_IMAGE_DESCRIPTION), exif.get(_MAKE)] if exif else []
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RecipeImageError(f"{name}: not a readable picture ({exc})") from None
    except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise RecipeImageError(f"{name}: damaged picture metadata ({exc})") from None
    text = decode_user_comment(user_comment)
    if text:
        out["parameters"] = text
    if isinstance(comment, (bytes, str)) and "parameters" not in out:
        value = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else comment
        if value.strip():
            out["parameters"] = value[:MAX_TEXT_BYTES]
    for value in strings:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            continue
        for prefix, key in (("Workflow:", "workflow"), ("Prompt:", "prompt"), ("workflow:", "workflow"),
                            ("prompt:", "prompt")):
            if value.startswith(prefix) and key not in out:
                out[key] = value[len(prefix):][:MAX_TEXT_BYTES]
    return out


def decode_user_comment(raw) -> str:
    """EXIF UserComment -> text: an 8-byte charset prefix ("UNICODE\\0": UTF-16 of either byte
    order, "ASCII\\0\\0\\0", or none) and the text."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw.strip("\0")[:MAX_TEXT_BYTES]
    if not isinstance(raw, (bytes, bytearray)):
        return ""
    raw = bytes(raw[: 2 * MAX_TEXT_BYTES + 8])
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        return _utf16(body).strip("\0")
    if prefix.startswith(b"ASCII") or prefix == b"\0" * 8:
        return body.decode("utf-8", "replace").strip("\0")
    return raw.decode("utf-8", "replace").strip("\0")


def _utf16(body: bytes) -> str:
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", "replace")
    if len(body) < 2:
        return ""
    # no byte order mark: ASCII text has a zero in every high byte, which tells the order
    zeros_even = body[0:200:2].count(0)
    zeros_odd = body[1:200:2].count(0)
    return body.decode("utf-16-be" if zeros_even > zeros_odd else "utf-16-le", "replace")
