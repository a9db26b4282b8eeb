"""The one object that owns a patched model: its Binding, the Patcher and the LoraCache.

A host (standalone app, A1111 script) creates one Engine per loaded model and calls:

    engine = Engine(Binding.from_diffusers(pipe.unet, [pipe.text_encoder]), cache_size=8)
    report = engine.apply([ApplyRequest(path, te, unet), ...])    # before sampling
    clean_prompt, report = engine.activate(prompt, library)        # or straight from a prompt
    report = engine.apply_resolved(resolve_prompt(prompt, library, engine.family))  # the same, in two steps
    engine.restore()                                               # when the model is swapped/unloaded

Requests are `lora_core.request.ApplyRequest`; `lora_core.request.resolve_prompt` is the one place
that turns prompt tags into them.

Nothing here raises for a bad LoRA: a file that cannot be read, a LoRA for another model family,
or one whose math fails is left out and named in `report.warnings`; the rest is applied.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable

import torch

from lora_core.patcher import ActiveLora, LoraCache, LoraReport, PatchError, Patcher, PatchReport
from lora_core.request import ApplyRequest, PromptRequests, resolve_prompt

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, binding: Any, cache_size: int | None = 8, cache_mb: float | None = None,
                 compute_dtype: torch.dtype = torch.float32, cache: LoraCache | None = None,
                 w0_source: Any = None):
        """`w0_source`: read original weights back from the model's checkpoint instead of keeping
        copies (`lora_core.patcher.checkpoint_w0.for_checkpoint(path)`; see Patcher)."""
        self.binding = binding
        self.patcher = Patcher(binding, compute_dtype=compute_dtype, w0_source=w0_source)
        self.cache = cache if cache is not None else LoraCache(max_count=cache_size, max_mb=cache_mb)
        self._lock = threading.RLock()

    @property
    def family(self) -> str:
        return getattr(self.binding, "family", "unknown")

    def apply(self, requests: Iterable[ApplyRequest]) -> PatchReport:
        """Make the model carry exactly these LoRAs (in this order); return what was done."""
        requests = list(requests)
        for req in requests:
            if not isinstance(req, ApplyRequest):
                raise TypeError(f"Engine.apply takes lora_core.request.ApplyRequest items, not {type(req).__name__}")
        with self._lock:
            slots: list[ActiveLora | LoraReport] = []
            for req in requests:
                try:
                    slots.append(active_lora(req, self.cache.get(req.path)))
                except Exception as exc:  # unreadable/invalid file, bad numbers: report, skip
                    slots.append(LoraReport(name=_stem(req.path), path=str(req.path), refused=str(exc)))
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
        resolved = resolve_prompt(prompt, library, family=self.family)
        return resolved.clean_text, self.apply_resolved(resolved)

    def apply_resolved(self, resolved: PromptRequests) -> PatchReport:
        """`apply(resolved.requests)`; the report's warnings start with the resolution's (tag
        problems, parser advice, unknown names)."""
        report = self.apply(resolved.requests)
        report.warnings[:0] = resolved.warnings
        return report

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


def active_lora(request: ApplyRequest, lora: Any) -> ActiveLora:
    """The patcher's stack entry for `request`, once its file is parsed (`lora`). Raises for
    numbers ActiveLora refuses."""
    return ActiveLora(lora, te=request.te, unet=request.unet, dyn=request.dyn,
                      block_weights=request.block_weights)


def _stem(path: Any) -> str:
    import os

    return os.path.splitext(os.path.basename(str(path)))[0]
