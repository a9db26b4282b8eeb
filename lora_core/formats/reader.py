"""Reading raw tensors and metadata out of a LoRA file, refusing anything hostile.

`.safetensors` headers are parsed and checked (by the library's one header reader) before any
tensor is touched, so a broken or crafted file gets a message that says what is wrong instead of a
traceback, and the same message everywhere.
Pickled `.pt`/`.ckpt` files go only through `torch.load(weights_only=True)`, which refuses any
pickle that would import or call code.
"""
from __future__ import annotations

import logging
import mmap
import os
import pickle
import struct

import torch

from lora_core.formats.header import HeaderError, read_header

from .errors import LoraFormatError

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")

# Bytes per element of every safetensors dtype torch can hold.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


def read_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors by key as stored, string metadata) or raise LoraFormatError."""
    lower = path.lower()
    if not lower.endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES):
        raise LoraFormatError(path, "unsupported file type (expected .safetensors, .pt, .ckpt, .pth or .bin)")
    if not os.path.exists(path):
        raise LoraFormatError(path, "cannot read file: no such file")
    if not os.path.isfile(path):  # a directory, FIFO or device would block or mislead the readers
        raise LoraFormatError(path, "not a regular file")
    if lower.endswith(SAFETENSORS_SUFFIXES):
        header, metadata = check_safetensors_header(path)
        tensors = _read_safetensors(path, header)
    else:
        tensors, metadata = _read_pickle(path)
    _check_finite(path, tensors)
    return tensors, metadata


def check_safetensors_header(path: str) -> tuple[dict, dict[str, str]]:
    """Validate the header of a safetensors file; return (tensor entries, metadata).

    The checks are the library's (`lora_core.formats.header.read_header`, torch-free),
    so a broken file gets the same message from `info`, `list`, the LoRA tab and generation. Only
    the dtypes torch cannot hold (F4, F6_*, F8_E8M0) are refused here on top of those."""
    try:
        header, metadata, _offset = read_header(path)
    except HeaderError as exc:
        raise LoraFormatError(path, exc.problem) from None
    for key, entry in header.items():
        if entry["dtype"] not in _DTYPE_SIZES:
            raise LoraFormatError(path, f"tensor {key!r}: dtype {entry['dtype']} cannot be loaded (no torch dtype)")
    return header, metadata


# safetensors dtype names -> torch dtypes (every name in _DTYPE_SIZES)
_TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}


def _read_safetensors(path: str, header: dict) -> dict[str, torch.Tensor]:
    """Tensors as views of one private (copy-on-write) memory map of the file: nothing is read
    until it is used, and writing to a tensor never reaches the file.

    Why not safetensors' safe_open: its get_tensor slices a TypedStorage in Python, about 0.1 ms
    per tensor, which was over half of parsing a rank-32 SD1.5 LoRA (~800 tensors); a view here
    costs a few microseconds. The header was validated by check_safetensors_header; the file is
    checked again for having changed size in between.
    """
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as e:
        raise LoraFormatError(path, f"cannot map the file: {e}") from e
    (header_len,) = struct.unpack_from("<Q", mapped, 0)
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for key, entry in header.items():
        begin, end = entry["data_offsets"]
        if base + end > len(mapped):
            raise LoraFormatError(path, "the file changed while it was read (shorter than its header says)")
        dtype = _TORCH_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        if end == begin:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        t = torch.frombuffer(mapped, dtype=dtype, count=(end - begin) // _DTYPE_SIZES[entry["dtype"]],
                             offset=base + begin).view(shape)
        if t.data_ptr() % t.element_size():  # an unaligned tensor: a copy, so later kernels never see one
            t = t.clone()
        tensors[key] = t
    return tensors


def _read_pickle(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not know: the file wants to run code.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoraFormatError(
            path, f"refused: the pickle would import or run code, which is never allowed ({first[:200]})"
        ) from e
    except Exception as e:
        raise LoraFormatError(path, f"not a readable PyTorch file ({type(e).__name__}: {str(e)[:200]})") from e

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise LoraFormatError(path, f"expected a dict of tensors, found {type(obj).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for key, value in obj.items():
        key = str(key)
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tensors[key] = torch.tensor(float(value))  # some trainers pickle alpha as a number
        elif isinstance(value, str):
            metadata[key] = value
        else:
            logger.debug("%s: skipping non-tensor entry %r (%s)", path, key, type(value).__name__)
    return tensors, metadata


# Accumulator for the one-op finiteness test of a small tensor: wide enough that a sum of finite
# values cannot overflow (65504 · 2^31 < 3.4e38 for fp16; fp32/bf16 maxima times any count fit fp64).
_SUM_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float64, torch.float32: torch.float64}
# Below this many elements a tensor's cost is op dispatch, not data: one reduction (a sum) per
# tensor and a single test of all sums at the end beat abs+amax+test per tensor about 2-3×
# (a rank-32 SD1.5 LoRA has ~800 such tensors). Larger tensors keep the faster max |x| pass.
_SMALL = 1 << 16


def _check_finite(path: str, tensors: dict[str, torch.Tensor]) -> None:
    # One intra-op thread: the check reads each byte once (memory-bound, so a second thread buys
    # little), and on a loaded machine a descheduled worker made it 10-50x slower (0.04 s -> 0.5-2.8 s
    # for a 20 MB SD1.5 LoRA on 2 busy cores).
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        _check_finite_tensors(path, tensors)
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _check_finite_tensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    small: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for key, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            t = t.to(torch.float16)
        acc = _SUM_DTYPE.get(t.dtype)
        if acc is not None and t.numel() <= _SMALL:
            # NaN anywhere makes the sum NaN, ±Inf makes it ±Inf or NaN; finite values cannot overflow
            small.setdefault(acc, []).append((key, t.sum(dtype=acc)))
            continue
        # max |x| is NaN/Inf iff some element is; several times faster than isfinite().all()
        # on half-precision CPU tensors, which matters for 200 MB SDXL files.
        if not bool(torch.isfinite(t.abs().amax())):
            raise LoraFormatError(path, f"tensor {key!r} holds NaN or Inf values")
    for sums in small.values():
        ok = torch.isfinite(torch.stack([x for _k, x in sums]))
        if not bool(ok.all()):
            bad = sums[int((~ok).nonzero()[0, 0])][0]
            raise LoraFormatError(path, f"tensor {bad!r} holds NaN or Inf values")
