"""Real small or read-only filesystems for the disk tests: a size-limited tmpfs (a disk that fills
up for real, ENOSPC from the kernel) and a read-only bind mount (root ignores permission bits,
not a read-only mount). Both need root with CAP_SYS_ADMIN, which CI has (same machine kind as
root); where mount is refused the caller skips with that reason, and the monkeypatched tests in
the same file still cover the behaviour."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest


def _run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def _refused(why: str):
    pytest.skip(f"mount refused here ({why.strip()[:200]}); needs root with CAP_SYS_ADMIN")


@contextlib.contextmanager
def tiny_tmpfs(path, size: str = "256k"):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        _refused("not root")
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", os.fspath(path))
    if r.returncode != 0:
        _refused(r.stderr)
    try:
        yield os.fspath(path)
    finally:
        _run("umount", "-l", os.fspath(path))


@contextlib.contextmanager
def read_only_bind(source, path):
    """`path` shows `source` read-only (writes through `source` itself still work)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        _refused("not root")
    r = _run("mount", "--bind", os.fspath(source), os.fspath(path))
    if r.returncode != 0:
        _refused(r.stderr)
    try:
        r = _run("mount", "-o", "remount,bind,ro", os.fspath(path))
        if r.returncode != 0:
            _refused(r.stderr)
        yield os.fspath(path)
    finally:
        _run("umount", "-l", os.fspath(path))


def fill(folder, leave: int = 0) -> str:
    """Fill the filesystem of `folder` until fewer than `leave` bytes are free. Returns the filler path."""
    filler = os.path.join(os.fspath(folder), ".filler")
    with open(filler, "ab", buffering=0) as fh:
        chunk = b"\0" * 4096
        while True:
            st = os.statvfs(os.fspath(folder))
            if st.f_bavail * st.f_frsize <= leave:
                break
            try:
                fh.write(chunk)
            except OSError:
                break
    return filler
