"""Torch-free reader and validator of a safetensors header.

Layout: 8 bytes little-endian header length N, N bytes of UTF-8 JSON, then the data area.
The JSON maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the data area) plus an optional "__metadata__" map of str -> str.
Only the header is read; tensor bytes are never touched.
"""
from __future__ import annotations

import json
import os

MAX_HEADER_BYTES = 100 * 1024 * 1024

# bits per element of each safetensors dtype
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class HeaderError(ValueError):
    """A file whose safetensors header is unusable; `problem` says why."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _check_tensor(name: str, info, data_size: int) -> tuple[int, int]:
    # Called for every tensor of every file indexed: plain loops, no generator expressions.
    if type(info) is not dict:
        raise ValueError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    bits = DTYPE_BITS.get(dtype) if type(dtype) is str else None
    if bits is None:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if type(shape) is not list:
        raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        bits *= d
    if type(offsets) is not list or len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or begin < 0:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    if end < begin:
        raise ValueError(f"tensor {name!r}: data_offsets end {end} before begin {begin}")
    if end > data_size:
        raise ValueError(f"tensor {name!r}: data_offsets end {end} beyond the data area ({data_size} bytes)")
    if bits % 8 or bits // 8 != end - begin:
        raise ValueError(
            f"tensor {name!r}: {dtype} {shape} needs {bits / 8:g} bytes but data_offsets span {end - begin}"
        )
    return begin, end


def parse_header_bytes(raw: bytes, data_size: int) -> tuple[dict, dict[str, str]]:
    """Validate header JSON bytes against a data area of `data_size` bytes. Raises ValueError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"header is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"header is a JSON {type(obj).__name__}, not an object")
    raw_meta = obj.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict):
        raise ValueError("__metadata__ is not an object")
    # The format says str -> str; some producers write numbers: keep them readable as text.
    metadata = {
        str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in raw_meta.items()
    }
    spans = sorted((_check_tensor(name, info, data_size), name) for name, info in obj.items())
    previous_end, previous_name = 0, None
    for (begin, end), name in spans:
        if begin < previous_end:
            raise ValueError(f"tensor {name!r} overlaps tensor {previous_name!r} in the data area")
        if end > begin:
            previous_end, previous_name = end, name
    return obj, metadata


def read_header(path) -> tuple[dict, dict[str, str], int]:
    """Return (tensor header, metadata, data_offset) of a .safetensors file.

    data_offset is the absolute file offset of the data area (8 + header length).
    Raises HeaderError(path, problem) for any unusable header; OSError is wrapped too.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise HeaderError(path, f"file is {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(fh.read(8), "little")
            if n > MAX_HEADER_BYTES:
                raise HeaderError(path, f"header length {n} is over the {MAX_HEADER_BYTES} byte limit")
            if 8 + n > size:
                raise HeaderError(path, f"header length {n} goes beyond the end of the {size}-byte file (truncated?)")
            raw = fh.read(n)
            if len(raw) != n:
                raise HeaderError(path, "file shrank while reading the header")
    except OSError as exc:
        raise HeaderError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        header, metadata = parse_header_bytes(raw, size - 8 - n)
    except ValueError as exc:
        raise HeaderError(path, str(exc)) from None
    return header, metadata, 8 + n
