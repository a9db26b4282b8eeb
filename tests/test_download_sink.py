"""The download sink writes exactly the bytes put into it, in order, after what the part already
held, and hashes the same bytes: with O_DIRECT (gathered into aligned blocks, the last partial
block written through the ordinary descriptor) and with buffered writes. The oracle is the input
itself and hashlib over it."""
from __future__ import annotations

import errno
import hashlib
import os
import random

import pytest

from lora_core.library import download_sink
from lora_core.library.download_sink import ALIGN, Sink

WRITERS = pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "buffered"])


def _pieces(rng: random.Random, total: int) -> list[bytes]:
    """Random sizes as a socket hands them over: tiny, unaligned, several buffers long."""
    out, left = [], total
    while left:
        n = min(left, rng.choice([1, 7, 4095, 4096, 4097, 65_537, 300_001, 1 << 20]))
        out.append(rng.randbytes(n))
        left -= n
    return out


def _run(path: str, head: bytes, pieces: list[bytes], direct: bool, monkeypatch) -> Sink:
    if direct and not download_sink.USE_DIRECT:
        pytest.skip("no O_DIRECT on this system")
    monkeypatch.setattr(download_sink, "USE_DIRECT", direct)
    monkeypatch.setattr(download_sink, "DIRECT_BUFFER", 64 * 1024)  # many full buffers in a small test
    with open(path, "wb") as fh:
        fh.write(head)
    h = hashlib.sha256(head)
    with open(path, "r+b") as fh:
        fh.seek(len(head))
        sink = Sink(fh, path, len(head), h)
        try:
            for p in pieces:
                sink.put(p)
        finally:
            sink.close()
    return sink


@WRITERS
@pytest.mark.parametrize("start", [0, 1, ALIGN - 1, ALIGN, 3 * ALIGN + 123, 64 * 1024 + 5])
def test_bytes_and_hash_match_the_input_from_any_resume_offset(tmp_path, monkeypatch, direct, start):
    rng = random.Random(start * 2 + direct)
    head = rng.randbytes(start)
    pieces = _pieces(rng, 3 * 64 * 1024 + 2 * ALIGN + 17)
    path = str(tmp_path / ".x.part")
    sink = _run(path, head, pieces, direct, monkeypatch)
    want = head + b"".join(pieces)
    got = open(path, "rb").read()
    assert len(got) == len(want) and got == want
    assert sink.h.hexdigest() == hashlib.sha256(want).hexdigest()
    assert sink.direct == direct


@WRITERS
@pytest.mark.parametrize("size", [1, ALIGN - 1, ALIGN, 64 * 1024, 64 * 1024 + 1])
def test_small_and_boundary_sizes(tmp_path, monkeypatch, direct, size):
    data = random.Random(size).randbytes(size)
    path = str(tmp_path / ".y.part")
    _run(path, b"", [data], direct, monkeypatch)
    assert open(path, "rb").read() == data


def test_a_file_system_that_refuses_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    """EINVAL from an O_DIRECT write (a file system that opens but will not write that way): the
    same bytes go through the ordinary descriptor, from that buffer on."""
    if not download_sink.USE_DIRECT:
        pytest.skip("no O_DIRECT on this system")
    real = download_sink._pwrite
    calls = []

    def picky(fd, data, offset):
        direct = _is_direct(fd)
        calls.append(direct)
        if direct and len(calls) > 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(download_sink, "_pwrite", picky)
    rng = random.Random(5)
    head, pieces = rng.randbytes(5000), _pieces(rng, 6 * 64 * 1024 + 999)
    path = str(tmp_path / ".z.part")
    _run(path, head, pieces, True, monkeypatch)
    assert open(path, "rb").read() == head + b"".join(pieces)
    assert calls[:2] == [True, True] and True not in calls[3:], calls


def _is_direct(fd: int) -> bool:
    import fcntl
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_unopenable_direct_falls_back_to_buffered(tmp_path, monkeypatch):
    if not download_sink.USE_DIRECT:
        pytest.skip("no O_DIRECT on this system")
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(download_sink.os, "open", no_direct)
    data = random.Random(9).randbytes(200_000)
    path = str(tmp_path / ".w.part")
    sink = _run(path, b"abc", [data], True, monkeypatch)
    assert not sink.direct and open(path, "rb").read() == b"abc" + data


@WRITERS
def test_a_write_error_is_raised_by_put_or_close_and_nothing_hangs(tmp_path, monkeypatch, direct):
    if direct and not download_sink.USE_DIRECT:
        pytest.skip("no O_DIRECT on this system")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_sink, "_pwrite" if direct else "_write", full)
    with pytest.raises(OSError) as err:
        _run(str(tmp_path / ".v.part"), b"", [b"x" * 100_000] * 40, direct, monkeypatch)
    assert err.value.errno == errno.ENOSPC
