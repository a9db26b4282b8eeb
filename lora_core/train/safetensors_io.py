"""Byte-for-byte reproducible safetensors files.

The safetensors library writes the metadata map in hash order, which changes from call to call,
so the same tensors and metadata give different file bytes (and sha256). Here the tensor part is
serialised by the library (deterministic) and the header is rewritten with sorted metadata.
"""
from __future__ import annotations

import json
from pathlib import Path


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    blob = save(tensors)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])  # keeps the library's tensor order (offsets stay valid)
    if metadata:
        header = {"__metadata__": {str(k): str(metadata[k]) for k in sorted(metadata)}, **header}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n:]


def write_safetensors(path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomic write (temp file + fsync + rename): an interrupted save never leaves half a file; the
    file keeps the mode of the one it replaces (a new one: the umask's default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from lora_core.library.atomic import atomic_write

    atomic_write(path, safetensors_bytes(tensors, metadata))
    return path
