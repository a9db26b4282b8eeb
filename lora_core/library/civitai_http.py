"""HTTP for everything the library fetches (Civitai's API, previews, downloads), over `requests`.

One `requests.Session` per client does the wire work: connection pooling, proxies from the
environment (HTTP(S)_PROXY / NO_PROXY), redirects, streaming, and urllib3's `Retry` for 429/5xx
and read timeouts (our subclass only changes how long it waits and through which sleep function,
so tests can record the waits). What stays ours are the checks a well-kept HTTP library does not
make for us: the API key goes to the Civitai host only, redirects are limited and stay on http(s),
an HTML page where JSON was expected is named as such, and answers are capped in size.

Everything that can go wrong on the wire becomes a `CivitaiHttpError` with a message a user can
act on; the public client (`civitai.py`) turns those into result objects, so nothing here reaches
the app as an exception.
"""
from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

MB = 1024 * 1024
HTML_MESSAGE = "Civitai answered HTML (maybe Cloudflare or maintenance)"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
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
    max_retries: int = 4  # extra attempts after the first, on 429/5xx/read timeouts
    backoff_base: float = 1.0  # first wait; doubles on every retry
    backoff_cap: float = 60.0  # no single wait is longer, whatever Retry-After says
    max_body: int = 20 * MB  # JSON answers larger than this are refused
    max_image: int = 20 * MB
    user_agent: str = "lora_core"
    sleep: Callable[[float], None] = time.sleep  # injected by tests to avoid real waits
    max_redirects: int = 10  # Civitai's download -> CDN takes 1-2; a loop ends here
    service: str = "Civitai"  # names the server in messages


@dataclass(frozen=True)
class HttpResponse:
    status: int
    content_type: str
    body: bytes


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


def host_of(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def short_url(url: str) -> str:
    """URL for messages: without the query string (it may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:200]



class _Retry(Retry):
    """urllib3's Retry with our waits: base * 2**(n-1) capped, at least Retry-After (also capped),
    through an injectable sleep. urllib3 would skip the first wait and sleep Retry-After uncapped."""

    def __init__(self, *args, sleep_fn: Callable[[float], None] = time.sleep, base: float = 1.0,
                 cap: float = 60.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.sleep_fn, self.base, self.cap = sleep_fn, base, cap

    def new(self, **kw):
        fresh = super().new(**kw)
        fresh.sleep_fn, fresh.base, fresh.cap = self.sleep_fn, self.base, self.cap
        return fresh

    def get_backoff_time(self) -> float:
        errors = 0
        for item in reversed(self.history):
            if item.redirect_location is not None:
                break
            errors += 1
        return 0.0 if errors == 0 else min(self.cap, self.base * (2 ** (errors - 1)))

    def sleep(self, response=None) -> None:
        delay = self.get_backoff_time()
        if response is not None:
            wanted = retry_after_seconds(response.headers.get("Retry-After"))
            if wanted is not None:
                delay = max(delay, wanted)
        self.sleep_fn(min(self.cap, delay))


class _Session(requests.Session):
    """requests.Session that refuses redirects off http(s) (a hostile answer must not lead us to
    file:// or ftp://) and strips the API key on every redirect to another host (requests does
    that already for a host change; the auth host check below covers port and scheme moves too)."""

    auth_host = ""

    def get_redirect_target(self, resp):
        target = super().get_redirect_target(resp)
        if target:
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(resp.url, target)).scheme.lower()
            if scheme not in ("http", "https"):
                raise CivitaiHttpError("http", f"redirect to {scheme}: refused", resp.status_code)
        return target

    def rebuild_auth(self, prepared_request, response):
        super().rebuild_auth(prepared_request, response)
        if host_of(prepared_request.url) != self.auth_host:
            prepared_request.headers.pop("Authorization", None)


def make_session(settings: HttpSettings, auth_host: str = "") -> requests.Session:
    """A Session with retries for idempotent reads and the by-hash POST (a lookup, safe to repeat).
    Connection failures are not retried: an offline app must not stall on every file."""
    retry = _Retry(
        total=settings.max_retries, connect=0, read=settings.max_retries, status=settings.max_retries,
        other=0, redirect=settings.max_redirects, allowed_methods=None, status_forcelist=RETRY_STATUSES,
        raise_on_status=False, respect_retry_after_header=True,
        sleep_fn=settings.sleep, base=settings.backoff_base, cap=settings.backoff_cap,
    )
    session = _Session()
    session.auth_host = auth_host.lower()
    session.max_redirects = settings.max_redirects
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=8)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"})
    return session


class HttpClient:
    """One connection policy: headers, timeouts, retries, caps. No state shared between instances."""

    def __init__(self, settings: HttpSettings, api_key: str | None = None, auth_host: str | None = None,
                 auth_scheme: str = "Bearer"):
        self.settings = settings
        self._api_key = api_key or None
        self._auth_scheme = auth_scheme
        # The key goes only to this host itself, never to image CDNs or redirect targets.
        self._auth_host = (auth_host or "").lower()
        self.session = make_session(settings, self._auth_host)

    def close(self) -> None:
        self.session.close()

    def headers_for(self, url: str, accept: str = "*/*", extra: dict | None = None) -> dict:
        headers = {"Accept": accept}
        if self._api_key and host_of(url) == self._auth_host:
            headers["Authorization"] = f"{self._auth_scheme} {self._api_key}"
        headers.update(extra or {})
        return headers

    def open(self, method: str, url: str, *, headers: dict | None = None, accept: str = "*/*",
             data: bytes | None = None, timeout: float | None = None) -> requests.Response:
        """Send and return the streaming response, whatever its status (the caller closes it).
        Raises CivitaiHttpError for transport failures, after the retries."""
        service = self.settings.service
        timeout = self.settings.timeout if timeout is None else timeout
        all_headers = self.headers_for(url, accept, headers)
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        kwargs = {}
        if host_of(url) in LOOPBACK:
            # a local mirror (tests, a LAN cache) must not be sent to a configured proxy
            kwargs["proxies"] = {"no_proxy": ",".join(sorted(LOOPBACK))}
        try:
            return self.session.request(method, url, data=data, headers=all_headers, stream=True,
                                        timeout=timeout, allow_redirects=True, **kwargs)
        except CivitaiHttpError:
            raise
        except requests.exceptions.TooManyRedirects:
            raise CivitaiHttpError("http", f"too many redirects from {short_url(url)}") from None
        except (requests.exceptions.Timeout, TimeoutError):
            raise CivitaiHttpError("timeout", f"{service} did not answer within {timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            if _is_timeout(exc):
                raise CivitaiHttpError("timeout", f"{service} did not answer within {timeout:g} s") from None
            raise CivitaiHttpError("network", f"cannot reach {service}: {_reason(exc)}") from None
        except (requests.exceptions.RequestException, ValueError, OSError) as exc:
            # malformed URL, broken chunked encoding, refused schema, ...
            raise CivitaiHttpError("network", f"cannot reach {service}: {type(exc).__name__}: {exc}") from None

    def read_capped(self, resp: requests.Response, limit: int, url: str) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > limit:
            raise CivitaiHttpError("too_large", f"answer too large ({int(length)} bytes > {limit}) from {short_url(url)}")
        chunks, total = [], 0
        try:
            for chunk in resp.iter_content(256 * 1024):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:  # chunked answers give no Content-Length: the reader stops here
                    raise CivitaiHttpError("too_large", f"answer too large (> {limit} bytes) from {short_url(url)}")
        except requests.exceptions.RequestException as exc:
            if _is_timeout(exc):
                raise CivitaiHttpError("timeout", f"{self.settings.service} did not answer within "
                                                  f"{self.settings.timeout:g} s") from None
            raise CivitaiHttpError("network", f"cannot reach {self.settings.service}: {_reason(exc)}") from None
        return b"".join(chunks)

    def request(self, method: str, url: str, json_body: object = None, *, accept: str = "application/json",
                limit: int | None = None) -> HttpResponse:
        """Send with retries. Returns 2xx and 404 answers; raises CivitaiHttpError for the rest."""
        body = None if json_body is None else json.dumps(json_body).encode("utf-8")
        limit = self.settings.max_body if limit is None else limit
        resp = self.open(method, url, accept=accept, data=body)
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            if resp.status_code < 300 or resp.status_code == 404:
                return HttpResponse(resp.status_code, ctype, self.read_capped(resp, limit, url))
            try:
                # Error bodies are only needed to recognise HTML: keep them small.
                data = self.read_capped(resp, min(limit, 1 * MB), url)
            except CivitaiHttpError:
                data = b""
            raise status_failure(HttpResponse(resp.status_code, ctype, data), url, self.settings.service)


def status_failure(resp: HttpResponse, url: str, service: str = "Civitai") -> CivitaiHttpError:
    if resp.body and looks_like_html(resp.content_type, resp.body):
        if service == "Civitai":
            return CivitaiHttpError("html", f"{HTML_MESSAGE} [HTTP {resp.status}]", resp.status)
        return CivitaiHttpError("html", f"{service} answered an HTML page [HTTP {resp.status}]", resp.status)
    if resp.status == 429:
        return CivitaiHttpError("http", f"{service} rate limit (HTTP 429): too many requests", 429)
    if resp.status in (401, 403):
        return CivitaiHttpError("http", f"{service} refused access (HTTP {resp.status}): check the API key", resp.status)
    return CivitaiHttpError("http", f"{service} answered HTTP {resp.status} for {short_url(url)}", resp.status)


def _is_timeout(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (TimeoutError, requests.exceptions.Timeout)) or "timed out" in type(exc).__name__.lower() \
                or type(exc).__name__ in ("ReadTimeoutError", "ConnectTimeoutError"):
            return True
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc, seen = nxt if isinstance(nxt, BaseException) else exc.__cause__, seen + 1
    return False


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, in a few words (no object reprs)."""
    inner = exc
    for _ in range(8):
        nxt = getattr(inner, "reason", None)
        if nxt is None and inner.args and isinstance(inner.args[0], BaseException):
            nxt = inner.args[0]
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    text = str(inner)
    if "Connection refused" in text or isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "host name not found"
    text = text.split(": ", 1)[-1] if text.startswith("<") else text
    return text[:200] or type(inner).__name__
