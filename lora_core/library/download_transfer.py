"""One file over HTTP into a folder: resumable, verified, and never half-written under its final name.

    fetch(http, url, final_path, control, sha256=None) -> sha256 (upper-case hex)

The bytes go to `.<name>.part` in the target folder (hidden; the library scans only LoRA
extensions), with `.<name>.part.json` recording the URL, ETag/Last-Modified and total size so an
interrupted transfer resumes with `Range` + `If-Range`. A server that answers 200 to a Range (it
ignores ranges, or the file changed), a Content-Range total that differs from the one recorded,
or a wrong hash after a resume restart the transfer from byte 0; a 416 saying the part already
holds the whole file (`bytes */<part size>`) finishes from the part when the published hash or
the same strong ETag vouches for it. The finished file is hashed
(SHA256, compared with the published one), fsynced and hard-linked into place (so an existing
file is never replaced), then the part is removed. The bytes are hashed and written on two
threads while the next piece arrives (`download_sink`: O_DIRECT where the file system takes it).

Every failure raises `DownloadError(kind, message, resumable)`; pause/cancel raise `Interrupted`.
After a failure that cannot be resumed (disk full, wrong hash, cancel) no part file is left.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import requests
import urllib3

from .atomic import current_umask, fsync_folder
from .civitai_http import CivitaiHttpError, HttpClient, short_url
from .download_sink import Sink

logger = logging.getLogger(__name__)

# One socket read. 256 KiB pieces hash ~10% faster (still in the CPU cache) but cost the receiving
# thread 60% more Python per byte, 4 MiB ones were slower too (docs/BENCHMARKS.md "Downloads").
CHUNK = 1024 * 1024
MAX_RESTARTS = 3  # automatic resumes/restarts of one file before giving up
SPACE_MARGIN = 16 * 1024 * 1024  # keep this much free beyond the file itself
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.I)  # a 416's "bytes */<size>"
_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{64})"?$')


class DownloadError(Exception):
    """kind: auth | not_found | http | html | network | timeout | truncated | changed | hash | disk_full |
    exists | storage. resumable: the part file is kept and a resume continues it."""

    def __init__(self, kind: str, message: str, resumable: bool = False, status: int | None = None):
        super().__init__(message)
        self.kind, self.message, self.resumable, self.status = kind, message, resumable, status


class Interrupted(Exception):
    """The transfer stopped because the user paused (part kept) or cancelled (part removed)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Control:
    """Shared between the queue and a running transfer."""
    pause: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int, int | None], None] = lambda done, total: None
    note: Callable[[str], None] = lambda text: None  # "restarted: the server ignores resume", ...
    auth_advice: str = ""  # appended to 401/403 messages (where to set the key)
    timeout: float = 60.0
    stats: dict = field(default_factory=dict)  # fsync_s: seconds spent making the file durable


def part_paths(final_path: str) -> tuple[str, str]:
    folder, name = os.path.split(final_path)
    part = os.path.join(folder, f".{name}.part")
    return part, part + ".json"


def remove_parts(final_path: str) -> None:
    for p in part_paths(final_path):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove %s: %s", p, exc)


def _load_meta(meta_path: str) -> dict:
    try:
        with open(meta_path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_meta(meta_path: str, data: dict) -> None:
    with open(meta_path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


def _validator(resp: requests.Response) -> tuple[str | None, str | None]:
    etag = resp.headers.get("ETag")
    return (etag if etag and not etag.startswith("W/") else None), resp.headers.get("Last-Modified")


def published_sha256(resp: requests.Response) -> str | None:
    """Hugging Face names an LFS file's SHA256 in X-Linked-Etag (on the redirect) or its ETag."""
    for r in [*resp.history, resp]:
        for name in ("X-Linked-Etag", "ETag"):
            m = _SHA256.match((r.headers.get(name) or "").strip())
            if m:
                return m.group(1).upper()
    return None


def _status_error(resp: requests.Response, url: str, control: Control) -> DownloadError:
    status = resp.status_code
    where = short_url(url)
    if status in (401, 403):
        advice = f" {control.auth_advice}" if control.auth_advice else ""
        return DownloadError("auth", f"access refused (HTTP {status}) for {where}: this file needs an API key "
                                     f"or a login.{advice}", status=status)
    if status == 404:
        return DownloadError("not_found", f"not found (HTTP 404): {where}; the file may have been removed or "
                                          "the link is wrong", status=status)
    if status == 410:
        return DownloadError("not_found", f"gone (HTTP 410): {where}", status=status)
    return DownloadError("http", f"the server answered HTTP {status} for {where}", resumable=status >= 500 or
                         status == 429, status=status)


def _chunks(resp: requests.Response):
    """The body as it arrives: read1 hands over each piece at once, so a connection that breaks
    mid-file loses nothing already received (a resume continues from the last byte written);
    read(CHUNK) would drop the piece it was filling."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:
        yield from resp.iter_content(CHUNK)
        return
    # undecoded when nothing is encoded: urllib3 then hands the socket's piece over as it is
    # instead of passing it through its decoded-bytes queue (a copy for every short read)
    encoded = resp.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")
    while True:
        chunk = read1(CHUNK, decode_content=encoded)
        if not chunk:
            return
        yield chunk


def _hash_file(path: str, upto: int) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = upto
        while left > 0:
            block = fh.read(min(8 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def _check_space(folder: str, need: int, final_path: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > 0 and free < need + SPACE_MARGIN:
        raise DownloadError("disk_full", f"not enough disk space for {os.path.basename(final_path)} in {folder}: "
                                         f"{need / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free")


def fetch(http: HttpClient, url: str, final_path: str, control: Control, *, sha256: str | None = None) -> str:
    """Download `url` to `final_path` (see the module docstring). Returns the file's SHA256."""
    final_path = os.path.abspath(final_path)
    part, meta_path = part_paths(final_path)
    expected = sha256.upper() if sha256 else None
    meta = _load_meta(meta_path)
    if meta.get("url") != url or meta.get("sha256") != expected or not os.path.isfile(part):
        remove_parts(final_path)  # a part of another file (or another version): start over
        meta = {}
    restarts = 0
    while True:
        offset = os.path.getsize(part) if meta and os.path.isfile(part) else 0
        try:
            digest = _transfer(http, url, final_path, part, meta_path, meta, offset, control, expected)
        except _Restart as again:
            restarts += 1
            if again.reason:
                control.note(again.reason)
            if restarts > MAX_RESTARTS:
                if not again.keep:
                    remove_parts(final_path)
                raise DownloadError(again.kind, f"{again.reason or 'transfer failed'} (gave up after "
                                    f"{MAX_RESTARTS} tries)", resumable=again.keep) from None
            if not again.keep:
                remove_parts(final_path)
                meta = {}
            else:
                meta = _load_meta(meta_path)
            continue
        return digest


class _Restart(Exception):
    def __init__(self, reason: str, keep: bool, kind: str = "truncated"):
        super().__init__(reason)
        self.reason, self.keep, self.kind = reason, keep, kind


def _transfer(http, url, final_path, part, meta_path, meta, offset, control, expected) -> str:
    folder, name = os.path.split(final_path)
    headers = {"Accept-Encoding": "identity"}  # byte offsets must mean file offsets
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("etag") or meta.get("last_modified"):
            headers["If-Range"] = meta.get("etag") or meta["last_modified"]
    try:
        resp = http.open("GET", url, headers=headers, timeout=control.timeout)
    except CivitaiHttpError as exc:
        raise DownloadError(exc.kind if exc.kind in ("network", "timeout") else "http", exc.message,
                            resumable=True) from None
    with resp:
        status = resp.status_code
        if status == 416 and offset:
            if _part_is_whole_file(resp, offset, meta, expected):
                return _finish_whole_part(part, final_path, offset, expected, control)
            raise _Restart("the server refused to resume; restarting from the start", keep=False)
        if status not in (200, 206):
            raise _status_error(resp, url, control)
        ctype = resp.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:
            advice = f" If it is a login page: {control.auth_advice}" if control.auth_advice else ""
            raise DownloadError("html", f"{short_url(url)} answered a web page instead of the file (a login, "
                                        f"error or maintenance page).{advice}", status=status)
        etag, modified = _validator(resp)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        start, total = 0, length
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise _Restart("the server answered an unexpected range; restarting from the start", keep=False)
            start = offset
            total = int(m.group(3)) if m.group(3) != "*" else None
            if meta.get("total") and total is not None and total != meta["total"]:
                raise _Restart("the file changed on the server; restarting from the start", keep=False,
                               kind="changed")
        elif offset:
            changed = (meta.get("etag") and etag and etag != meta["etag"]) or (
                meta.get("total") and length is not None and length != meta["total"])
            control.note("the file changed on the server; restarted from the start" if changed
                         else "the server does not support resuming; restarted from the start")
        _check_space(folder, (total or 0) - start, final_path)
        # the caller's hash (not one read from headers) is what decides whether a part is reusable
        _save_meta(meta_path, {"url": url, "sha256": expected, "etag": etag, "last_modified": modified,
                               "total": total})
        expected = expected or published_sha256(resp)
        h = _hash_file(part, start) if start else hashlib.sha256()
        done = start
        control.progress(done, total)
        try:
            with open(part, "r+b" if start else "wb") as fh:
                fh.seek(start)
                fh.truncate()
                sink = Sink(fh, part, start, h)
                control.stats["direct_io"] = sink.direct
                try:
                    for chunk in _chunks(resp):
                        if control.cancel.is_set() or control.pause.is_set():
                            break
                        sink.put(chunk)
                        done += len(chunk)
                        control.progress(done, total)
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                    # connection broken or read timed out: what arrived is kept; the byte count
                    # below decides between resuming and finishing
                    logger.info("%s: transfer broke at %d bytes: %s", name, done, exc)
                finally:
                    sink.close()  # raises the sink's OSError (disk full) after it stopped
                fh.flush()
                t = time.perf_counter()
                os.fsync(fh.fileno())  # before the link: a crash must not leave a short file under the name
                control.stats["fsync_s"] = control.stats.get("fsync_s", 0.0) + time.perf_counter() - t
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                remove_parts(final_path)
                raise DownloadError("disk_full", f"disk full while writing {name} into {folder}; nothing was "
                                                 "kept. Free some space and download it again.") from None
            remove_parts(final_path)
            raise DownloadError("storage", f"cannot write {name} into {folder}: {exc.strerror or exc}") from None
    if control.cancel.is_set():
        remove_parts(final_path)
        raise Interrupted("cancelled")
    if control.pause.is_set():
        raise Interrupted("paused")
    if total is not None and done != total:
        raise _Restart(f"the transfer ended early ({done} of {total} bytes)", keep=done < total)
    digest = h.hexdigest().upper()
    if expected and digest != expected.upper():
        if start:
            raise _Restart("the file changed on the server (hash differs); restarting from the start",
                           keep=False, kind="hash")
        remove_parts(final_path)
        raise DownloadError("hash", f"{name}: SHA256 mismatch (expected {expected.upper()[:16]}…, got "
                                    f"{digest[:16]}…); the download was deleted")
    control.stats["verified"] = bool(expected)  # compared with a published hash (not just computed)
    _place(part, final_path)
    remove_parts(final_path)
    return digest


def _part_is_whole_file(resp: requests.Response, offset: int, meta: dict, expected: str | None) -> bool:
    """A 416 to `Range: bytes=<offset>-` with `Content-Range: bytes */<offset>`: the part already
    holds every byte (a pause or a crash after the last byte, before the link). Only worth
    finishing when something besides the length can vouch for the bytes: the caller's SHA256, or
    the same strong ETag as when the part was written."""
    m = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
    if not m or int(m.group(1)) != offset or (meta.get("total") not in (None, offset)):
        return False
    etag, _ = _validator(resp)
    return bool(expected) or bool(etag and meta.get("etag") == etag)


def _finish_whole_part(part: str, final_path: str, size: int, expected: str | None, control: Control) -> str:
    """Hash the complete part; the right bytes are made durable and linked into place, the wrong
    ones start the transfer over (the caller's restart)."""
    control.progress(size, size)
    digest = _hash_file(part, size).hexdigest().upper()
    if expected and digest != expected.upper():
        raise _Restart("the kept part does not match the published hash; restarting from the start",
                       keep=False, kind="hash")
    with open(part, "r+b") as fh:
        os.fsync(fh.fileno())  # a crash before the link may have left it only in the page cache
    control.note("the kept part already held the whole file; checked and finished without downloading")
    control.stats["verified"] = bool(expected)
    _place(part, final_path)
    remove_parts(final_path)
    return digest


def _place(part: str, final_path: str) -> None:
    """Give the part the mode a new file gets, then link it under its final name (never replacing a
    file that appeared meanwhile); where hard links fail, a rename that does not overwrite."""
    os.chmod(part, 0o666 & ~current_umask())
    try:
        os.link(part, final_path)
    except FileExistsError:
        remove_parts(final_path)
        raise DownloadError("exists", f"{final_path} appeared while downloading; the download was not kept") from None
    except OSError:
        if os.path.exists(final_path):
            remove_parts(final_path)
            raise DownloadError("exists", f"{final_path} already exists") from None
        os.rename(part, final_path)
    fsync_folder(os.path.dirname(final_path))


def sha256_of(path: str) -> str:
    return _hash_file(path, os.path.getsize(path)).hexdigest().upper()

