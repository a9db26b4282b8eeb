"""The one atomic file writer (torch-free): temp file in the target's folder, fsync, os.replace.

A reader sees the old file or the new one, never half of one, and a failure leaves the old file.
The new file gets the mode of the file it replaces (a `name.json` at 0644 stays 0644), or the
default mode a new file gets under the process umask (0666 & ~umask) when there was none;
`tempfile.mkstemp` alone would leave every file at 0600.

    atomic_write(path, b"bytes")                       # data
    atomic_write(path, lambda tmp: save_file(t, tmp))  # a writer that writes a file at a path
"""
from __future__ import annotations

import os
import stat
import tempfile
import threading
from typing import Callable, Union

Payload = Union[bytes, bytearray, memoryview, Callable[[str], object]]

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere: set and put back at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def mode_for(path: str | os.PathLike) -> int:
    """Permission bits a replacement of `path` should carry."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, payload: Payload, *, mode: int | None = None,
                 prefix: str | None = None) -> None:
    """Replace `path` with `payload` (bytes, or a callable given the temp file's path to write).

    mode: permission bits of the result (default: those of the file replaced, else the umask's
    default). Raises OSError (the temp file is removed; the old file, if any, is untouched)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    wanted = mode_for(path) if mode is None else mode
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        if callable(payload):
            os.close(fd)
            fd = -1
            payload(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, wanted)
        os.replace(tmp, path)
        tmp = None
        fsync_folder(folder)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def fsync_folder(folder: str) -> None:
    """Make the rename itself durable (best effort: not every system can open a folder)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
