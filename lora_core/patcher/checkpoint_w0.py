"""Original weights read back from the safetensors checkpoint a model was loaded from.

A Patcher given one (`w0_source`) keeps no W0 copy of a tensor whose live value equals the
file's: restore and every recompute read W0 from the memory-mapped file instead (from the page
cache while the OS keeps it there, else from disk). For a 12B Flux transformer that is 24 GB of
backups not held; what it costs in restore time: docs/BENCHMARKS.md ("Exact restore without W0
copies"). Only safetensors files are read (never a pickle).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import torch

log = logging.getLogger(__name__)


class CheckpointW0:
    """`source(name)` -> the tensor `name` as stored in `path` (CPU, the file's dtype), or None.

    `names(name)` lists the file keys to try for a model's tensor name (default: the name itself
    and the name without A1111's `.wrapped.` hijack level)."""

    def __init__(self, path: str | os.PathLike, names: Callable[[str], list[str]] | None = None):
        self.path = os.fspath(path)
        self._names = names or default_names
        self._lock = threading.Lock()
        self._handle = None
        self._keys: set[str] | None = None
        self._identity: tuple | None = None  # the file as first opened: (device, inode, size, mtime)

    def _open(self):
        if self._handle is None:
            from safetensors import safe_open

            self._identity = _identity(self.path)
            self._handle = safe_open(self.path, framework="pt", device="cpu")
            self._keys = set(self._handle.keys())
        elif _identity(self.path) != self._identity:
            # rewritten in place since the model was loaded: its tensors are no longer the model's W0
            raise RuntimeError(f"{self.path} changed on disk after the model was loaded; "
                               "its weights can no longer restore the model")
        return self._handle

    def __call__(self, name: str) -> torch.Tensor | None:
        with self._lock:  # one reader of the file handle at a time
            handle = self._open()
            for key in self._names(name):
                if key in self._keys:
                    return handle.get_tensor(key)
        return None

    def close(self) -> None:
        with self._lock:
            self._handle = None
            self._keys = None


def _identity(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def default_names(name: str) -> list[str]:
    plain = name.replace(".wrapped.", ".")
    return [name] if plain == name else [name, plain]


def for_checkpoint(path: str | os.PathLike | None, names: Callable[[str], list[str]] | None = None
                   ) -> CheckpointW0 | None:
    """A source for `path` if it is a readable safetensors file, else None (a .ckpt is a pickle:
    never opened; a missing file: the patcher keeps copies as usual)."""
    if not path or not os.fspath(path).lower().endswith(".safetensors") or not os.path.isfile(path):
        return None
    return CheckpointW0(path, names)
