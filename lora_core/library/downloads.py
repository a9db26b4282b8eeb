"""The download queue: links in, LoRA files with their sidecars out, one file at a time.

    queue = DownloadQueue(library_provider, settings_provider)     # settings: DownloadSettings
    job = queue.enqueue("https://civitai.com/models/123", folder="styles")  # dict; ValueError if not a link
    queue.jobs() -> [dict]     queue.pause(id) / resume(id) / cancel(id) / clear_finished()
    queue.wait(id, timeout) -> dict

A job goes queued -> resolving -> downloading -> verifying -> done, or ends in error / cancelled,
or sits in paused (its part file kept; resume continues it with HTTP Range). On success the file is
in `<lora dir>/<folder>/`, with `.civitai.info`, `.preview.png` and the trigger words (A1111's
`.json` "activation text") next to it, and in the library index (`download_index.add_file`).
One worker thread; page requests only read job snapshots under a lock, so they stay fast.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import download_index, download_transfer
from .civitai_http import CivitaiHttpError, HttpClient, HttpSettings, host_of
from .download_sources import CivitaiRef, SourceError, parse_source, resolve
from .download_transfer import Control, DownloadError, Interrupted
from .hf_token import hf_token as hf_token_from_env

logger = logging.getLogger(__name__)

CIVITAI_KEY_ADVICE = ("Create a key at civitai.com/user/account (API Keys) and set it in Settings -> LoRA "
                      "(lora_core) -> Civitai API key, with --civitai-key, or in the CIVITAI_API_KEY "
                      "environment variable.")
HF_TOKEN_ADVICE = ("Accept the model's terms on huggingface.co and set a token (huggingface.co/settings/tokens) "
                   "in the HF_TOKEN environment variable, or run `hf auth login`.")
ACTIVE = ("queued", "resolving", "downloading", "verifying")
FINISHED = ("done", "error", "cancelled")


@dataclass(frozen=True)
class DownloadSettings:
    lora_dir: str | None = None            # None: the library's first folder
    civitai_base: str = "https://civitai.com"
    civitai_key: str | None = None         # None: $CIVITAI_API_KEY
    civitai_enabled: bool = True
    hf_base: str = "https://huggingface.co"
    hf_token: str | None = None            # None: $HF_TOKEN or the token `hf auth login` saved
    preview_level: str | None = "PG13"     # previews more explicit than this are not downloaded
    timeout: float = 60.0                  # per connect / per read
    max_retries: int = 4


@dataclass
class Job:
    id: int
    text: str
    folder: str = ""
    state: str = "queued"
    label: str = ""
    file_name: str = ""
    path: str = ""
    done: int = 0
    total: int | None = None
    speed: float = 0.0                     # bytes/s, smoothed
    message: str = ""
    notes: list = field(default_factory=list)
    resumable: bool = False
    created: float = field(default_factory=time.time)
    control: Control = field(default_factory=Control, repr=False)

    def to_dict(self) -> dict:
        frac = (self.done / self.total) if self.total else (1.0 if self.state == "done" else 0.0)
        return {"id": self.id, "text": self.text, "folder": self.folder, "state": self.state,
                "label": self.label, "file_name": self.file_name, "path": self.path, "done": self.done,
                "total": self.total, "fraction": round(min(1.0, frac), 4), "speed": round(self.speed),
                "message": self.message, "notes": list(self.notes), "resumable": self.resumable}


def settings_from_civitai(sync_settings: Any, lora_dir: str | None = None) -> DownloadSettings:
    """DownloadSettings from the tab's CivitaiSettings (base URL, key, NSFW threshold, on/off)."""
    preview = sync_settings.preview_limit() if hasattr(sync_settings, "preview_limit") else "PG13"
    return DownloadSettings(lora_dir=lora_dir, civitai_base=sync_settings.base_url or "https://civitai.com",
                            civitai_key=(sync_settings.api_key or "").strip() or None,
                            civitai_enabled=bool(sync_settings.enabled), preview_level=preview)


def safe_subfolder(lora_dir: str, folder: str) -> str:
    """`lora_dir/folder`, refusing absolute paths and `..` (the folder comes from a web form)."""
    folder = (folder or "").strip().replace("\\", "/")
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith(".") for p in parts) or folder.startswith("/") or ":" in folder:
        raise ValueError(f"folder {folder!r} must be a plain sub-folder of the LoRA folder")
    return os.path.join(os.path.abspath(lora_dir), *parts)


class DownloadQueue:
    def __init__(self, library_provider: Callable[[], Any], settings_provider: Callable[[], DownloadSettings],
                 *, sleep: Callable[[float], None] = time.sleep, keep_finished: int = 50):
        self.library_provider = library_provider
        self.settings_provider = settings_provider
        self._sleep = sleep
        self._keep = keep_finished
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._pending: list[int] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- public ------------------------------------------------------------------------------
    def enqueue(self, text: str, folder: str = "") -> dict:
        """Queue a link/AIR/id. ValueError (with the reason) when it names nothing downloadable."""
        s = self.settings_provider()
        ref = parse_source(text, s.civitai_base, s.hf_base)  # SourceError is a ValueError
        if isinstance(ref, CivitaiRef) and not s.civitai_enabled:
            raise ValueError("Civitai is turned off in the settings")
        safe_subfolder(self._lora_dir(s), folder)
        with self._cond:
            job = Job(next(self._ids), str(text).strip(), folder=(folder or "").strip())
            self._jobs[job.id] = job
            self._pending.append(job.id)
            self._trim()
            self._start_worker()
            self._cond.notify_all()
            return job.to_dict()

    def jobs(self) -> list[dict]:
        with self._cond:
            return [j.to_dict() for j in sorted(self._jobs.values(), key=lambda j: j.id)]

    def job(self, job_id: int) -> dict:
        with self._cond:
            return self._get(job_id).to_dict()

    def pause(self, job_id: int) -> dict:
        with self._cond:
            job = self._get(job_id)
            if job.state in ACTIVE:
                job.control.pause.set()
                if job.id in self._pending:
                    self._pending.remove(job.id)
                    job.state, job.message = "paused", "paused"
            return job.to_dict()

    def resume(self, job_id: int) -> dict:
        with self._cond:
            job = self._get(job_id)
            if job.state == "paused" or (job.state == "error" and job.resumable):
                job.control = Control()
                job.state, job.message, job.resumable = "queued", "", False
                self._pending.append(job.id)
                self._start_worker()
                self._cond.notify_all()
            return job.to_dict()

    def cancel(self, job_id: int) -> dict:
        with self._cond:
            job = self._get(job_id)
            if job.state in FINISHED and job.state != "error":
                return job.to_dict()
            job.control.cancel.set()
            if job.id in self._pending or job.state in ("paused", "error"):
                if job.id in self._pending:
                    self._pending.remove(job.id)
                if job.path:
                    download_transfer.remove_parts(job.path)
                job.state, job.message, job.resumable = "cancelled", "cancelled", False
            return job.to_dict()

    def clear_finished(self) -> int:
        with self._cond:
            gone = [i for i, j in self._jobs.items() if j.state in FINISHED]
            for i in gone:
                del self._jobs[i]
            return len(gone)

    def wait(self, job_id: int, timeout: float | None = None) -> dict:
        """Block until the job is done/error/cancelled/paused (or the timeout passes)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self._get(job_id)
                if job.state in FINISHED or job.state == "paused":
                    return job.to_dict()
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return job.to_dict()
                self._cond.wait(0.2 if left is None else min(0.2, left))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._jobs.values():
                job.control.pause.set()
            self._cond.notify_all()

    # -- worker ------------------------------------------------------------------------------
    def _get(self, job_id: int) -> Job:
        try:
            return self._jobs[int(job_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no download with id {job_id!r}") from None

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in sorted(finished, key=lambda j: j.id)[:max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]

    def _start_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="lora_core-downloads", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    if not self._cond.wait(30):
                        self._thread = None  # idle: the next enqueue starts a fresh worker
                        return
                if self._closed:
                    return
                job = self._jobs.get(self._pending.pop(0))
                if job is None or job.state != "queued":
                    continue
                job.state = "resolving"
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the queue
                logger.exception("download %s failed", job.text)
                self._finish(job, "error", f"download failed: {type(exc).__name__}: {exc}")

    def _set(self, job: Job, **fields) -> None:
        with self._cond:
            for k, v in fields.items():
                setattr(job, k, v)
            self._cond.notify_all()

    def _finish(self, job: Job, state: str, message: str, resumable: bool = False) -> None:
        self._set(job, state=state, message=message, resumable=resumable)
        log = logger.info if state == "done" else logger.warning
        log("download %s: %s", job.file_name or job.text, message)

    def _lora_dir(self, s: DownloadSettings) -> str:
        if s.lora_dir:
            return s.lora_dir
        dirs = list(getattr(self.library_provider(), "dirs", []) or [])
        if not dirs:
            raise ValueError("no LoRA folder configured")
        return str(dirs[0])

    def _clients(self, s: DownloadSettings) -> tuple[HttpClient, HttpClient]:
        from lora_core import __version__

        base = HttpSettings(timeout=s.timeout, max_retries=s.max_retries, user_agent=f"lora_core/{__version__}")
        civ_key = s.civitai_key or os.environ.get("CIVITAI_API_KEY") or None
        hf_token = s.hf_token or hf_token_from_env()
        civ = HttpClient(base, api_key=civ_key, auth_host=host_of(s.civitai_base))
        hf = HttpClient(HttpSettings(timeout=s.timeout, max_retries=s.max_retries, service="Hugging Face",
                                     user_agent=base.user_agent), api_key=hf_token, auth_host=host_of(s.hf_base))
        return civ, hf

    def _run(self, job: Job) -> None:
        s = self.settings_provider()
        civ, hf = self._clients(s)
        try:
            self._run_with(job, s, civ, hf)
        finally:
            civ.close()
            hf.close()

    def _run_with(self, job: Job, s: DownloadSettings, civ: HttpClient, hf: HttpClient) -> None:
        try:
            ref = parse_source(job.text, s.civitai_base, s.hf_base)
            plan = resolve(ref, civ if isinstance(ref, CivitaiRef) else hf, s.civitai_base)
            target_dir = safe_subfolder(self._lora_dir(s), job.folder)
            os.makedirs(target_dir, exist_ok=True)
        except CivitaiHttpError as exc:
            advice = f" {CIVITAI_KEY_ADVICE}" if exc.status in (401, 403) else ""
            return self._finish(job, "error", f"{exc.message}{advice}")
        except (SourceError, ValueError) as exc:
            return self._finish(job, "error", str(exc))
        except OSError as exc:
            return self._finish(job, "error", f"cannot create the folder: {exc.strerror or exc}")
        final = os.path.join(target_dir, plan.file_name)
        self._set(job, label=plan.label, file_name=plan.file_name, path=final,
                  total=job.total or plan.size, state="downloading")
        if os.path.exists(final):
            return self._already_there(job, plan, final, s)
        ctl = job.control
        ctl.timeout = s.timeout
        ctl.auth_advice = CIVITAI_KEY_ADVICE if plan.source == "civitai" else HF_TOKEN_ADVICE
        ctl.progress = self._progress_fn(job)
        ctl.note = lambda text: self._set(job, notes=[*job.notes, text][-5:])
        http = civ if plan.source == "civitai" else hf
        try:
            sha = download_transfer.fetch(http, plan.url, final, ctl, sha256=plan.sha256)
        except Interrupted as stop:
            return self._finish(job, stop.reason, stop.reason)
        except DownloadError as exc:
            return self._finish(job, "error", exc.message, resumable=exc.resumable)
        self._set(job, state="verifying", done=os.path.getsize(final), total=os.path.getsize(final))
        notes = self._sidecars(plan, final, sha, s)
        self._index(final)
        size_mb = os.path.getsize(final) / 1e6
        tail = f" ({'; '.join(notes)})" if notes else ""
        checked = "checked" if ctl.stats.get("verified") else f"{sha[:12]}…, none published to check"
        self._finish(job, "done", f"saved {plan.file_name} ({size_mb:.1f} MB, SHA256 {checked}){tail}")

    def _progress_fn(self, job: Job) -> Callable[[int, int | None], None]:
        last = [time.monotonic(), 0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            dt = now - last[0]
            if dt < 0.2 and done != total:  # a few updates a second are plenty for a progress bar
                job.done = done  # plain attribute writes: readers copy under the lock
                return
            rate = (done - last[1]) / dt if dt > 0 and done >= last[1] else job.speed
            last[0], last[1] = now, done
            self._set(job, done=done, total=total if total is not None else job.total,
                      speed=rate if job.speed == 0 else 0.7 * job.speed + 0.3 * rate)
        return progress

    def _already_there(self, job: Job, plan, final: str, s: DownloadSettings) -> None:
        if plan.sha256 and download_transfer.sha256_of(final) == plan.sha256.upper():
            notes = self._sidecars(plan, final, plan.sha256, s)
            self._index(final)
            size = os.path.getsize(final)
            self._set(job, done=size, total=size)
            return self._finish(job, "done", f"{plan.file_name} is already in the library"
                                             + (f" ({'; '.join(notes)})" if notes else ""))
        self._finish(job, "error", f"{final} already exists and is a different file; rename or remove it "
                                   "first (nothing was downloaded)")

    def _sidecars(self, plan, final: str, sha: str, s: DownloadSettings) -> list[str]:
        """.civitai.info + preview (through CivitaiClient) and trigger words into the .json."""
        notes: list[str] = []
        if plan.source == "civitai" and plan.version_json:
            try:
                from .civitai import FOUND, CivitaiClient, LookupResult
                from .civitai_parse import parse_version

                client = CivitaiClient(s.civitai_base, api_key=s.civitai_key, timeout=s.timeout,
                                       use_env_key=s.civitai_key is None)
                version = parse_version(plan.version_json, client.base_url)
                result = client.save_sidecars(final, LookupResult(FOUND, sha, version=version, raw=plan.version_json),
                                              max_preview_level=s.preview_level)
                if result.message:
                    notes.append(result.message)
            except Exception as exc:  # noqa: BLE001 - the LoRA itself is fine; say what is missing
                logger.warning("sidecars for %s: %s", final, exc)
                notes.append(f"no Civitai info written: {exc}")
        if plan.trained_words:
            try:
                from . import sidecars

                current = sidecars.read_user_metadata(final)
                if not str(current.get("activation text") or "").strip():
                    sidecars.write_user_metadata(final, {"activation text": ", ".join(plan.trained_words)})
            except Exception as exc:  # noqa: BLE001
                notes.append(f"trigger words not written: {exc}")
        return notes

    def _index(self, final: str) -> None:
        try:
            download_index.add_file(self.library_provider(), final)
        except Exception:  # noqa: BLE001 - the next scan picks it up
            logger.exception("indexing %s failed", final)


def queue_for_civitai(library_provider: Callable[[], Any], sync: Any) -> DownloadQueue:
    """The queue a host's routes use: Civitai settings (base URL, key, NSFW threshold, on/off) read
    from its CivitaiSync at each job, files into the library's first LoRA folder."""
    return DownloadQueue(library_provider, lambda: settings_from_civitai(sync.settings()))
