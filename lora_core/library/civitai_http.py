"""HTTP for the Civitai client: retries with capped exponential backoff, size caps, HTML detection.

Everything that can go wrong on the wire becomes a `CivitaiHttpError` with a message a user can act
on; the public client (`civitai.py`) turns those into result objects, so nothing here reaches the app
as an exception.
"""
from __future__ import annotations

import email.utils
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)

MB = 1024 * 1024
HTML_MESSAGE = "Civitai answered HTML (maybe Cloudflare or maintenance)"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


class CivitaiHttpError(Exception):
    """kind: network | timeout | http | html | too_large | json."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HttpSettings:
    timeout: float = 20.0  # seconds per attempt (connect and each read)
    max_retries: int = 4  # extra attempts after the first, on 429/5xx/timeouts
    backoff_base: float = 1.0  # first wait; doubles on every retry
    backoff_cap: float = 60.0  # no single wait is longer, whatever Retry-After says
    max_body: int = 20 * MB  # JSON answers larger than this are refused
    max_image: int = 20 * MB
    user_agent: str = "lora_core"
    sleep: Callable[[float], None] = time.sleep  # injected by tests to avoid real waits


@dataclass(frozen=True)
class HttpResponse:
    status: int
    content_type: str
    body: bytes


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): a hostile answer must not lead urllib to ftp:// or file://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {scheme}: refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def looks_like_html(content_type: str, body: bytes) -> bool:
    if "html" in content_type.lower():
        return True
    # JSON never starts with "<"; HTML error pages (Cloudflare, maintenance, proxies) always do.
    return body[:512].lstrip().startswith(b"<")


def decode_json(resp: HttpResponse) -> object:
    if looks_like_html(resp.content_type, resp.body):
        raise CivitaiHttpError("html", HTML_MESSAGE, resp.status)
    try:
        return json.loads(resp.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CivitaiHttpError("json", f"Civitai answered malformed JSON ({type(exc).__name__})", resp.status)


class HttpClient:
    """One connection policy: headers, timeouts, retries, caps. No state shared between instances."""

    def __init__(self, settings: HttpSettings, api_key: str | None = None, auth_host: str | None = None):
        self.settings = settings
        self._api_key = api_key or None
        # The key goes only to the Civitai host itself, never to image CDNs or redirect targets.
        self._auth_host = (auth_host or "").lower()
        self._opener = urllib.request.build_opener(_SafeRedirect)  # honours http(s)_proxy from the env
        # A loopback base URL (local mirror, tests) must not be sent to a configured proxy.
        self._direct_opener = urllib.request.build_opener(_SafeRedirect, urllib.request.ProxyHandler({}))

    def _make_request(self, method: str, url: str, body: bytes | None, accept: str) -> urllib.request.Request:
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("User-Agent", self.settings.user_agent)
        req.add_header("Accept", accept)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        if self._api_key and host == self._auth_host:
            # Unredirected: urllib copies ordinary headers onto redirects to other hosts.
            req.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
        return req

    def _read_capped(self, fp, headers, limit: int, url: str) -> bytes:
        length = headers.get("Content-Length") if headers is not None else None
        if length and length.strip().isdigit() and int(length) > limit:
            raise CivitaiHttpError("too_large", f"answer too large ({int(length)} bytes > {limit}) from {_short(url)}")
        chunks, total = [], 0
        while True:
            chunk = fp.read(min(256 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise CivitaiHttpError("too_large", f"answer too large (> {limit} bytes) from {_short(url)}")
        return b"".join(chunks)

    def _attempt(self, method, url, body, accept, limit) -> HttpResponse:
        req = self._make_request(method, url, body, accept)
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        opener = self._direct_opener if host in _LOOPBACK else self._opener
        try:
            with opener.open(req, timeout=self.settings.timeout) as resp:
                data = self._read_capped(resp, resp.headers, limit, url)
                return HttpResponse(resp.status, resp.headers.get("Content-Type", ""), data)
        except urllib.error.HTTPError as err:
            try:
                # Error bodies are only needed to recognise HTML or a JSON 404: keep them small.
                data = self._read_capped(err, err.headers, min(limit, 1 * MB), url)
            except CivitaiHttpError:
                data = b""
            except (OSError, ValueError):
                data = b""
            finally:
                err.close()
            ctype = err.headers.get("Content-Type", "") if err.headers is not None else ""
            resp = HttpResponse(err.code, ctype, data)
            resp_retry_after = err.headers.get("Retry-After") if err.headers is not None else None
            raise _StatusError(resp, resp_retry_after) from None

    def request(self, method: str, url: str, json_body: object = None, *, accept: str = "application/json",
                limit: int | None = None) -> HttpResponse:
        """Send with retries. Returns 2xx and 404 answers; raises CivitaiHttpError for the rest."""
        body = None if json_body is None else json.dumps(json_body).encode("utf-8")
        limit = self.settings.max_body if limit is None else limit
        attempt = 0
        while True:
            retry_after = None
            try:
                return self._attempt(method, url, body, accept, limit)
            except _StatusError as st:
                resp = st.response
                if resp.status == 404:
                    return resp
                if resp.status not in RETRY_STATUSES:
                    raise _status_failure(resp, url) from None
                failure = _status_failure(resp, url)
                retry_after = retry_after_seconds(st.retry_after)
            except CivitaiHttpError:
                raise
            except (socket.timeout, TimeoutError) as exc:
                failure = CivitaiHttpError("timeout", f"Civitai did not answer within {self.settings.timeout:g} s")
                logger.debug("timeout on %s: %s", _short(url), exc)
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    failure = CivitaiHttpError("timeout", f"Civitai did not answer within {self.settings.timeout:g} s")
                else:
                    # DNS failure, refused connection, TLS error: retrying soon rarely helps and an
                    # offline app must not stall on every file.
                    raise CivitaiHttpError("network", f"cannot reach Civitai: {reason}") from None
            except (ConnectionError, OSError, ValueError) as exc:
                # Connection reset mid-answer, malformed URL, broken chunked encoding, ...
                raise CivitaiHttpError("network", f"cannot reach Civitai: {type(exc).__name__}: {exc}") from None
            except Exception as exc:  # http.client raises odd things on garbage answers
                raise CivitaiHttpError("network", f"bad answer from Civitai: {type(exc).__name__}: {exc}") from None

            if attempt >= self.settings.max_retries:
                raise failure
            delay = min(self.settings.backoff_cap, self.settings.backoff_base * (2 ** attempt))
            if retry_after is not None:
                delay = min(self.settings.backoff_cap, max(delay, retry_after))
            attempt += 1
            logger.info("Civitai: %s; retry %d/%d in %.1f s", failure.message, attempt,
                        self.settings.max_retries, delay)
            self.settings.sleep(delay)


class _StatusError(Exception):
    def __init__(self, response: HttpResponse, retry_after: str | None):
        super().__init__(response.status)
        self.response = response
        self.retry_after = retry_after


def _status_failure(resp: HttpResponse, url: str) -> CivitaiHttpError:
    if resp.body and looks_like_html(resp.content_type, resp.body):
        return CivitaiHttpError("html", f"{HTML_MESSAGE} [HTTP {resp.status}]", resp.status)
    if resp.status == 429:
        return CivitaiHttpError("http", "Civitai rate limit (HTTP 429): too many requests", 429)
    if resp.status in (401, 403):
        return CivitaiHttpError("http", f"Civitai refused access (HTTP {resp.status}): check the API key", resp.status)
    return CivitaiHttpError("http", f"Civitai answered HTTP {resp.status} for {_short(url)}", resp.status)


def _short(url: str) -> str:
    """URL for messages: without the query string (it may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:200]
