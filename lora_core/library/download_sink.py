"""Where a download's bytes go while they arrive: hashed on one thread, written on another.

    sink = Sink(fh, path, start, h)   # fh: the part file at `path`, open for writing, `start` bytes long
    sink.put(chunk) ...         # from the receiving thread, in order
    sink.close()                # every byte put is in the file (not yet fsynced); raises a write's OSError

Socket reads, SHA256 and file writes all release the GIL, so the three overlap on two cores (one
loop would run them one after the other; one thread for both writing and hashing was the slowest,
docs/BENCHMARKS.md "Downloads").

How the bytes reach the disk is the part whose CPU can be saved: curl leaves them in the page cache,
we must make them durable before the link. A buffered write copies every byte into the page cache
and the kernel's writeback threads then send those pages to the disk; on two cores that competes
with the SHA256 that curl does not do. Where the system has O_DIRECT (Linux), the writer gathers
the pieces in one page-aligned buffer and the disk reads it from there: ~0.2 CPU-seconds less per
GB for the whole machine, and the fsync before the link has nothing left to wait for
(docs/BENCHMARKS.md "Downloads"). A file system that refuses it (tmpfs, some network file systems)
gets the buffered writer, as every other system does.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import threading

logger = logging.getLogger(__name__)

ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of every common block size
DIRECT_BUFFER = 4 << 20  # one direct write; the disk keeps up with loopback at this size
QUEUE_PIECES = 32  # at most 32 pieces (<= 32 MiB) waiting for each of the two threads
USE_DIRECT = hasattr(os, "O_DIRECT") and hasattr(os, "pwrite")  # tests turn it off for the other path


def _write(fh, data) -> None:
    """One buffered write (a seam for tests that simulate a full disk)."""
    fh.write(data)


def _pwrite(fd: int, data, offset: int) -> int:
    """One positioned write (the direct writer's seam for tests that simulate a full disk)."""
    return os.pwrite(fd, data, offset)


class _BufferedWriter:
    """Appends through the file object; every WRITEBACK_BYTES the kernel is asked to start writing
    what came so far (not waited for), so the fsync before the link only waits for the last
    stretch instead of the whole file (it was a third of a 1 GB download's time)."""

    WRITEBACK_BYTES = 64 << 20

    def __init__(self, fh, start: int):
        self.fh = fh
        self._mark = self._end = start

    def write(self, chunk) -> None:
        _write(self.fh, chunk)
        self._end += len(chunk)
        if self._end - self._mark >= self.WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Linux: fadvise DONTNEED starts writeback of the dirty pages; elsewhere nothing happens."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            self.fh.flush()
            try:
                advise(self.fh.fileno(), self._mark, self._end - self._mark, os.POSIX_FADV_DONTNEED)
            except OSError:  # a file system without it: the final fsync does all the work
                pass
        self._mark = self._end

    def finish(self) -> None:
        self.fh.flush()

    def release(self) -> None:
        """Nothing to free: the file object belongs to the caller (the direct writer frees its buffer)."""


class _DirectWriter:
    """Gathers the pieces in a page-aligned buffer and writes each full buffer with O_DIRECT at an
    aligned offset. The buffer starts at the block boundary before `start` (on a resume, the bytes
    of that block already in the part are read back into it and written again, unchanged); the
    last partial block goes through the ordinary file descriptor, so the part ends exactly at the
    last byte received. A write the file system refuses (EINVAL) sends this and every later
    buffer through the ordinary descriptor."""

    def __init__(self, fh, start: int, direct_fd: int):
        self.fh, self.fd = fh, direct_fd
        self.buf = mmap.mmap(-1, DIRECT_BUFFER)  # anonymous mappings are page-aligned
        self.view = memoryview(self.buf)
        self.base = start - start % ALIGN  # file offset of buf[0]
        self.fill = start - self.base
        if self.fill:
            head = os.pread(fh.fileno(), self.fill, self.base)
            if len(head) != self.fill:
                raise OSError(errno.EIO, f"the part file is shorter than {start} bytes")
            self.view[:self.fill] = head

    @classmethod
    def open(cls, fh, path: str, start: int) -> "_DirectWriter | None":
        if not USE_DIRECT:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:  # tmpfs, some FUSE/network file systems: buffered it is
            logger.debug("%s: no O_DIRECT (%s); buffered writes", path, exc)
            return None
        try:
            return cls(fh, start, fd)
        except BaseException:
            os.close(fd)
            raise

    def write(self, chunk) -> None:
        data = memoryview(chunk)
        while data:
            n = min(len(data), DIRECT_BUFFER - self.fill)
            self.view[self.fill:self.fill + n] = data[:n]
            self.fill += n
            data = data[n:]
            if self.fill == DIRECT_BUFFER:
                self._flush(DIRECT_BUFFER)
                self.base += DIRECT_BUFFER
                self.fill = 0

    def _flush(self, length: int) -> None:
        """Write buf[:length] (a multiple of ALIGN) at self.base."""
        done = 0
        while done < length and self.fd is not None:
            try:
                n = _pwrite(self.fd, self.view[done:length], self.base + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                logger.info("O_DIRECT write refused (%s); buffered writes from here", exc)
                self._close_direct()
                break
            if n <= 0:
                raise OSError(errno.EIO, "the disk accepted no bytes")
            if n % ALIGN:  # a short write off the block grid (disk nearly full): finish buffered
                self._close_direct()
            done += n
        self._plain(done, length)

    def _plain(self, lo: int, hi: int) -> None:
        while lo < hi:
            n = _pwrite(self.fh.fileno(), self.view[lo:hi], self.base + lo)
            if n <= 0:
                raise OSError(errno.EIO, "the disk accepted no bytes")
            lo += n

    def finish(self) -> None:
        aligned = self.fill - self.fill % ALIGN
        self._flush(aligned)
        self._plain(aligned, self.fill)
        self.base += self.fill
        self.fill = 0

    def _close_direct(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        self._close_direct()
        try:
            self.view.release()
            self.buf.close()
        except BufferError:  # a slice still held (by a write error's traceback): freed with it
            pass


def _as_os_error(exc: Exception) -> OSError:
    """The caller turns OSError into a message naming the file; anything else is a bug, said as much."""
    if isinstance(exc, OSError):
        return exc
    logger.exception("download writer failed")
    return OSError(errno.EIO, f"internal error while writing: {type(exc).__name__}: {exc}")


class Sink:
    """The receiving thread put()s pieces; one thread hashes them, one writes them."""

    def __init__(self, fh, path: str, start: int, h):
        self.h = h
        self.writer = _DirectWriter.open(fh, path, start) or _BufferedWriter(fh, start)
        self._to_disk: queue.Queue = queue.Queue(maxsize=QUEUE_PIECES)
        self._to_hash: queue.Queue = queue.Queue(maxsize=QUEUE_PIECES)
        self.error: OSError | None = None
        self.threads = [threading.Thread(target=loop, name=f"lora_core-download-{what}", daemon=True)
                        for what, loop in (("write", self._write_loop), ("hash", self._hash_loop))]
        for t in self.threads:
            t.start()

    @property
    def direct(self) -> bool:
        return isinstance(self.writer, _DirectWriter)

    def _write_loop(self) -> None:
        while True:
            chunk = self._to_disk.get()
            if chunk is None:
                break
            if self.error is None:  # after an error keep draining so put() never blocks
                try:
                    self.writer.write(chunk)
                except Exception as exc:  # noqa: BLE001 - any failure must reach put()/close()
                    self.error = _as_os_error(exc)
        if self.error is None:
            try:
                self.writer.finish()
            except Exception as exc:  # noqa: BLE001
                self.error = _as_os_error(exc)

    def _hash_loop(self) -> None:
        while True:
            chunk = self._to_hash.get()
            if chunk is None:
                return
            self.h.update(chunk)

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._to_disk.put(chunk)
        self._to_hash.put(chunk)

    def close(self) -> None:
        self._to_disk.put(None)
        self._to_hash.put(None)
        for t in self.threads:
            t.join()
        self.writer.release()
        if self.error is not None:
            raise self.error
