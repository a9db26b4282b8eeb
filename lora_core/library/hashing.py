"""File hashes, computed in one pass, and the background worker that fills the index with them.

sha256: the whole file (Civitai "SHA256"; AutoV2 is its first 10 hex digits).
addnet: sha256 of the bytes after the safetensors header (kohya sd-scripts / A1111
        `addnet_hash_safetensors`; AutoV3 and A1111's LoRA short hash are its first 12 hex digits).
        For .pt/.ckpt A1111 uses the whole-file sha256, and so do we.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading

logger = logging.getLogger(__name__)

BLOCK = 1024 * 1024


def hash_file(path: str, is_safetensors: bool, cancel: threading.Event | None = None) -> tuple[str, str] | None:
    """(sha256, addnet) of a file, reading it once; None when cancelled."""
    whole = hashlib.sha256()
    after_header = hashlib.sha256() if is_safetensors else None
    with open(path, "rb") as fh:
        skip = 0
        if is_safetensors:
            head = fh.read(8)
            whole.update(head)
            skip = int.from_bytes(head, "little") if len(head) == 8 else 0
        while True:
            if cancel is not None and cancel.is_set():
                return None
            chunk = fh.read(BLOCK)
            if not chunk:
                break
            whole.update(chunk)
            if after_header is not None:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                after_header.update(chunk[skip:])
                skip = 0
    sha = whole.hexdigest()
    return sha, (after_header.hexdigest() if after_header is not None else sha)


class HashWorker:
    """One daemon thread hashing queued files; never blocks the caller.

    `lookup(path) -> (size, mtime_ns, has_hash) | None` tells whether the index already holds a
    hash for the file as it is now; `store(path, size, mtime_ns, sha, addnet)` saves one.
    progress(done, total, path) is called after each file (from the worker thread).
    """

    def __init__(self, lookup, store):
        self._lookup = lookup
        self._store = store
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._total = 0
        self._done = 0
        self.computed = 0          # files actually hashed (tests check nothing is hashed twice)
        self.errors: dict[str, str] = {}

    def submit(self, paths, progress=None) -> None:
        with self._lock:
            for path in paths:
                if path not in self._pending:
                    self._pending.add(path)
                    self._total += 1
                    self._queue.put((path, progress))
            if self._thread is None or not self._thread.is_alive():
                self._cancel.clear()
                self._thread = threading.Thread(target=self._run, name="lora-hasher", daemon=True)
                self._thread.start()

    def busy(self) -> bool:
        return bool(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue is drained (for tests and the CLI). True when done."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def stop(self) -> None:
        self._cancel.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self):
        while not self._cancel.is_set():
            try:
                path, progress = self._queue.get(timeout=0.5)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self._hash_one(path)
            except Exception as exc:  # one bad file must not stop the worker
                self.errors[path] = str(exc)
                logger.warning("hashing %s failed: %s", path, exc)
            finally:
                with self._lock:
                    self._pending.discard(path)
                    self._done += 1
                    done, total = self._done, self._total
                    if not self._pending:
                        self._done = self._total = 0
                self._queue.task_done()
            if progress is not None:
                try:
                    progress(done, total, path)
                except Exception:  # a UI callback failing must not kill hashing
                    logger.exception("hash progress callback failed")
        # cancelled: drain so wait() returns
        while True:
            try:
                self._queue.get_nowait()
                self._queue.task_done()
            except queue.Empty:
                break
        with self._lock:
            self._pending.clear()
            self._thread = None

    def _hash_one(self, path: str) -> None:
        known = self._lookup(path)
        if known is None:
            return  # no longer indexed
        size, mtime_ns, has_hash = known
        if has_hash:
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            self.errors[path] = exc.strerror or str(exc)
            return
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return  # changed since the scan; the next scan re-queues it
        result = hash_file(path, path.lower().endswith(".safetensors"), self._cancel)
        if result is None:
            return
        st2 = os.stat(path)
        if (st2.st_size, st2.st_mtime_ns) != (size, mtime_ns):
            return  # changed while hashing: the hash would be wrong for either version
        self.computed += 1
        self._store(path, size, mtime_ns, *result)
