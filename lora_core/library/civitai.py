"""Civitai client: what Civitai knows about a LoRA file, from its hash; sidecars next to the file.

Public API (no exceptions escape for network or data problems: every call returns a result whose
`status` is "found", "not_found" or "error" with a `message`, so the app works offline):

    client = CivitaiClient(base_url="https://civitai.com", api_key=None, data_dir=...)
    client.lookup(hash) -> LookupResult                      # GET  /api/v1/model-versions/by-hash/{hash}
    client.lookup_many(hashes, progress=cb) -> {hash: LookupResult}   # POST /api/v1/model-versions/by-hash
    client.check_update(model_id, version_id) -> UpdateResult         # GET  /api/v1/models/{id}
    client.fetch_for_file(model_path, hash) -> FileResult    # lookup + name.civitai.info + name.preview.png
    client.fetch_for_files([(model_path, hash), ...], progress=cb) -> [FileResult]
    version_from_info(model_path), preview_level_from_info(model_path)   # offline, from the sidecar
    is_blurred(level, threshold)                             # from civitai_nsfw

A hash Civitai answers 404 for is remembered under `data_dir` and not asked again for
`recheck_days`. Strings from Civitai are stored as data; nothing here renders them.
"""
from __future__ import annotations

import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from . import civitai_files
from .civitai_http import HTML_MESSAGE, MB, CivitaiHttpError, HttpClient, HttpSettings, decode_json, looks_like_html
from .civitai_notfound import NotFoundStore
from .civitai_nsfw import PG13, is_blurred, level_name, nsfw_level  # is_blurred re-exported
from .civitai_parse import (
    CivitaiImage,
    CivitaiModel,
    CivitaiShapeError,
    CivitaiVersion,
    ModelVersionSummary,
    model_link,
    normalize_hash,
    parse_model,
    parse_version,
    parse_version_list,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://civitai.com"
API_KEY_ENV = "CIVITAI_API_KEY"
FOUND, NOT_FOUND, ERROR = "found", "not_found", "error"

# progress(done, total, result) after each hash; returning False cancels the rest.
Progress = Callable[[int, int, "LookupResult"], object]


@dataclass(frozen=True)
class LookupResult:
    status: str  # FOUND | NOT_FOUND | ERROR
    hash: str  # the hash as looked up (upper-case)
    version: CivitaiVersion | None = None
    raw: dict | None = None  # the version JSON as Civitai sent it (what goes into .civitai.info)
    message: str = ""
    cached: bool = False  # NOT_FOUND from the local record: no request was made
    # for ERROR: network | timeout | http | html | too_large | json | shape | invalid | skipped | cancelled
    error_kind: str = ""

    @property
    def found(self) -> bool:
        return self.status == FOUND


@dataclass(frozen=True)
class UpdateResult:
    status: str  # FOUND (the model was read) | NOT_FOUND | ERROR
    model_id: int
    current_version_id: int
    has_update: bool = False
    latest: ModelVersionSummary | None = None  # newest published version
    link: str = ""  # page of the newest version
    model: CivitaiModel | None = None
    message: str = ""


@dataclass(frozen=True)
class FileResult:
    path: Path
    lookup: LookupResult
    info_path: Path | None = None  # written this time
    preview_path: Path | None = None  # written this time, or the existing one kept
    preview_nsfw_level: int | None = None
    message: str = ""


def _default_user_agent() -> str:
    from lora_core import __version__

    return f"lora_core/{__version__} (+Stable Diffusion LoRA manager)"


class CivitaiClient:
    """Talks to one Civitai base URL. Holds no global state; create one per settings change."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        data_dir: str | os.PathLike | None = None,
        *,
        use_env_key: bool = True,
        timeout: float = 20.0,
        max_retries: int = 4,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        max_body: int = 20 * MB,
        max_image: int = 20 * MB,
        recheck_days: float = 7.0,
        batch_size: int = 100,
        user_agent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        parts = urllib.parse.urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Civitai base URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.strip().rstrip("/")
        if api_key is None and use_env_key:
            api_key = os.environ.get(API_KEY_ENV)
        self.has_api_key = bool(api_key and api_key.strip())
        self.batch_size = max(1, int(batch_size))
        self._clock = clock
        self._http = HttpClient(
            HttpSettings(
                timeout=timeout,
                max_retries=max(0, int(max_retries)),
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                max_body=max_body,
                max_image=max_image,
                user_agent=user_agent or _default_user_agent(),
                sleep=sleep,
            ),
            api_key=api_key.strip() if self.has_api_key else None,
            auth_host=parts.hostname,
        )
        self.not_found = NotFoundStore(data_dir, recheck_days=recheck_days, clock=clock)

    # ---- lookups -------------------------------------------------------------------------------

    def _api(self, path: str) -> str:
        return f"{self.base_url}/api/v1/{path}"

    def lookup(self, hash_: str, *, force: bool = False) -> LookupResult:
        """One hash (SHA256 preferred; AutoV2/AutoV3/CRC32/BLAKE3 also work on Civitai)."""
        h = normalize_hash(hash_)
        if h is None:
            return _invalid(hash_)
        if not force and self.not_found.is_known_missing(h):
            return LookupResult(NOT_FOUND, h, message="not on Civitai (remembered)", cached=True)
        try:
            resp = self._http.request("GET", self._api(f"model-versions/by-hash/{h}"))
            data = _json_or_404(resp)
            if data is _MISSING:
                self.not_found.remember([h])
                return LookupResult(NOT_FOUND, h, message="not on Civitai")
            version = parse_version(data, self.base_url)
        except CivitaiHttpError as exc:
            return LookupResult(ERROR, h, message=exc.message, error_kind=exc.kind)
        except CivitaiShapeError as exc:
            return _shape_error(h, exc)
        return LookupResult(FOUND, h, version=version, raw=data)

    def lookup_many(self, hashes: Iterable[str], progress: Progress | None = None, *,
                    force: bool = False) -> dict[str, LookupResult]:
        """Many hashes with batched requests. Keys of the answer are the hashes as given.

        Hashes remembered as missing are answered locally. After a transport failure (offline,
        timeouts, rate limit that outlasts the retries, HTML) the remaining hashes are not sent and
        get an error result, so a scan of hundreds of files ends quickly without a network.
        """
        given = list(hashes)
        norm: dict[str, str | None] = {g: normalize_hash(g) for g in given}
        unique = list(dict.fromkeys(h for h in norm.values() if h is not None))
        total = len(unique) + sum(1 for h in norm.values() if h is None)
        results: dict[str, LookupResult] = {}  # by normalised hash (or the invalid text)
        done = 0
        cancelled = False

        def report(result: LookupResult) -> None:
            nonlocal done, cancelled
            results[result.hash] = result
            done += 1
            if progress is not None and not cancelled and progress(done, total, result) is False:
                cancelled = True

        for g, h in norm.items():
            if h is None:
                report(_invalid(g))
        to_ask = []
        for h in unique:
            if not force and self.not_found.is_known_missing(h):
                report(LookupResult(NOT_FOUND, h, message="not on Civitai (remembered)", cached=True))
            else:
                to_ask.append(h)

        failure: str | None = None
        for start in range(0, len(to_ask), self.batch_size):
            chunk = to_ask[start:start + self.batch_size]
            if cancelled or failure is not None:
                for h in chunk:
                    if cancelled:
                        report(LookupResult(ERROR, h, message="cancelled", error_kind="cancelled"))
                    else:
                        report(LookupResult(ERROR, h, message=f"skipped after an earlier failure: {failure}",
                                            error_kind="skipped"))
                continue
            for result in self._lookup_chunk(chunk):
                # Reaching Civitai failed (not just one odd answer): do not hammer it with the rest.
                if result.error_kind in _TRANSPORT_KINDS and failure is None:
                    failure = result.message
                report(result)

        return {g: results[h if h is not None else str(g)[:80]] for g, h in norm.items()}

    def _lookup_chunk(self, chunk: list[str]) -> list[LookupResult]:
        try:
            resp = self._http.request("POST", self._api("model-versions/by-hash"), chunk)
            data = _json_or_404(resp)
            if data is _MISSING:
                raise _BatchUnsupported("HTTP 404 on the batch endpoint")
            items = parse_version_list(data)
        except _BatchUnsupported as exc:
            logger.info("Civitai batch lookup unavailable (%s); asking one hash at a time", exc)
            return self._lookup_each(chunk)
        except CivitaiHttpError as exc:
            if exc.kind == "http" and exc.status in (400, 405, 501):
                logger.info("Civitai batch lookup refused (%s); asking one hash at a time", exc.message)
                return self._lookup_each(chunk)
            return [LookupResult(ERROR, h, message=exc.message, error_kind=exc.kind) for h in chunk]
        except CivitaiShapeError as exc:
            return [_shape_error(h, exc) for h in chunk]

        wanted = set(chunk)
        matched: dict[str, LookupResult] = {}
        unattributed = 0  # versions in the answer whose listed file hashes match nothing we asked
        for item in items:
            try:
                version = parse_version(item, self.base_url)
            except CivitaiShapeError as exc:
                logger.debug("skipping a malformed version in a batch answer: %s", exc)
                unattributed += 1
                continue
            hits = version.hashes & wanted
            unattributed += not hits
            for h in hits:
                matched.setdefault(h, LookupResult(FOUND, h, version=version, raw=item))
        missing = [h for h in chunk if h not in matched]
        if missing and unattributed:
            # Some answer could not be tied to a hash (its files may not list that hash type):
            # ask the missing ones singly rather than wrongly remembering them as absent.
            resolved = dict(zip(missing, self._lookup_each(missing)))
        else:
            if missing:
                self.not_found.remember(missing)
            resolved = {h: LookupResult(NOT_FOUND, h, message="not on Civitai") for h in missing}
        return [matched.get(h) or resolved[h] for h in chunk]

    def _lookup_each(self, chunk: list[str]) -> list[LookupResult]:
        out: list[LookupResult] = []
        failure = None
        for h in chunk:
            if failure is not None:
                out.append(LookupResult(ERROR, h, message=f"skipped after an earlier failure: {failure}",
                                        error_kind="skipped"))
                continue
            result = self.lookup(h, force=True)
            if result.error_kind in _TRANSPORT_KINDS:
                failure = result.message
            out.append(result)
        return out

    # ---- models and updates --------------------------------------------------------------------

    def get_model(self, model_id: int) -> tuple[str, CivitaiModel | None, dict | None, str]:
        """(status, parsed model, raw JSON, message) for GET /api/v1/models/{id}."""
        if isinstance(model_id, bool) or not isinstance(model_id, int) or model_id < 0:
            return ERROR, None, None, f"not a model id: {model_id!r}"
        try:
            resp = self._http.request("GET", self._api(f"models/{model_id}"))
            data = _json_or_404(resp)
            if data is _MISSING:
                return NOT_FOUND, None, None, "model not on Civitai"
            return FOUND, parse_model(data), data, ""
        except CivitaiHttpError as exc:
            return ERROR, None, None, exc.message
        except CivitaiShapeError as exc:
            return ERROR, None, None, f"unexpected answer from Civitai: {exc}"

    def check_update(self, model_id: int, version_id: int) -> UpdateResult:
        """Is there a newer published version of this model than `version_id`?

        Civitai lists a model's versions newest first; that order decides. When our version is no
        longer listed, a higher version id (Civitai ids grow over time) counts as newer.
        """
        status, model, _raw, message = self.get_model(model_id)
        if status != FOUND or model is None:
            return UpdateResult(status, model_id, version_id, message=message)
        if not model.versions:
            return UpdateResult(FOUND, model_id, version_id, model=model, message="no published versions")
        latest = model.versions[0]
        ids = [v.version_id for v in model.versions]
        if latest.version_id == version_id:
            has_update = False
        elif version_id in ids:
            has_update = True
        else:
            has_update = latest.version_id > version_id
        return UpdateResult(
            FOUND, model_id, version_id, has_update=has_update, latest=latest,
            link=model_link(self.base_url, model_id, latest.version_id), model=model,
            message="newer version available" if has_update else "up to date",
        )

    def check_update_for_file(self, model_path: str | os.PathLike) -> UpdateResult:
        """Update check from the ids in `name.civitai.info`."""
        info = civitai_files.read_info(model_path)
        mid = info.get("modelId") if info else None
        vid = info.get("id") if info else None
        if not isinstance(mid, int) or not isinstance(vid, int) or isinstance(mid, bool) or isinstance(vid, bool):
            return UpdateResult(ERROR, -1, -1, message=f"no Civitai ids in {civitai_files.info_path(model_path)}")
        return self.check_update(mid, vid)

    # ---- files next to the LoRA ----------------------------------------------------------------

    def download_image(self, url: str) -> bytes:
        """Raw bytes of an http(s) image, capped at max_image. Raises CivitaiHttpError."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise CivitaiHttpError("http", f"refusing image URL with scheme {scheme!r}")
        resp = self._http.request("GET", url, accept="image/*", limit=self._http.settings.max_image)
        if resp.status == 404:
            raise CivitaiHttpError("http", "preview image not found (HTTP 404)", 404)
        return resp.body

    def save_preview(self, model_path: str | os.PathLike, version: CivitaiVersion, *,
                     max_level: object = PG13, overwrite: bool = False, max_side: int = 1024
                     ) -> tuple[Path | None, CivitaiImage | None, str]:
        """Write `name.preview.png` from the first image no more explicit than `max_level`.

        Returns (path, image used, message). An existing preview (user's own or an earlier one) is
        kept unless `overwrite`. Videos are skipped. Never raises for network/image problems.
        """
        existing = civitai_files.existing_preview(model_path)
        if existing is not None and not overwrite:
            return existing, None, "kept existing preview"
        candidates = [im for im in version.images if im.kind == "image" and not is_blurred(im.nsfw_level, max_level)]
        if not candidates:
            return None, None, f"no preview image within {level_name(max_level)}"
        last = "no usable preview image"
        for image in candidates[:5]:
            try:
                data = self.download_image(image.url)
                path = civitai_files.write_preview(model_path, data, max_side=max_side)
                return path, image, ""
            except civitai_files.PreviewError as exc:
                last = f"preview image unreadable: {exc}"
            except CivitaiHttpError as exc:
                last = f"preview download failed: {exc.message}"
                if exc.kind in ("network", "timeout"):
                    break
            except OSError as exc:
                return None, None, f"cannot write preview next to {Path(model_path).name}: {exc}"
        return None, None, last

    def save_sidecars(self, model_path: str | os.PathLike, result: LookupResult, *, preview: bool = True,
                      max_preview_level: object = PG13, overwrite_preview: bool = False,
                      with_model: bool = False) -> FileResult:
        """For a FOUND result: preview first (its NSFW level goes into the info), then the info file.

        `with_model` also reads the parent model (one more request) and adds its description, tags,
        creator and permissions to the info, like Civitai Helper does.
        """
        path = Path(model_path)
        if not result.found or result.version is None or result.raw is None:
            return FileResult(path, result, message=result.message)
        raw = dict(result.raw)
        version = result.version
        notes = []
        if with_model:
            status, model, model_raw, msg = self.get_model(version.model_id)
            if status == FOUND and model_raw is not None:
                raw = _merge_parent_model(raw, model_raw)
                version = replace(version, model_description=model.description)
                result = replace(result, version=version, raw=raw)
            elif msg:
                notes.append(f"parent model: {msg}")
        preview_file, image, msg = (None, None, "")
        if preview:
            preview_file, image, msg = self.save_preview(path, version, max_level=max_preview_level,
                                                         overwrite=overwrite_preview)
            if msg:
                notes.append(msg)
        extra = {
            "hash": result.hash,
            "base_url": self.base_url,
            "link": version.link,
            "last_update": int(self._clock()),
            "version": _lora_core_version(),
            "preview": None if image is None else {
                "file": preview_file.name if preview_file else None,
                "url": image.url,
                "nsfwLevel": image.nsfw_level,
                "nsfw": level_name(image.nsfw_level),
            },
        }
        try:
            info = civitai_files.write_info(path, raw, extra)
        except (OSError, TypeError, ValueError) as exc:
            notes.append(f"cannot write {civitai_files.info_path(path).name}: {exc}")
            info = None
        return FileResult(path, result, info_path=info, preview_path=preview_file,
                          preview_nsfw_level=None if image is None else image.nsfw_level,
                          message="; ".join(notes))

    def fetch_for_file(self, model_path: str | os.PathLike, hash_: str, *, force: bool = False,
                       **sidecar_options) -> FileResult:
        return self.save_sidecars(model_path, self.lookup(hash_, force=force), **sidecar_options)

    def fetch_for_files(self, items: Iterable[tuple[str | os.PathLike, str]], progress: Progress | None = None,
                        *, force: bool = False, **sidecar_options) -> list[FileResult]:
        """Batch lookup for (model_path, hash) pairs, then sidecars for each file found.

        `progress(done, total, result)` is called once per hash during the lookups.
        """
        pairs = list(items)
        lookups = self.lookup_many([h for _, h in pairs], progress=progress, force=force)
        return [self.save_sidecars(p, lookups[h], **sidecar_options) for p, h in pairs]


# ---- reading what was saved (no network) ------------------------------------------------------

def version_from_info(model_path: str | os.PathLike, base_url: str = DEFAULT_BASE_URL) -> CivitaiVersion | None:
    """The validated view of `name.civitai.info` (ours or Civitai Helper's), or None.

    For the library index: trigger words, base model, names, link and images without a request.
    Files holding `{}` (Civitai Helper's "not on Civitai" marker) or junk give None.
    """
    info = civitai_files.read_info(model_path)
    if not info:
        return None
    try:
        return parse_version(info, base_url)
    except CivitaiShapeError:
        return None


def preview_level_from_info(model_path: str | os.PathLike) -> int | None:
    """NSFW level (civitai_nsfw scale) recorded for `name.preview.png` when lora_core saved it."""
    info = civitai_files.read_info(model_path)
    ext = info.get("extensions") if info else None
    ours = ext.get(civitai_files.EXTENSION_KEY) if isinstance(ext, dict) else None
    preview = ours.get("preview") if isinstance(ours, dict) else None
    if not isinstance(preview, dict) or "nsfwLevel" not in preview:
        return None
    return nsfw_level(preview["nsfwLevel"])


# ---- helpers ---------------------------------------------------------------------------------

_MISSING = object()


class _BatchUnsupported(Exception):
    pass


def _json_or_404(resp):
    """Decoded JSON of a 2xx answer, or _MISSING for a JSON 404. An HTML 404 is an error: a proxy
    or maintenance page must not make us remember a hash as absent from Civitai."""
    if resp.status == 404:
        if looks_like_html(resp.content_type, resp.body):
            raise CivitaiHttpError("html", f"{HTML_MESSAGE} [HTTP 404]", 404)
        return _MISSING
    return decode_json(resp)


_TRANSPORT_KINDS = frozenset({"network", "timeout", "http", "html"})


def _invalid(value: object) -> LookupResult:
    text = str(value)[:80]
    return LookupResult(ERROR, text, message=f"not a file hash: {text!r}", error_kind="invalid")


def _shape_error(h: str, exc: Exception) -> LookupResult:
    return LookupResult(ERROR, h, message=f"unexpected answer from Civitai: {exc}", error_kind="shape")


def _merge_parent_model(raw: dict, model_raw: dict) -> dict:
    """Add the parent model's description, tags, creator and permissions (type-checked)."""
    out = dict(raw)
    model = dict(out["model"]) if isinstance(out.get("model"), dict) else {}
    if isinstance(model_raw.get("description"), str):
        model["description"] = model_raw["description"][:200_000]
    tags = model_raw.get("tags")
    if isinstance(tags, list):
        model["tags"] = [t[:200] for t in tags[:200] if isinstance(t, str)]
    for key in ("allowNoCredit", "allowDerivatives", "allowDifferentLicense"):
        if isinstance(model_raw.get(key), bool):
            model[key] = model_raw[key]
    acu = model_raw.get("allowCommercialUse")
    if isinstance(acu, (str, bool)) or (isinstance(acu, list) and all(isinstance(a, str) for a in acu)):
        model["allowCommercialUse"] = acu
    out["model"] = model
    creator = model_raw.get("creator")
    if isinstance(creator, dict):
        out["creator"] = {k: creator[k][:2000] for k in ("username", "image") if isinstance(creator.get(k), str)}
    return out


def _lora_core_version() -> str:
    from lora_core import __version__

    return __version__
