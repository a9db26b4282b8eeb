"""The one object that owns a patched model: its Binding, the Patcher and the LoraCache.

A host (standalone app, A1111 script) creates one Engine per loaded model and calls:

    engine = Engine(Binding.from_diffusers(pipe.unet, [pipe.text_encoder]), cache_size=8)
    report = engine.apply([(path, te, unet, dyn, block_weights), ...])   # before sampling
    clean_prompt, report = engine.activate(prompt, library)               # or straight from a prompt
    engine.restore()                                                      # when the model is swapped/unloaded

Nothing here raises for a bad LoRA: a file that cannot be read, a LoRA for another model family,
or one whose math fails is left out and named in `report.warnings`; the rest is applied.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Sequence

import torch

from lora_core.patcher import ActiveLora, LoraCache, LoraReport, PatchError, Patcher, PatchReport

log = logging.getLogger(__name__)

Request = Sequence[Any]  # (path, te, unet, dyn, block_weights)


class Engine:
    def __init__(self, binding: Any, cache_size: int | None = 8, cache_mb: float | None = None,
                 compute_dtype: torch.dtype = torch.float32, cache: LoraCache | None = None):
        self.binding = binding
        self.patcher = Patcher(binding, compute_dtype=compute_dtype)
        self.cache = cache if cache is not None else LoraCache(max_count=cache_size, max_mb=cache_mb)
        self._lock = threading.RLock()

    @property
    def family(self) -> str:
        return getattr(self.binding, "family", "unknown")

    def apply(self, requests: Iterable[Request]) -> PatchReport:
        """Make the model carry exactly these LoRAs (in this order); return what was done.

        Each request is (path, te, unet, dyn, block_weights); block_weights is None, a 26-float
        lbw vector (BASE, IN00..IN11, M00, OUT00..OUT11) or a mapping block id -> weight.
        """
        with self._lock:
            slots: list[ActiveLora | LoraReport] = []
            for req in requests:
                path, te, unet, dyn, bw = _unpack(req)
                try:
                    lora = self.cache.get(path)
                    slots.append(ActiveLora(lora, te=te, unet=unet, dyn=dyn, block_weights=bw))
                except Exception as exc:  # unreadable/invalid file, bad numbers: report, skip
                    slots.append(LoraReport(name=_stem(path), path=str(path), refused=str(exc)))
            dropped: dict[int, str] = {}  # index in slots -> why the patcher could not apply it
            while True:
                stack = [s for i, s in enumerate(slots) if isinstance(s, ActiveLora) and i not in dropped]
                try:
                    report = self.patcher.apply(stack)
                    break
                except PatchError as exc:
                    culprit = next((i for i, s in enumerate(slots) if isinstance(s, ActiveLora)
                                    and i not in dropped and s.lora is exc.lora), None)
                    if culprit is None:
                        raise  # not attributable to one LoRA: the model is rolled back, let the host decide
                    log.warning("%s", exc)
                    dropped[culprit] = str(exc)
            return self._merge_reports(slots, dropped, report)

    def activate(self, prompt: str, library: Any) -> tuple[str, PatchReport]:
        """Parse `<lora:...>` tags of `prompt`, find the files in `library`, apply them.

        Returns the prompt without tags and the report (tag problems and unknown names are in
        its warnings).
        """
        from lora_core.tags import parse_prompt

        parsed = parse_prompt(prompt, family=self.family)
        warnings = list(parsed.problems) + list(parsed.warnings)
        requests = []
        for req in parsed.requests:
            try:
                entry = library.find(req.name)
            except LookupError as exc:  # NotFound / AmbiguousName carry a readable message
                warnings.append(str(exc))
                continue
            requests.append((entry.path, req.te, req.unet, req.dyn, req.lbw))
        report = self.apply(requests)
        report.warnings[:0] = warnings
        return parsed.clean_text, report

    def restore(self) -> None:
        """Put the original weights back (bit for bit); the cache keeps its parsed files."""
        with self._lock:
            self.patcher.restore()

    @staticmethod
    def _merge_reports(slots, dropped, report: PatchReport) -> PatchReport:
        applied = iter(report.loras)
        merged: list[LoraReport] = []
        extra: list[str] = []
        for i, s in enumerate(slots):
            if isinstance(s, LoraReport):
                merged.append(s)
                extra.append(f"{s.name}: {s.refused}")
            elif i in dropped:
                merged.append(LoraReport(name=s.name, path=str(getattr(s.lora, "path", "")), refused=dropped[i]))
                extra.append(dropped[i])
            else:
                merged.append(next(applied))
        report.loras = merged
        report.warnings = extra + report.warnings
        return report


def _unpack(req: Any) -> tuple:
    if hasattr(req, "path"):  # an object with attributes (path, te, unet, dyn, lbw/block_weights)
        return (req.path, getattr(req, "te", 1.0), getattr(req, "unet", 1.0), getattr(req, "dyn", None),
                getattr(req, "block_weights", getattr(req, "lbw", None)))
    req = tuple(req)
    defaults = (None, 1.0, 1.0, None, None)
    return req + defaults[len(req):]


def _stem(path: Any) -> str:
    import os

    return os.path.splitext(os.path.basename(str(path)))[0]
