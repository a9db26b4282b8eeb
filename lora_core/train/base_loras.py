"""LoRAs held frozen in the model while another one trains (kohya's `--base_weights`), for the whole
run or for the images of one data folder only.

Training a LoRA on top of another one teaches it to keep its effect when the two are stacked: its
folder of combined pictures trains with the other LoRA applied, its plain folder without. The
merge goes through the `Engine`, so the model carries exactly W0 + sum(w * dW) while a folder's
images train and is back to W0, bit for bit, when training ends. The trained LoRA's own modules
wrap their layers' forward (train/network.py) and read these weights, so nothing of the frozen
LoRAs ends up in the saved file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseLora:
    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "BaseLora":
        """`FILE` or `FILE:WEIGHT` (a Windows drive letter's colon is part of the path)."""
        path, sep, weight = text.rpartition(":")
        if sep and path and not weight.startswith(("/", "\\")):
            try:
                return cls(Path(path), float(weight))
            except ValueError:
                pass
        return cls(Path(text), 1.0)


@dataclass(frozen=True)
class BaseLoraPlan:
    """Which frozen LoRAs the model carries: `always` for every image, `by_folder[subset]` added for
    the images of that data folder (the folder's name as in the data root, e.g. `1_mix`)."""
    always: tuple[BaseLora, ...] = ()
    by_folder: Mapping[str, tuple[BaseLora, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.always or self.by_folder)

    def for_folder(self, subset: str) -> tuple[BaseLora, ...]:
        return self.always + tuple(self.by_folder.get(subset, ()))

    def problem(self, subsets: Sequence[str], batch_size: int) -> str | None:
        """Why this plan cannot train on these folders, or None."""
        for lora in self.always + tuple(x for v in self.by_folder.values() for x in v):
            if not lora.path.is_file():
                return f"base LoRA {lora.path}: file not found"
        unknown = sorted(set(self.by_folder) - set(subsets))
        if unknown:
            return f"no data folder named {', '.join(unknown)} (folders: {', '.join(sorted(set(subsets)))})"
        if self.by_folder and batch_size != 1:
            # a batch is one forward pass through one set of weights
            return "base LoRAs per data folder need --batch-size 1"
        return None


class FrozenLoras:
    """Puts a plan's LoRAs into the model folder by folder (through an Engine) and takes them out."""

    def __init__(self, plan: BaseLoraPlan, unet, text_encoders, family: str | None = None):
        from lora_core.engine import Engine
        from lora_core.targets import Binding

        self.plan = plan
        self.engine = Engine(Binding.from_diffusers(unet, list(text_encoders), family=family), cache_size=None)
        self._current: tuple[BaseLora, ...] | None = None

    def select(self, subset: str) -> None:
        """Make the model carry exactly the LoRAs for this folder's images; raises ValueError
        naming the file when one of them does not apply (another family, a broken file)."""
        from lora_core.request import ApplyRequest

        want = self.plan.for_folder(subset)
        if want == self._current:
            return
        report = self.engine.apply([ApplyRequest(lo.path, te=lo.weight, unet=lo.weight) for lo in want])
        refused = [f"{r.path}: {r.refused or 'no module of this model matches'}" for r in report.loras
                   if not r.applied]
        for r in report.loras:
            if r.applied and r.unmatched:
                logger.warning("base LoRA %s: %d modules do not match this model (e.g. %s)", r.path, r.unmatched,
                               ", ".join(r.unmatched_keys[:3]))
        if refused:
            self.restore()
            raise ValueError("base LoRA cannot be applied: " + "; ".join(refused))
        self._current = want

    def restore(self) -> None:
        self.engine.restore()
        self._current = None
