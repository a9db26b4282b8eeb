"""A safetensors checkpoint read lazily and written back by streaming, for `merge`.

A 12B Flux transformer is 24 GB in bf16: `merge` must not hold the whole file in memory to change
the tensors a LoRA touches. The model is bound on shape-only ("meta") tensors first, only the
tensors the stack writes are read, and the output is the input's data area copied byte for byte
with those tensors' new bytes in their places. Every other tensor is therefore bit-identical by
construction, names, order, dtypes and offsets stay as they were, and only the header's metadata
changes.
"""
from __future__ import annotations

import json
import os
from typing import Any

from lora_core.formats.header import read_header

# safetensors dtype -> torch dtype name; a dtype torch cannot hold (F4, F6, F8_E8M0) is copied as
# raw bytes and never bound (no LoRA can patch it anyway)
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                 "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32",
                 "U64": "uint64"}
_COPY_CHUNK = 64 << 20


class CheckpointFile:
    """`path`'s header; raises formats.header.HeaderError for a file that is not safetensors."""

    def __init__(self, path: str):
        self.path = path
        self.header, self.metadata, self.data_offset = read_header(path)

    def meta_state(self) -> dict[str, Any]:
        """{name: a tensor on the meta device with the stored shape and dtype} (no data read)."""
        import torch

        state = {}
        for name, info in self.header.items():
            dtype = getattr(torch, _TORCH_DTYPES.get(info["dtype"], ""), None)
            if isinstance(dtype, torch.dtype):
                state[name] = torch.empty(info["shape"], dtype=dtype, device="meta")
        return state

    def load(self, names) -> dict[str, Any]:
        """The stored tensors `names` (CPU, their dtype)."""
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}

    def write(self, out: str, changed: dict[str, Any], metadata: dict[str, str]) -> None:
        """Writes the checkpoint to `out`: `changed` tensors (same shape and dtype as stored) in
        place of the stored bytes, every other byte of the data area copied, `metadata` as the
        header's metadata."""
        header = {"__metadata__": dict(metadata)} if metadata else {}
        header.update(self.header)
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-len(raw) % 8)   # the data area starts 8-byte aligned, as safetensors writes it
        spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in self.header.items())
        data_size = os.path.getsize(self.path) - self.data_offset
        with open(self.path, "rb") as src, open(out, "wb") as dst:
            dst.write(len(raw).to_bytes(8, "little"))
            dst.write(raw)
            cursor = 0
            for begin, end, name in spans:
                if name not in changed:
                    continue
                _copy(src, dst, self.data_offset + cursor, begin - cursor)
                dst.write(_tensor_bytes(changed[name], end - begin, name))
                cursor = end
            _copy(src, dst, self.data_offset + cursor, data_size - cursor)


def _copy(src, dst, offset: int, size: int) -> None:
    src.seek(offset)
    while size > 0:
        chunk = src.read(min(size, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"{src.name}: file shrank while it was being copied")
        dst.write(chunk)
        size -= len(chunk)


def _tensor_bytes(tensor: Any, size: int, name: str) -> memoryview:
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    if flat.numel() != size:  # a shape or dtype change would move every later tensor
        raise ValueError(f"{name}: {flat.numel()} bytes to write where the checkpoint holds {size}")
    return memoryview(flat.numpy())
