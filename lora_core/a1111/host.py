"""lora_core inside AUTOMATIC1111: owns the library, the Engine and the model binding.

One `A1111Host` is created by the extension's script. It turns the webui's calls (extra network
activate/deactivate, model loaded, infotext pasted, API requests) into library and engine calls.
The engine (torch) is created on the first generation; browsing and settings never import torch.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from lora_core.a1111 import infotext
from lora_core.a1111.requests import tag_text
from lora_core.a1111.settings import Settings

log = logging.getLogger(__name__)


class A1111Host:
    def __init__(self, webui: Any, extension_dir: str):
        self.webui = webui
        self.extension_dir = extension_dir
        self.settings = Settings(lambda: webui.shared.opts)
        self._lock = threading.RLock()
        self._library = None
        self._engine = None          # one Engine per loaded model object (see _engine_for)
        self._cache = None           # parsed LoRA files, shared by the engines
        self._bound_model = None     # the sd_model object the engine's binding points into
        self._patched = False        # True while LoRA deltas may be merged into _bound_model
        self._short_hashes: dict[tuple, str] = {}  # (path, size, mtime_ns) -> short hash, until indexed
        self._fingerprint: tuple = ()  # identity of the tensors the engine's binding holds
        self._tensors = None           # the ModelTensors the engine was bound to
        self._inference = False        # the bound weights are inference tensors (Forge)
        self._reported: set[str] = set()  # host problems already logged (one line each)

    # ------------------------------------------------------------------ library
    def lora_dirs(self) -> list[str]:
        """`--lora-dir` and the LyCORIS back-compat folder (the built-in's options), existing ones."""
        cmd = self.webui.shared.cmd_opts
        models = getattr(self.webui.paths, "models_path", "models")
        candidates = [getattr(cmd, "lora_dir", None) or os.path.join(models, "Lora"),
                      getattr(cmd, "lyco_dir_backcompat", None) or os.path.join(models, "LyCORIS")]
        dirs: list[str] = []
        for d in candidates:
            d = os.path.abspath(d)
            if d not in dirs and (os.path.isdir(d) or not dirs):
                dirs.append(d)
        return dirs

    def data_dir(self) -> str:
        cmd = self.webui.shared.cmd_opts
        given = getattr(cmd, "lora_core_data_dir", None)
        if given:
            return os.path.abspath(given)
        return os.path.join(getattr(self.webui.paths, "data_path", self.extension_dir), "lora_core")

    def library(self) -> Any:
        with self._lock:
            if self._library is None:
                from lora_core.library import Library

                self._library = Library(self.lora_dirs(), self.data_dir())
                # quick: only folders whose timestamps changed are listed again (the
                # "Rescan" button does the full scan that also sees in-place rewrites).
                self._scan(self._library, quick=True)
            return self._library

    def refresh(self) -> Any:
        """Rescans the folders; returns the scan report."""
        return self._scan(self.library())

    @staticmethod
    def _scan(library: Any, quick: bool = False) -> Any:
        # hashes=True queues missing hashes on the library's background worker: pasted
        # `Lora hashes` can only be matched against files whose hash is known.
        report = library.scan(hashes=True, quick=quick)
        for problem in getattr(report, "problems", None) or []:
            log.warning("lora_core: %s", problem)
        return report

    def entries(self) -> list[Any]:
        return list(self.library().all())

    def current_family(self) -> str | None:
        from lora_core.a1111.engine_port import family_of

        return family_of(getattr(self.webui.shared, "sd_model", None))

    def current_base_model(self) -> str | None:
        """The loaded checkpoint's base-model label from its file name ("ponyDiffusionV6XL" -> pony)."""
        from lora_core.library import base_models

        info = getattr(getattr(self.webui.shared, "sd_model", None), "sd_checkpoint_info", None)
        return base_models.from_name(os.path.basename(str(getattr(info, "filename", "") or "")))

    def preferred_name(self, entry: Any) -> str:
        """The name to write into a tag for `entry`: the LoRA tab's choice (alias unless ambiguous)
        when `Library.find` resolves it to this very file, else the file name, else folder/name."""
        from lora_core.ui.entry_view import view_of

        for name in (view_of(entry).tag_name, entry.name, getattr(entry, "rel_name", None)):
            if not name:
                continue
            try:
                if self.library().find(name).path == entry.path:
                    return name
            except Exception:  # noqa: BLE001 - ambiguous or unknown: try the next form
                continue
        return getattr(entry, "rel_name", None) or entry.name

    def short_hash(self, entry: Any) -> str | None:
        """A1111's 12-hex Lora short hash (the addnet hash). Read from the index; a file the
        background hasher has not reached yet is hashed here (once per file version)."""
        short = getattr(entry, "autov3", None)
        if short:
            return short
        try:
            st = os.stat(entry.path)
            stamp = (entry.path, st.st_size, st.st_mtime_ns)
            if stamp not in self._short_hashes:
                from lora_core.library.hashing import hash_file

                hashed = hash_file(entry.path, entry.path.lower().endswith(".safetensors"))
                if hashed is None:
                    return None
                self._short_hashes[stamp] = hashed[1][:12]
            return self._short_hashes[stamp]
        except OSError:
            log.warning("lora_core: could not hash %s", entry.path, exc_info=True)
            return None

    # ------------------------------------------------------------------ engine
    def _engine_for(self, sd_model: Any, release_host_lora: bool = False) -> Any:
        """The engine, bound to the tensors `sd_model` holds now. The tensors are looked up by name
        every time: when their objects changed (a new model, or Forge swapped Parameters), the old
        binding first writes W0 back into the objects it patched, then a new one is made.
        `release_host_lora`: first undo a merge made by Forge's own LoRA code (see model_access)."""
        from lora_core.a1111 import engine_port, model_access

        if release_host_lora and model_access.release_forge_lora(sd_model):
            log.warning("lora_core: Forge's built-in LoRA had merged weights into the model; undid them, "
                        "so only lora_core applies <lora:...> tags")
        tensors = model_access.model_tensors(sd_model)
        fingerprint = tensors.fingerprint()
        if self._engine is not None and self._bound_model is sd_model and self._fingerprint == fingerprint:
            return self._engine
        if self._patched:
            # Same model, new tensor objects with our merged values in them (moved between
            # devices): W0 goes back into the objects we patched and from there into the new ones.
            moved = (model_access.moved_tensors(self._tensors, tensors)
                     if self._bound_model is sd_model and self._tensors is not None else [])
            self._restore_locked()
            model_access.copy_into(moved)
        if self._cache is None:
            self._cache = engine_port.create_cache(*self.settings.cache_limits())
        family = engine_port.family_of(sd_model)
        w0_source = engine_port.checkpoint_w0(sd_model, tensors, self.settings.get("lora_core_restore_from_checkpoint"))
        self._engine = engine_port.create_engine(tensors, family, self._cache, w0_source)
        self._inference = engine_port.holds_inference_tensors(tensors)
        self._bound_model = sd_model
        self._fingerprint = fingerprint
        self._tensors = tensors
        log.info("lora_core: bound to the loaded %s model (%s)", self._engine.family, tensors.kind)
        return self._engine

    def match_counts(self, path: str):
        """(matched, unmatched) modules of the LoRA at `path` against the loaded checkpoint, for the
        tab's details view; None while the webui has no model. Binds the engine if no generation
        has yet (A1111 loads its checkpoint at start-up, before any generation binds us)."""
        sd_model = getattr(self.webui.shared, "sd_model", None)
        if sd_model is None:
            return None
        with self._lock:
            try:
                engine = self._engine_for(sd_model)
            except Exception as exc:  # noqa: BLE001 - an unknown webui model: no counts, one log line
                self._host_problem(exc)
                return None
            return engine.binding.match(engine.cache.get(path))

    def activate(self, p: Any, params_list: list) -> None:
        """The webui's ExtraNetwork.activate: make the model carry exactly these LoRAs."""
        text = tag_text(params_list)
        sd_model = getattr(self.webui.shared, "sd_model", None)
        if sd_model is None:
            if text:
                log.warning("lora_core: no model loaded; ignoring %s", text)
            return
        from lora_core.a1111 import engine_port, model_access

        with self._lock:
            host_merged = model_access.forge_lora_merged(sd_model)
            if not text and not self._patched and not host_merged:
                return  # nothing merged, nothing asked: no engine work (and no torch import)
            started = time.perf_counter()
            try:
                engine = self._engine_for(sd_model, release_host_lora=True)
                library = self.library() if text else self._library
                resolved, report = engine_port.activate(engine, text, library, inference=self._inference)
            except Exception as exc:  # noqa: BLE001 - never a traceback per request (see _host_problem)
                message = self._host_problem(exc)
                if text and callable(getattr(p, "comment", None)):
                    p.comment(f"LoRA tags ignored: {message}")
                return
            self._patched = bool(text)
        self._report(p, resolved.advice, report)
        self._write_infotext(p, resolved.requests, report)
        # What a request costs on our side (docs/HOSTS.md measures it; SD_WEBUI_LOG_LEVEL=INFO shows it)
        log.info("lora_core: %s in %.1f ms", text or "no LoRA (restored)", (time.perf_counter() - started) * 1000)

    def _host_problem(self, exc: Exception) -> str:
        """Logs a failure to reach the webui's model once per distinct message (with the
        traceback the first time, for bug reports) and returns a one-line description."""
        from lora_core.a1111.model_access import HostModelError

        message = str(exc) if isinstance(exc, HostModelError) else f"{type(exc).__name__}: {exc}"
        if message not in self._reported:
            self._reported.add(message)
            if isinstance(exc, HostModelError):
                log.error("lora_core: cannot apply LoRAs in this webui: %s", message)
            else:
                log.error("lora_core: applying LoRAs failed: %s", message, exc_info=exc)
        return message

    def deactivate(self, p: Any) -> None:
        """After the batches: keep the merge for the next generation, or restore (setting)."""
        if not self.settings.get("lora_core_keep_applied"):
            self.restore()

    def restore(self) -> None:
        with self._lock:
            self._restore_locked()

    def _restore_locked(self) -> None:
        if self._engine is not None and self._patched:
            from lora_core.a1111 import engine_port

            engine_port.restore(self._engine, inference=self._inference)
        self._patched = False

    def set_cache_limits(self) -> None:
        if self._cache is not None:
            from lora_core.a1111 import engine_port

            engine_port.set_cache_limits(self._cache, *self.settings.cache_limits())

    # ------------------------------------------------------------------ model lifecycle
    def before_model_change(self) -> None:
        """Called (via the sd_models wrappers) before the webui loads or drops weights."""
        self.restore()

    def on_model_loaded(self, sd_model: Any) -> None:
        """A checkpoint was loaded: forget the old binding (re-bound at the next generation).

        If the weights were loaded into the bound model without our guard seeing it, the merged
        deltas are gone with them, and so is any meaning of our backups: drop them unwritten.
        """
        with self._lock:
            if self._engine is not None and self._patched:
                if sd_model is self._bound_model:
                    log.warning("lora_core: weights were reloaded while LoRAs were merged; dropping backups")
                else:  # the previous model object may stay in the webui's model cache: clean it
                    self._restore_locked()
            self._engine = None  # its binding and backups belong to the weights that were replaced
            self._bound_model = None
            self._tensors = None
            self._patched = False

    # ------------------------------------------------------------------ infotext
    def _report(self, p: Any, advice: list[str], report: Any) -> None:
        """Logs every warning; puts real problems (unknown name, bad tag, unusable file) into
        the image comments. The tag parser's soft `advice` (weights out of range, ...) stays in
        the log."""
        warnings = list(getattr(report, "warnings", None) or [])
        for message in warnings:
            log.warning("lora_core: %s", message)
        soft = set(advice)
        problems = [w for w in warnings if w not in soft]
        if problems and self.settings.get("lora_core_warn_in_infotext") and callable(getattr(p, "comment", None)):
            p.comment("LoRA problems: " + "; ".join(problems))

    def _write_infotext(self, p: Any, requests: list, report: Any) -> None:
        """`Lora hashes`, keyed like A1111's by the name as written in the prompt (an alias stays
        an alias), so pasting into another webui matches tags to hashes. `requests`: the
        ApplyRequests the prompt resolved to (the same ones the engine applied)."""
        if not self.settings.get("lora_core_add_hashes_to_infotext"):
            return
        mentioned: dict[str, str] = {}
        for req in requests:
            mentioned.setdefault(os.path.abspath(req.path), req.name)
        pairs = []
        for r in list(getattr(report, "loras", None) or []):
            if getattr(r, "refused", None) or not getattr(r, "path", None):
                continue
            entry = self._entry(r.path)
            short = self.short_hash(entry) if entry is not None else None
            if short:
                pairs.append((mentioned.get(os.path.abspath(r.path), r.name), short))
        text = infotext.format_hashes(pairs)
        extra = getattr(p, "extra_generation_params", None)
        if isinstance(extra, dict):
            if text:
                extra[infotext.FIELD] = text
            else:
                extra.pop(infotext.FIELD, None)

    def _entry(self, path: str) -> Any:
        try:
            return self.library().entry(path)
        except Exception:  # noqa: BLE001
            return None

    def infotext_pasted(self, _infotext: str, params: dict) -> None:
        """on_infotext_pasted: point tags at the local files that have the pasted hashes."""
        if not self.settings.get("lora_core_rewrite_pasted_names"):
            return
        hashes = infotext.parse_hashes(params.get(infotext.FIELD))
        if not hashes:
            return

        def resolve(short: str) -> str | None:
            try:
                found = self.library().by_hash(short)
            except Exception:  # noqa: BLE001 - unknown hash: keep the pasted name
                log.debug("lora_core: hash lookup failed for %s", short, exc_info=True)
                return None
            usable = [e for e in found or [] if not getattr(e, "error", None)]
            return self.preferred_name(usable[0]) if usable else None

        for key in ("Prompt", "Negative prompt"):
            if isinstance(params.get(key), str):
                params[key] = infotext.rewrite_prompt(params[key], hashes, resolve)

    # ------------------------------------------------------------------ teardown
    def unload(self) -> None:
        """Script unload (Reload UI / shutdown): give the model its own weights back and close
        the library (its index and hash worker); the reloaded script starts a new host."""
        try:
            self.restore()
        finally:
            self._engine = None
            self._bound_model = None
            self._tensors = None
            with self._lock:
                library, self._library = self._library, None
            if library is not None:
                library.close()
