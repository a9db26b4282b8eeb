"""One module's adapter: the tensors of one module, its algorithm, and ΔW on request.

Everything algorithm-specific (detection, validation, rank, shape hint, which math to call) is
the algorithm's object in `algorithms.REGISTRY`; this class resolves alpha/scale, moves tensors
to the base's device in fp32, reshapes the result and applies DoRA.
"""
from __future__ import annotations

import math

import torch

from . import dora
from .algorithms import BY_NAME, DORA, Algorithm
from .keys import ModuleKey


class AdapterShapeError(ValueError):
    """Tensors of one module that cannot describe a weight update (caller adds the file name)."""


def _scalar(t: torch.Tensor | None) -> float | None:
    if t is None or t.numel() != 1:
        return None
    return float(t.reshape(()).to(torch.float32).item())


class Adapter:
    """ΔW of one module. `tensors` maps canonical suffix -> tensor exactly as read (dtype kept).

    `algo` is an `algorithms.Algorithm` or its name."""

    def __init__(self, key: ModuleKey, algo: str | Algorithm, tensors: dict[str, torch.Tensor],
                 alpha: float | None = None, rs_lora: bool = False):
        self.spec = algo if isinstance(algo, Algorithm) else BY_NAME[algo]
        self.key = key
        self.algo = self.spec.name
        self.tensors = tensors
        self.shapes = {k: t.shape for k, t in tensors.items()}
        self.target = self.spec.target
        # alpha from the file's tensor wins; `alpha` is the fallback from metadata (PEFT/diffusers)
        self.alpha = _scalar(tensors.get("alpha"))
        if self.alpha is None:
            self.alpha = alpha
        self.rs_lora = rs_lora
        self.dora = self.spec.dora_capable and any(k in tensors for k in DORA)
        problem = self.spec.problem(self.shapes)
        if problem:
            raise AdapterShapeError(f"module {self.key}: {problem}")

    # ---------------------------------------------------------------- description
    @property
    def kind(self) -> str:
        """Algorithm name for reports: lora, locon, dora, loha, lokr, ia3, oft, boft, glora, full, norm."""
        return self.spec.kind(self.shapes)

    @property
    def rank(self) -> int | None:
        return self.spec.rank(self.shapes)

    def shape_hint(self) -> tuple[int, int] | None:
        """(out features, flattened in features) of the patched weight, where the tensors tell."""
        return self.spec.shape_hint(self.shapes)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.tensors.values())

    # ---------------------------------------------------------------- math
    def scale_for(self, rank: int | None) -> float:
        """The file's `scale`, else alpha / rank (alpha / √rank for rsLoRA; alpha 0/absent: 1)."""
        explicit = _scalar(self.tensors.get("scale"))
        if explicit is not None:
            return explicit
        if rank is None or rank <= 0:
            return 1.0
        alpha = self.alpha if self.alpha else float(rank)  # alpha 0/absent means "alpha = rank"
        return alpha / (math.sqrt(rank) if self.rs_lora else rank)

    def delta(self, base: torch.Tensor, dyn: int | None = None) -> torch.Tensor:
        """fp32 ΔW shaped like `base`, on base's device; alpha/scale applied, multiplier not.

        Raises AdapterShapeError (a ValueError naming the module) when the tensors do not fit `base`.
        """
        try:
            return self._delta(base, dyn)
        except AdapterShapeError:
            raise
        except (RuntimeError, ValueError, IndexError) as e:
            # crafted or mismatched factor shapes surface as torch shape errors deep in the math
            raise AdapterShapeError(
                f"module {self.key}: {self.kind} tensors do not fit a weight of shape {list(base.shape)} ({e})"
            ) from e

    def _delta(self, base: torch.Tensor, dyn: int | None) -> torch.Tensor:
        device = base.device

        def get(suffix: str) -> torch.Tensor | None:
            t = self.tensors.get(suffix)
            return None if t is None else t.to(device=device, dtype=torch.float32)

        w0 = base.detach().to(torch.float32)
        d = self.spec.delta(self, get, w0, dyn)
        if d.numel() != base.numel():
            raise AdapterShapeError(
                f"module {self.key}: {self.kind} update has {list(d.shape)} elements for a weight of shape {list(base.shape)}"
            )
        d = d.reshape(base.shape)
        if self.dora:
            peft = "lora_magnitude_vector" in self.tensors
            d = dora.apply(w0, d, get("lora_magnitude_vector") if peft else get("dora_scale"), peft=peft)
        return d

    def delta_bias(self, base_bias: torch.Tensor | None) -> torch.Tensor | None:
        """fp32 Δbias (full `diff_b`, norm `b_norm`), else None."""
        key = self.spec.bias_suffix
        if key is None or key not in self.tensors:
            return None
        t = self.tensors[key]
        device = base_bias.device if base_bias is not None else t.device
        d = t.to(device=device, dtype=torch.float32)
        return d.reshape(base_bias.shape) if base_bias is not None and d.numel() == base_bias.numel() else d

    def low_rank(self, dyn: int | None = None):
        """(up2d (out, r), down2d (r, in_flat), scale) for plain LoRA/LoCon without mid or DoRA, else None.

        The factors are returned as stored (dtype/device of the file); the caller converts them.
        """
        return self.spec.low_rank(self, dyn)

    def __repr__(self) -> str:
        return f"Adapter({self.key!r}, {self.kind}, rank={self.rank})"
