"""What an apply did, for hosts to show and tests to check."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraReport:
    """Outcome for one LoRA of the stack."""

    name: str
    path: str
    matched: int = 0            # adapters that resolved to a slot of the model
    unmatched: int = 0          # adapters (plus unclaimed modules) the model has no slot for
    refused: str | None = None  # why the whole LoRA was skipped (family mismatch, load error)
    unmatched_keys: list[str] = field(default_factory=list)  # a few examples, for messages

    @property
    def applied(self) -> bool:
        return self.refused is None and self.matched > 0


@dataclass
class PatchReport:
    """Outcome of one `Patcher.apply` / `Engine.apply`.

    `slots_recomputed` counts slot writes (a slot is one weight, bias, or q/k/v part of a fused
    tensor); 0 means the call did no tensor work. `backed_up_tensors`/`backup_bytes` describe
    the W0 copies held after the call. `write_threads` is how many threads wrote the slots
    (worker threads for large applies, torch's intra-op threads otherwise; 0 without tensor work).
    """

    loras: list[LoraReport] = field(default_factory=list)
    slots_recomputed: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    backed_up_tensors: int = 0
    backup_bytes: int = 0
    write_threads: int = 0

    def summary(self) -> str:
        parts = []
        for r in self.loras:
            if r.refused:
                parts.append(f"{r.name}: skipped ({r.refused})")
            else:
                parts.append(f"{r.name}: {r.matched} matched, {r.unmatched} unmatched")
        head = f"{self.slots_recomputed} slots recomputed in {self.seconds * 1000:.1f} ms"
        return "; ".join([head] + parts)
