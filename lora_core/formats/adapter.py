"""One module's adapter: which algorithm its tensors belong to, and ΔW on request.

The math lives in the per-algorithm modules (pure functions); this class only picks the tensors,
resolves alpha/scale, moves tensors to the base's device in fp32 and reshapes the result.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import boft, dora, full, glora, ia3, lokr, lora, loha, norm, oft
from .keys import ModuleKey


class AdapterShapeError(ValueError):
    """Tensors of one module that cannot describe a weight update (caller adds the file name)."""


# algorithm -> suffixes it reads (anything else present is ignored and logged by the loader)
CLAIMS: dict[str, frozenset[str]] = {
    "lora": frozenset({"lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale", "dora_scale", "lora_magnitude_vector"}),
    "loha": frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                       "alpha", "scale", "dora_scale"}),
    "lokr": frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                       "alpha", "scale", "dora_scale"}),
    "ia3": frozenset({"weight", "on_input"}),
    "oft": frozenset({"oft_blocks", "oft_diag", "rescale", "alpha"}),
    "boft": frozenset({"oft_blocks", "rescale", "alpha"}),
    "glora": frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight", "alpha", "scale"}),
    "full": frozenset({"diff", "diff_b"}),
    "norm": frozenset({"w_norm", "b_norm"}),
}


def detect_algorithm(suffixes: set[str], tensors: dict[str, torch.Tensor]) -> str | None:
    """The algorithm whose defining tensors are present, or None."""
    if {"lora_up.weight", "lora_down.weight"} <= suffixes:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= suffixes:
        return "loha"
    if ("lokr_w1" in suffixes or {"lokr_w1_a", "lokr_w1_b"} <= suffixes) and (
        "lokr_w2" in suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes
    ):
        return "lokr"
    if {"weight", "on_input"} <= suffixes:
        return "ia3"
    if "oft_blocks" in suffixes:
        return "boft" if tensors["oft_blocks"].dim() == 4 else "oft"
    if "oft_diag" in suffixes:
        return "oft"
    if {"a1.weight", "a2.weight", "b1.weight", "b2.weight"} <= suffixes:
        return "glora"
    if "diff" in suffixes:
        return "full"
    if "w_norm" in suffixes:
        return "norm"
    return None


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _scalar(t: torch.Tensor | None) -> float | None:
    if t is None or t.numel() != 1:
        return None
    return float(t.reshape(()).to(torch.float32).item())


class Adapter:
    """ΔW of one module. `tensors` maps canonical suffix -> tensor exactly as read (dtype kept)."""

    def __init__(self, key: ModuleKey, algo: str, tensors: dict[str, torch.Tensor],
                 alpha: float | None = None, rs_lora: bool = False):
        self.key = key
        self.algo = algo
        self.tensors = tensors
        self.target = "norm" if algo == "norm" else "weight"
        # alpha from the file's tensor wins; `alpha` is the fallback from metadata (PEFT/diffusers)
        self.alpha = _scalar(tensors.get("alpha"))
        if self.alpha is None:
            self.alpha = alpha
        self.rs_lora = rs_lora
        self.dora = bool({"dora_scale", "lora_magnitude_vector"} & set(tensors)) and algo in ("lora", "loha", "lokr")
        self._validate()

    # ---------------------------------------------------------------- description
    @property
    def kind(self) -> str:
        """Algorithm name for reports: lora, locon, dora, loha, lokr, ia3, oft, boft, glora, full, norm."""
        if self.algo == "lora":
            if self.dora:
                return "dora"
            down = self.tensors["lora_down.weight"]
            return "locon" if down.dim() > 2 and (down.numel() != down.shape[0] * down.shape[1]
                                                   or "lora_mid.weight" in self.tensors) else "lora"
        return self.algo

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.algo == "lora":
            return lora.rank(t["lora_down.weight"])
        if self.algo == "loha":
            return loha.rank(t["hada_w1_b"])
        if self.algo == "lokr":
            return lokr.rank(t.get("lokr_w1_b"), t.get("lokr_w2_b"))
        if self.algo == "glora":
            a1, a2 = t["a1.weight"], t["a2.weight"]
            # current layout a2 (r, in); old layout a1 (r, in), a2 (in, r)
            return int(a2.shape[0]) if a2.shape[0] == t["b2.weight"].shape[0] else int(a1.shape[0])
        return None

    def shape_hint(self) -> tuple[int, int] | None:
        """(out features, flattened in features) of the patched weight, where the tensors tell."""
        t = self.tensors
        if self.algo == "lora":
            return lora.out_in(t["lora_up.weight"], t["lora_down.weight"], t.get("lora_mid.weight"))
        if self.algo == "loha":
            return loha.out_in(t["hada_w1_a"], t["hada_w1_b"], t.get("hada_t1"))
        if self.algo == "lokr":
            return lokr.out_in(t.get("lokr_w1"), t.get("lokr_w1_a"), t.get("lokr_w1_b"), t.get("lokr_w2"),
                               t.get("lokr_w2_a"), t.get("lokr_w2_b"), t.get("lokr_t2"))
        if self.algo == "glora" and t["b1.weight"].dim() >= 2 and t["a1.weight"].dim() >= 2:
            # current layout: b1 (out, r), a1 (in, r); the old layout is linear-only and rare
            b1, a1 = t["b1.weight"], t["a1.weight"]
            if b1.shape[1] == t["a2.weight"].shape[0] == t["b2.weight"].shape[0]:
                return int(b1.shape[0]), int(a1.shape[0]) * _prod(t["b2.weight"].shape[2:])
            return None
        if self.algo == "full":
            d = t["diff"]
            return (int(d.shape[0]), _prod(d.shape[1:])) if d.dim() >= 2 else None
        return None

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.tensors.values())

    # ---------------------------------------------------------------- math
    def _scale(self, rank: int | None) -> float:
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
        f: Callable[[str], torch.Tensor | None] = (
            lambda k: self.tensors[k].to(device=device, dtype=torch.float32) if k in self.tensors else None
        )
        w0 = base.detach().to(torch.float32)
        algo = self.algo
        if algo == "lora":
            d = lora.delta(f("lora_up.weight"), f("lora_down.weight"), f("lora_mid.weight"),
                           self._scale(self.rank), dyn)
        elif algo == "loha":
            d = loha.delta(f("hada_w1_a"), f("hada_w1_b"), f("hada_w2_a"), f("hada_w2_b"),
                           f("hada_t1"), f("hada_t2"), self._scale(self.rank))
        elif algo == "lokr":
            d = lokr.delta(f("lokr_w1"), f("lokr_w1_a"), f("lokr_w1_b"), f("lokr_w2"), f("lokr_w2_a"),
                           f("lokr_w2_b"), f("lokr_t2"), self._scale(self.rank))
        elif algo == "ia3":
            d = ia3.delta(w0, f("weight"), bool(self.tensors["on_input"].reshape(-1)[0].item()))
        elif algo == "oft":
            if "oft_blocks" in self.tensors:
                constraint = (self.alpha or 0.0) * base.shape[0]
                d = oft.delta(w0, f("oft_blocks"), constraint, f("rescale"))
            else:  # pre-4.0 LyCORIS `oft_diag`: unconstrained
                d = oft.delta(w0, f("oft_diag"), 0.0, f("rescale"))
        elif algo == "boft":
            d = boft.delta(w0, f("oft_blocks"), (self.alpha or 0.0) * base.shape[0], f("rescale"))
        elif algo == "glora":
            a1, a2, b1, b2 = f("a1.weight"), f("a2.weight"), f("b1.weight"), f("b2.weight")
            d = glora.delta(w0, a1, a2, b1, b2, f("bm.weight"),
                            self._scale(glora.rank(base.shape, a1, a2, b1, b2)))
        elif algo == "full":
            d = full.delta(f("diff"))
        elif algo == "norm":
            d = norm.delta(f("w_norm"))
        else:  # pragma: no cover - construction guarantees a known algo
            raise AssertionError(algo)
        if d.numel() != base.numel():
            raise AdapterShapeError(
                f"module {self.key}: {self.kind} update has {list(d.shape)} elements for a weight of shape {list(base.shape)}"
            )
        d = d.reshape(base.shape)
        if self.dora:
            peft = "lora_magnitude_vector" in self.tensors
            d = dora.apply(w0, d, f("lora_magnitude_vector") if peft else f("dora_scale"), peft=peft)
        return d

    def delta_bias(self, base_bias: torch.Tensor | None) -> torch.Tensor | None:
        """fp32 Δbias (full `diff_b`, norm `b_norm`), else None."""
        key = {"full": "diff_b", "norm": "b_norm"}.get(self.algo)
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
        if self.algo != "lora" or self.dora or "lora_mid.weight" in self.tensors:
            return None
        return lora.low_rank(self.tensors["lora_up.weight"], self.tensors["lora_down.weight"],
                             self._scale(self.rank), dyn)

    # ---------------------------------------------------------------- checks
    def _validate(self) -> None:
        t = self.tensors
        if self.algo == "lora":
            up, down, mid = t["lora_up.weight"], t["lora_down.weight"], t.get("lora_mid.weight")
            if up.dim() < 2 or down.dim() < 2:
                raise AdapterShapeError(f"module {self.key}: lora_up/lora_down must be matrices")
            r = down.shape[0]
            if r == 0:
                raise AdapterShapeError(f"module {self.key}: zero rank")
            if up.shape[1] != (mid.shape[0] if mid is not None else r) or (mid is not None and mid.shape[1] != r):
                raise AdapterShapeError(
                    f"module {self.key}: lora_up {list(up.shape)} does not fit lora_down {list(down.shape)}"
                )
            self._check_rank(r)
        elif self.algo == "loha":
            a, b = t["hada_w1_a"], t["hada_w1_b"]
            r = b.shape[0]
            if r == 0:
                raise AdapterShapeError(f"module {self.key}: zero rank")
            a2, b2 = t["hada_w2_a"], t["hada_w2_b"]
            tucker = "hada_t1" in t
            if tucker:
                t1, t2 = t["hada_t1"], t.get("hada_t2")
                ok = (t2 is not None and a.dim() == b.dim() == a2.dim() == b2.dim() == 2
                      and a.shape[0] == r == t1.shape[0] == t1.shape[1] and t1.shape == t2.shape
                      and a2.shape == a.shape and b2.shape == b.shape)
            else:
                ok = (a.dim() == 2 and a2.dim() == 2 and a.shape[1] == r and a2.shape[1] == b2.shape[0]
                      and a.shape[0] == a2.shape[0] and b.dim() >= 2 and b2.dim() >= 2
                      and _prod(b.shape[1:]) == _prod(b2.shape[1:]))
            if not ok:
                raise AdapterShapeError(f"module {self.key}: LoHa factors of inconsistent shapes")
            self._check_rank(r)
        elif self.algo == "lokr":
            if "lokr_w1" not in t and (t["lokr_w1_a"].dim() != 2 or t["lokr_w1_a"].shape[-1] != t["lokr_w1_b"].shape[0]):
                raise AdapterShapeError(f"module {self.key}: lokr_w1_a does not fit lokr_w1_b")
            if "lokr_w2" not in t:
                w2a, w2b = t["lokr_w2_a"], t["lokr_w2_b"]
                ok = (w2a.shape[0] == w2b.shape[0] == t["lokr_t2"].shape[0] if "lokr_t2" in t
                      else w2a.dim() == 2 and w2a.shape[1] == w2b.shape[0])
                if not ok:
                    raise AdapterShapeError(f"module {self.key}: lokr_w2_a does not fit lokr_w2_b")
            if self.rank == 0:
                raise AdapterShapeError(f"module {self.key}: zero rank")
        elif self.algo in ("oft", "boft"):
            blocks = t.get("oft_blocks", t.get("oft_diag"))
            if blocks.dim() not in (3, 4) or blocks.shape[-1] != blocks.shape[-2] or blocks.numel() == 0:
                raise AdapterShapeError(f"module {self.key}: OFT blocks of shape {list(blocks.shape)}")
        elif self.algo == "glora":
            if t["a2.weight"].shape[0] == 0:
                raise AdapterShapeError(f"module {self.key}: zero rank")

    def _check_rank(self, r: int) -> None:
        hint = self.shape_hint()
        if hint is not None and r > min(hint):
            raise AdapterShapeError(
                f"module {self.key}: rank {r} exceeds the layer's size {hint[0]}×{hint[1]} (absurd rank)"
            )

    def __repr__(self) -> str:
        return f"Adapter({self.key!r}, {self.kind}, rank={self.rank})"
