"""Session: the standalone app's glue. prompt -> tags -> library -> engine -> pipeline -> infotext.

One Session owns the LoRA Library, the loaded PipelineHandle and the Engine patching it. Every
problem a user can cause (bad tag, unknown or ambiguous LoRA, LoRA for another model family,
unreadable checkpoint, out-of-range setting) comes back as a message, never as an exception.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

DEMO_CHOICE = "Demo model (built-in)"
HASH_WAIT_S = 120.0  # longest wait for the library's hasher before writing an infotext without a hash


class CheckpointLoadError(Exception):
    """An explicitly requested checkpoint could not be loaded (Session(strict=True))."""


class Session:
    """`Session(models_dir, data_dir, checkpoint=None)`.

    models_dir holds `Stable-diffusion/` (checkpoints) and `Lora/`. checkpoint: a path or a name
    from `checkpoints()`; None loads the first checkpoint found, else the built-in demo model (and,
    the first time, writes the demo LoRAs to `<first LoRA folder>/demo/`).
    lora_dirs: the LoRA folders (the CLI's --lora-dir; default: `models_dir/Lora`).
    strict: a checkpoint that cannot be loaded raises CheckpointLoadError instead of falling back
    to the demo model (the CLI's explicit --checkpoint).
    placement: app.placement.Placement (the CLI's --device/--precision); None: the CPU in fp32.
    """

    def __init__(self, models_dir, data_dir, checkpoint=None, *, config_root=None, scan: bool = True,
                 lora_dirs=None, strict: bool = False, placement=None):
        from lora_core.library import Library

        self.models_dir = Path(models_dir)
        self.data_dir = Path(data_dir)
        self.lora_dirs = [Path(d) for d in (lora_dirs or [])] or [self.models_dir / "Lora"]
        self.lora_dir = self.lora_dirs[0]
        self.checkpoint_dir = self.models_dir / "Stable-diffusion"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        self.config_root = config_root
        self.placement = placement
        self.messages: list[str] = []  # startup/switch notes for the UI
        self._lock = threading.RLock()
        self.pipeline = None
        self.engine = None
        self.library = Library([str(d) for d in self.lora_dirs], data_dir=str(self.data_dir))
        if checkpoint is None:
            found = self.checkpoints()[1:]
            checkpoint = found[0] if found else DEMO_CHOICE
        try:
            self.switch_checkpoint(str(checkpoint), strict=strict)
        except CheckpointLoadError:
            self.library.close()
            raise
        if scan:
            # Start-up: the quick scan lists only folders whose timestamps changed (ms at 50,000
            # files); a sidecar rewritten in place is picked up by the next full rescan.
            self.rescan(quick=True)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[str]:
        """Choices for the checkpoint picker: the demo model, then files under Stable-diffusion/."""
        from lora_core.app.checkpoints import list_checkpoints

        names = [p.relative_to(self.checkpoint_dir).as_posix() for p in list_checkpoints(self.checkpoint_dir)]
        return [DEMO_CHOICE, *names]

    def current_checkpoint(self) -> str:
        handle = self.pipeline
        if handle is None or handle.is_demo:
            return DEMO_CHOICE
        try:
            return handle.checkpoint_path.resolve().relative_to(self.checkpoint_dir.resolve()).as_posix()
        except ValueError:
            return str(handle.checkpoint_path)

    def _checkpoint_path(self, name: str) -> Path | None:
        """None for the demo model; a listed name or an existing file path otherwise."""
        if name in (DEMO_CHOICE, "demo", ""):
            return None
        listed = dict((n, self.checkpoint_dir / n) for n in self.checkpoints()[1:])
        if name in listed:
            return listed[name]
        from lora_core.app.diffusers_folders import is_diffusers_folder

        path = Path(name).expanduser()
        if path.is_file() or is_diffusers_folder(path):  # a file, or a diffusers-format Flux/SD3 folder
            return path
        raise FileNotFoundError(f"checkpoint {name!r} not found (looked in {self.checkpoint_dir})")

    def switch_checkpoint(self, name: str, strict: bool = False) -> list[str]:
        """Load another checkpoint (or the demo model). On failure the current model stays loaded
        (or the demo model is loaded if there is none) and the reason is returned as a message;
        strict=True raises CheckpointLoadError instead."""
        from lora_core.engine import Engine

        notes: list[str] = []
        with self._lock:
            try:
                path = self._checkpoint_path(name)
                handle = self._load(path)
            except Exception as exc:  # unreadable/unsupported file: keep the app usable
                if strict:
                    raise CheckpointLoadError(f"Could not load checkpoint {name}: {exc}") from exc
                logger.warning("cannot load checkpoint %s: %s", name, exc)
                notes.append(f"Could not load checkpoint {name}: {exc}")
                if self.pipeline is not None:
                    self.messages = notes
                    return notes
                handle = self._load(None)
            if self.engine is not None:
                self.engine.restore()
            self.pipeline = handle
            self.engine = Engine(handle.binding)
            # Each note is logged once, here or where it arose (the demo model's fallback warning,
            # "wrote N demo LoRAs"); hosts show self.messages but do not log them again.
            logger.info("loaded on %s: %s", handle.device_label, handle.label)
            if not handle.is_demo:  # the demo model's one note (its fallback) is logged by demo.py
                for note in handle.notes:
                    logger.info("%s", note)
            notes.extend(handle.notes)
            if handle.is_demo:
                notes.append(handle.label)
                notes.extend(self._write_demo_loras(handle))
            self.messages = notes
            return notes

    def _load(self, path: Path | None):
        """The checkpoint at path, or the embedded demo model for None."""
        if path is None:
            from lora_core.app.demo import load_demo_handle

            return load_demo_handle(self.data_dir, placement=self.placement)
        from lora_core.app.pipeline import PipelineHandle

        return PipelineHandle.load(path, data_dir=self.data_dir, config_root=self.config_root,
                                   placement=self.placement)

    def _write_demo_loras(self, handle) -> list[str]:
        from lora_core.app.demo import ensure_demo_loras

        try:
            written = ensure_demo_loras(self.lora_dir, self.data_dir, handle, engine=self.engine)
        except OSError as exc:
            return [f"Could not write the demo LoRAs to {self.lora_dir}: {exc}"]
        if written:
            self.rescan()
            return [f"Wrote {len(written)} demo LoRAs to {written[0].parent}"]
        return []

    @property
    def family(self) -> str | None:
        return self.pipeline.family if self.pipeline is not None else None

    def rescan(self, quick: bool = False):
        report = self.library.scan(quick=quick)
        self.library.request_hashes()
        return report

    def close(self) -> None:
        with self._lock:
            if self.engine is not None:
                self.engine.restore()
            self.library.close()

    # ------------------------------------------------------------------ generation
    def txt2img(self, prompt: str, negative: str = "", steps: int = 20, cfg: float | None = None, seed: int = -1,
                width: int | None = None, height: int | None = None, sampler: str | None = None,
                batch_count: int = 1, progress: Callable[[int, int], None] | None = None,
                cancel: threading.Event | None = None):
        """Generate from a prompt with `<lora:...>` tags. Returns (images, infotext of the first
        image, messages). Each image carries its own infotext in `image.info["parameters"]`.
        cfg / sampler None: the loaded model's defaults (SD: 7.0, Euler a; Flux: 3.5, Euler; SD3: 7.0, Euler)."""
        from lora_core.app.infotext import PNG_KEY, generation_infotext
        from lora_core.app.pipeline import GenerationParams, ParamError
        from lora_core.request import resolve_prompt
        from lora_core.tags import parse_prompt

        prompt = prompt if isinstance(prompt, str) else ""
        negative = negative if isinstance(negative, str) else ""
        messages: list[str] = []
        with self._lock:
            handle, engine = self.pipeline, self.engine
            size = handle.default_size
            try:
                params = GenerationParams(
                    prompt="", negative=negative, steps=steps, cfg=handle.default_cfg if cfg is None else cfg,
                    seed=-1 if seed is None else seed, width=width or size, height=height or size,
                    sampler=sampler or handle.default_sampler, batch_count=batch_count,
                ).validated(handle.family)
            except ParamError as exc:
                return [], "", [str(exc)]
            resolved = resolve_prompt(prompt, self.library, family=handle.family, skip_broken=True)
            messages.extend(resolved.problems + resolved.advice)
            # as in A1111, only the prompt's tags load LoRAs; tags in the negative prompt are dropped
            neg_parsed = parse_prompt(negative, family=handle.family)
            if neg_parsed.requests or neg_parsed.problems:
                messages.append("LoRA tags in the negative prompt are ignored")
            messages.extend(resolved.unresolved)
            params = _with_texts(params, resolved.clean_text, neg_parsed.clean_text)
            messages.extend(handle.generation_notes(params))
            with handle.lock:
                try:
                    report = engine.apply(resolved.requests)
                except Exception as exc:  # not attributable to one LoRA; the patcher rolled back
                    logger.exception("applying LoRAs failed")
                    return [], "", messages + [f"LoRAs could not be applied: {exc}"]
                messages.extend(report.warnings)  # already names unmatched modules / LoRAs matching nothing
                applied = {str(Path(r.path)) for r in report.loras if r.applied}
                try:
                    images = handle.generate(params, progress=progress, cancel=cancel)
                except Exception as exc:
                    logger.exception("generation failed")
                    return [], "", messages + [f"Generation failed: {exc}"]
        # outside the lock: waiting for a new LoRA's hash must not hold up other generations
        if cancel is not None and cancel.is_set():
            messages.append(f"Cancelled: {len(images)} of {params.batch_count} images done")
        used = [req for req in resolved.requests if str(Path(req.path)) in applied]
        if used:
            self.library.mark_used([req.path for req in used])
        lora_hashes = self._lora_hashes(used, messages)
        infotexts = []
        for image in images:
            text = generation_infotext(
                prompt=prompt, negative=negative, steps=params.steps, sampler=params.sampler,
                cfg=params.cfg, seed=image.info.get("seed", params.seed), width=params.width,
                height=params.height, model_name=handle.model_name, model_hash=handle.model_hash,
                lora_hashes=lora_hashes,
            )
            image.info[PNG_KEY] = text
            infotexts.append(text)
        return images, (infotexts[0] if infotexts else ""), _dedupe(messages)

    def _lora_hashes(self, used, messages: list[str]) -> list[tuple[str, str]]:
        """(name as written in the prompt, AutoV3 short hash) for the applied LoRAs (ApplyRequests
        made by resolve_prompt, which carry the library entry)."""
        missing = [req.path for req in used if not req.entry.autov3]
        if missing:
            self.library.request_hashes(missing)
            if not self.library.wait_for_hashes(HASH_WAIT_S):
                messages.append("LoRA hashes are still being computed; the infotext has none for some LoRAs")
        out = []
        for req in used:
            entry = req.entry
            if not entry.autov3:
                try:
                    entry = self.library.entry(entry.path)
                except (LookupError, OSError, ValueError):
                    continue
            if entry.autov3:
                out.append((req.name, entry.autov3))
        return out


def _with_texts(params, prompt: str, negative: str):
    from dataclasses import replace

    return replace(params, prompt=prompt, negative=negative)


def _dedupe(messages: list[str]) -> list[str]:
    seen, out = set(), []
    for m in messages:
        if m and m not in seen:
            seen.add(m)
            out.append(m)
    return out
