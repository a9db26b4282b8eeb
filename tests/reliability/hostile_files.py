"""Hostile and broken LoRA files for the reliability tests, one builder per case.

Every builder writes one file into a folder and returns its path. The files are built from a
valid kohya-style LoRA for the tiny SD1 model of `tests/patcher/engine_makers.py`
(module `lora_unet_down_blocks_0_attentions_0_proj_in`, 8 channels), so a good file of the same
shape really patches that model; each case then breaks one thing.

`CASES` maps a case name to (builder, stage) where stage says where the problem can be seen:
"header" (the torch-free header reader sees it), "data" (only reading the tensors sees it:
NaN/Inf, rank problems; a header-only scan cannot) or "pickle" (a pickle that would run code).
"""
from __future__ import annotations

import json
import os
import pickle
import struct

import torch
from safetensors.torch import save_file

MODULE = "lora_unet_down_blocks_0_attentions_0_proj_in"
MARKER_NAME = "PWNED-by-pickle"


def good_tensors(rank: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        f"{MODULE}.lora_up.weight": torch.randn(8, rank, 1, 1, generator=g) * 0.1,
        f"{MODULE}.lora_down.weight": torch.randn(rank, 8, 1, 1, generator=g) * 0.1,
        f"{MODULE}.alpha": torch.tensor(float(rank)),
    }


def write_good(path) -> str:
    save_file(good_tensors(), os.fspath(path), metadata={"ss_base_model_version": "sd_v1"})
    return os.fspath(path)


def _raw(path, header, data: bytes, header_len: int | None = None) -> str:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if header_len is None else header_len
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + body + data)
    return os.fspath(path)


class _RunsCode:
    """Unpickling this runs `touch <marker>`: the proof that a pickle executed."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_zip_pickle(folder) -> str:
    path = os.path.join(folder, "evil_zip.pt")
    torch.save({f"{MODULE}.lora_up.weight": torch.zeros(8, 2), "x": _RunsCode(os.path.join(folder, MARKER_NAME))}, path)
    return path


def evil_legacy_pickle(folder) -> str:
    path = os.path.join(folder, "evil_legacy.ckpt")
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _RunsCode(os.path.join(folder, MARKER_NAME))}, fh, protocol=2)
    return path


def truncated_body(folder) -> str:
    path = write_good(os.path.join(folder, "truncated.safetensors"))
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[:-20])
    return path


def header_past_end(folder) -> str:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    return _raw(os.path.join(folder, "header_past_end.safetensors"), {f"{MODULE}.alpha": entry}, b"\0" * 4,
                header_len=50_000)


def header_100mb(folder) -> str:
    """Claims a header of 100 MiB + 1 byte, and the file really is that long (sparse): only the
    size limit can refuse it, not the end-of-file check."""
    path = os.path.join(folder, "header_100mb.safetensors")
    n = 100 * 1024 * 1024 + 1
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + b"{")
        fh.truncate(8 + n + 16)
    return path


def invalid_json(folder) -> str:
    return _raw(os.path.join(folder, "invalid_json.safetensors"), b'{"a": {"dtype": "F32", ', b"")


def nested_json(folder) -> str:
    """100,000 nested arrays: a recursive JSON decoder overflows its stack on it."""
    return _raw(os.path.join(folder, "nested_json.safetensors"), b"[" * 100_000 + b"]" * 100_000, b"")


def not_utf8(folder) -> str:
    return _raw(os.path.join(folder, "not_utf8.safetensors"), b'{"\xff\xfe": 1}', b"")


def overlapping(folder) -> str:
    header = {
        f"{MODULE}.lora_up.weight": {"dtype": "F32", "shape": [8, 2, 1, 1], "data_offsets": [0, 64]},
        f"{MODULE}.lora_down.weight": {"dtype": "F32", "shape": [2, 8, 1, 1], "data_offsets": [32, 96]},
    }
    return _raw(os.path.join(folder, "overlapping.safetensors"), header, b"\0" * 96)


def offsets_outside(folder) -> str:
    header = {
        f"{MODULE}.lora_up.weight": {"dtype": "F32", "shape": [8, 2, 1, 1], "data_offsets": [0, 64]},
        f"{MODULE}.lora_down.weight": {"dtype": "F32", "shape": [2, 8, 1, 1], "data_offsets": [1 << 40, (1 << 40) + 64]},
    }
    return _raw(os.path.join(folder, "offsets_outside.safetensors"), header, b"\0" * 64)


def dtype_shape_mismatch(folder) -> str:
    header = {f"{MODULE}.lora_up.weight": {"dtype": "F32", "shape": [8, 2, 1, 1], "data_offsets": [0, 32]}}
    return _raw(os.path.join(folder, "dtype_shape_mismatch.safetensors"), header, b"\0" * 32)


def unknown_dtype(folder) -> str:
    header = {f"{MODULE}.lora_up.weight": {"dtype": "Q3", "shape": [16], "data_offsets": [0, 16]}}
    return _raw(os.path.join(folder, "unknown_dtype.safetensors"), header, b"\0" * 16)


def empty_file(folder) -> str:
    path = os.path.join(folder, "empty.safetensors")
    open(path, "wb").close()
    return path


def _with(folder, name, change) -> str:
    t = good_tensors()
    change(t)
    path = os.path.join(folder, name)
    save_file(t, path)
    return path


def nan_values(folder) -> str:
    return _with(folder, "nan.safetensors", lambda t: t[f"{MODULE}.lora_down.weight"].view(-1).__setitem__(3, float("nan")))


def inf_values(folder) -> str:
    return _with(folder, "inf.safetensors", lambda t: t[f"{MODULE}.lora_up.weight"].view(-1).__setitem__(0, float("-inf")))


def zero_rank(folder) -> str:
    def change(t):
        t[f"{MODULE}.lora_up.weight"] = torch.zeros(8, 0, 1, 1)
        t[f"{MODULE}.lora_down.weight"] = torch.zeros(0, 8, 1, 1)
    return _with(folder, "zero_rank.safetensors", change)


def absurd_rank(folder) -> str:
    def change(t):  # rank 64 on an 8x8 layer: more than the layer's own size
        t[f"{MODULE}.lora_up.weight"] = torch.randn(8, 64, 1, 1)
        t[f"{MODULE}.lora_down.weight"] = torch.randn(64, 8, 1, 1)
    return _with(folder, "absurd_rank.safetensors", change)


CASES = {
    "pickle that runs code (zip .pt)": (evil_zip_pickle, "pickle"),
    "pickle that runs code (legacy .ckpt)": (evil_legacy_pickle, "pickle"),
    "truncated body": (truncated_body, "header"),
    "header length beyond the file": (header_past_end, "header"),
    "100 MiB header": (header_100mb, "header"),
    "invalid JSON header": (invalid_json, "header"),
    "100,000-deep nested JSON header": (nested_json, "header"),
    "header not UTF-8": (not_utf8, "header"),
    "overlapping offsets": (overlapping, "header"),
    "offsets outside the file": (offsets_outside, "header"),
    "dtype/shape vs byte span mismatch": (dtype_shape_mismatch, "header"),
    "unknown dtype": (unknown_dtype, "header"),
    "empty file": (empty_file, "header"),
    "NaN values": (nan_values, "data"),
    "Inf values": (inf_values, "data"),
    "zero rank": (zero_rank, "data"),
    "absurd rank": (absurd_rank, "data"),
}


def build_all(folder) -> dict[str, str]:
    """Write every case into `folder`; returns case name -> path."""
    os.makedirs(folder, exist_ok=True)
    return {name: builder(os.fspath(folder)) for name, (builder, _stage) in CASES.items()}
