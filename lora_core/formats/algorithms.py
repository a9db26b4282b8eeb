"""The algorithm registry: one class per adapter algorithm, tried in order. Torch-free.

Each class owns what is known about its algorithm: the canonical suffixes it reads (`claims`, in
`formats.keys`' spelling), the suffixes that name it on their own in a header (`markers`), its
detection from one module's {suffix: shape}, the validation, rank and shape hint of those shapes,
and ΔW (`delta`, which imports the algorithm's math module, and so torch, on first use).

Everything but `delta`/`low_rank` reads shapes only (`torch.Size`, tuples or a safetensors
header's lists), so `load_lora` and the library's header inspection ask the same objects.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .adapter import Adapter

Shape = Sequence[int]
Shapes = Mapping[str, Shape]        # canonical suffix -> shape of that tensor
Getter = Callable[[str], "torch.Tensor | None"]   # suffix -> fp32 tensor on the base's device, or None

# DoRA magnitudes (LyCORIS `dora_scale`, PEFT `lora_magnitude_vector`): a modifier of the
# algorithms with `dora_capable`, not an algorithm
DORA = frozenset({"dora_scale", "lora_magnitude_vector"})


def _math(name: str):
    """The algorithm's ΔW math module (`lora_core.formats.<name>`, which imports torch), loaded on
    first use by module path: the registry itself stays importable on the torch-free library path,
    and the layering check (import-linter) sees no import of the math modules from here."""
    return importlib.import_module(f"lora_core.formats.{name}")


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _absurd_rank(r: int, hint) -> str | None:
    if hint is not None and r > min(hint):
        return f"rank {r} exceeds the layer's size {hint[0]}×{hint[1]} (absurd rank)"
    return None


class Algorithm:
    """One algorithm. Subclasses set the class attributes and override what applies to them."""

    name = ""                          # Adapter.algo: the math family
    claims: frozenset[str] = frozenset()
    markers: frozenset[str] = frozenset()
    dora_capable = False               # a DoRA magnitude next to it is applied (dora.apply)
    bias_suffix: str | None = None     # tensor that is Δbias as stored
    target = "weight"                  # "norm": patches a norm layer's weight/bias

    def detect(self, shapes: Shapes) -> bool:
        """Whether one module's tensors are this algorithm's (the registry asks in order)."""
        raise NotImplementedError

    def marks(self, suffix: str, shape: Shape | None) -> bool:
        """Whether one tensor names this algorithm on its own (header summaries; shape may be None)."""
        return suffix in self.markers

    def kind(self, shapes: Shapes) -> str:
        """Name in reports and `LoraFile.algorithms()`."""
        return self.name

    def rank(self, shapes: Shapes) -> int | None:
        return None

    def shape_hint(self, shapes: Shapes) -> tuple[int, int] | None:
        """(out features, flattened in features) of the patched weight, where the shapes tell."""
        return None

    def problem(self, shapes: Shapes) -> str | None:
        """Why these tensors cannot describe an update (shapes alone), or None."""
        return None

    def delta(self, adapter: Adapter, get: Getter, w0: torch.Tensor, dyn: int | None) -> torch.Tensor:
        """fp32 ΔW with as many elements as w0 (any shape); alpha/scale applied."""
        raise NotImplementedError

    def low_rank(self, adapter: Adapter, dyn: int | None):
        """(up2d, down2d, scale) with ΔW = scale·up2d@down2d, where the algorithm is that, else None."""
        return None

    def __repr__(self) -> str:
        return f"<algorithm {self.name}>"


class LoRA(Algorithm):
    """LoRA, LoCon (conv down, optional Tucker `lora_mid`), DyLoRA, LoRA+DoRA; kohya/PEFT/diffusers."""

    name = "lora"
    markers = frozenset({"lora_up.weight", "lora_down.weight", "lora_mid.weight"})
    claims = markers | {"alpha", "scale"} | DORA
    dora_capable = True

    def detect(self, shapes):
        return "lora_up.weight" in shapes and "lora_down.weight" in shapes

    def kind(self, shapes):
        if any(k in shapes for k in DORA):
            return "dora"
        down = shapes["lora_down.weight"]
        conv = len(down) > 2 and (_prod(down) != down[0] * down[1] or "lora_mid.weight" in shapes)
        return "locon" if conv else "lora"

    def rank(self, shapes):
        return int(shapes["lora_down.weight"][0])

    def shape_hint(self, shapes):
        mid = shapes.get("lora_mid.weight")
        in_flat = _prod(shapes["lora_down.weight"][1:]) * (_prod(mid[2:]) if mid is not None else 1)
        return int(shapes["lora_up.weight"][0]), in_flat

    def problem(self, shapes):
        up, down, mid = shapes["lora_up.weight"], shapes["lora_down.weight"], shapes.get("lora_mid.weight")
        if len(up) < 2 or len(down) < 2:
            return "lora_up/lora_down must be matrices"
        r = down[0]
        if r == 0:
            return "zero rank"
        if up[1] != (mid[0] if mid is not None else r) or (mid is not None and mid[1] != r):
            return f"lora_up {list(up)} does not fit lora_down {list(down)}"
        return _absurd_rank(r, self.shape_hint(shapes))

    def delta(self, adapter, get, w0, dyn):
        lora = _math('lora')
        scale = adapter.scale_for(self.rank(adapter.shapes))
        return lora.delta(get("lora_up.weight"), get("lora_down.weight"), get("lora_mid.weight"), scale, dyn)

    def low_rank(self, adapter, dyn):
        t = adapter.tensors
        if adapter.dora or "lora_mid.weight" in t:
            return None
        lora = _math('lora')
        return lora.low_rank(t["lora_up.weight"], t["lora_down.weight"],
                             adapter.scale_for(self.rank(adapter.shapes)), dyn)


class LoHa(Algorithm):
    """LyCORIS LoHa: (w1a@w1b) ⊙ (w2a@w2b), optionally Tucker cores t1/t2."""

    name = "loha"
    markers = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})
    claims = markers | {"alpha", "scale", "dora_scale"}
    dora_capable = True

    def detect(self, shapes):
        return all(k in shapes for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))

    def rank(self, shapes):
        return int(shapes["hada_w1_b"][0])

    def shape_hint(self, shapes):
        w1a, w1b, t1 = shapes["hada_w1_a"], shapes["hada_w1_b"], shapes.get("hada_t1")
        if t1 is None:
            return int(w1a[0]), _prod(w1b[1:])
        return int(w1a[1]), int(w1b[1]) * _prod(t1[2:])

    def problem(self, shapes):
        a, b, a2, b2 = (shapes[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        r = b[0]
        if r == 0:
            return "zero rank"
        if "hada_t1" in shapes:
            t1, t2 = shapes["hada_t1"], shapes.get("hada_t2")
            ok = (t2 is not None and len(a) == len(b) == len(a2) == len(b2) == 2
                  and a[0] == r == t1[0] == t1[1] and tuple(t1) == tuple(t2)
                  and tuple(a2) == tuple(a) and tuple(b2) == tuple(b))
        else:
            ok = (len(a) == 2 and len(a2) == 2 and a[1] == r and a2[1] == b2[0]
                  and a[0] == a2[0] and len(b) >= 2 and len(b2) >= 2 and _prod(b[1:]) == _prod(b2[1:]))
        if not ok:
            return "LoHa factors of inconsistent shapes"
        return _absurd_rank(r, self.shape_hint(shapes))

    def delta(self, adapter, get, w0, dyn):
        loha = _math('loha')
        return loha.delta(get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b"),
                          get("hada_t1"), get("hada_t2"), adapter.scale_for(self.rank(adapter.shapes)))


class LoKr(Algorithm):
    """LyCORIS LoKr: kron(w1, w2), each factor full or low rank (w2 optionally Tucker)."""

    name = "lokr"
    markers = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
    claims = markers | {"alpha", "scale", "dora_scale"}
    dora_capable = True

    def detect(self, shapes):
        return (("lokr_w1" in shapes or ("lokr_w1_a" in shapes and "lokr_w1_b" in shapes))
                and ("lokr_w2" in shapes or ("lokr_w2_a" in shapes and "lokr_w2_b" in shapes)))

    def rank(self, shapes):
        """Rank of the decomposed factor; None when both factors are full (then the scale is 1)."""
        for k in ("lokr_w1_b", "lokr_w2_b"):
            if k in shapes:
                return int(shapes[k][0])
        return None

    def shape_hint(self, shapes):
        s = shapes
        a, c = (s["lokr_w1"][0], s["lokr_w1"][1]) if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
        if "lokr_w2" in s:
            w2 = s["lokr_w2"]
            b, d, k = w2[0], w2[1], w2[2:]
        elif "lokr_t2" in s:
            b, d, k = s["lokr_w2_a"][1], s["lokr_w2_b"][1], s["lokr_t2"][2:]
        else:
            b, d, k = s["lokr_w2_a"][0], s["lokr_w2_b"][1], s["lokr_w2_b"][2:]
        return int(a) * int(b), int(c) * int(d) * _prod(k)

    def problem(self, shapes):
        s = shapes
        if "lokr_w1" not in s and (len(s["lokr_w1_a"]) != 2 or s["lokr_w1_a"][-1] != s["lokr_w1_b"][0]):
            return "lokr_w1_a does not fit lokr_w1_b"
        if "lokr_w2" not in s:
            w2a, w2b = s["lokr_w2_a"], s["lokr_w2_b"]
            ok = (w2a[0] == w2b[0] == s["lokr_t2"][0] if "lokr_t2" in s
                  else len(w2a) == 2 and w2a[1] == w2b[0])
            if not ok:
                return "lokr_w2_a does not fit lokr_w2_b"
        return "zero rank" if self.rank(s) == 0 else None

    def delta(self, adapter, get, w0, dyn):
        lokr = _math('lokr')
        return lokr.delta(get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b"), get("lokr_w2"), get("lokr_w2_a"),
                          get("lokr_w2_b"), get("lokr_t2"), adapter.scale_for(self.rank(adapter.shapes)))


class IA3(Algorithm):
    """(IA)³: W0 scaled per output (or, with on_input, per input) channel."""

    name = "ia3"
    claims = frozenset({"weight", "on_input"})
    markers = frozenset({"on_input"})   # `weight` alone is every checkpoint's key

    def detect(self, shapes):
        return "weight" in shapes and "on_input" in shapes

    def delta(self, adapter, get, w0, dyn):
        ia3 = _math('ia3')
        return ia3.delta(w0, get("weight"), bool(adapter.tensors["on_input"].reshape(-1)[0].item()))


def _oft_blocks_problem(blocks: Shape) -> str | None:
    if len(blocks) not in (3, 4) or blocks[-1] != blocks[-2] or _prod(blocks) == 0:
        return f"OFT blocks of shape {list(blocks)}"
    return None


class BOFT(Algorithm):
    """LyCORIS butterfly OFT: `oft_blocks` of shape (m, n, b, b). Tried before OFT."""

    name = "boft"
    claims = frozenset({"oft_blocks", "rescale", "alpha"})
    markers = frozenset({"oft_blocks"})

    def detect(self, shapes):
        return "oft_blocks" in shapes and len(shapes["oft_blocks"]) == 4

    def marks(self, suffix, shape):
        return suffix == "oft_blocks" and isinstance(shape, (list, tuple)) and len(shape) == 4

    def problem(self, shapes):
        return _oft_blocks_problem(shapes["oft_blocks"])

    def delta(self, adapter, get, w0, dyn):
        boft = _math('boft')
        return boft.delta(w0, get("oft_blocks"), (adapter.alpha or 0.0) * w0.shape[0], get("rescale"))


class OFT(Algorithm):
    """Diagonal OFT. `oft_blocks` (kohya, LyCORIS 4.x): generators of a Cayley rotation, alpha the
    constraint. `oft_diag` (LyCORIS before 4.0): the rotation R itself, used as stored, alpha
    ignored (what A1111's network_oft.py does with `is_R`)."""

    name = "oft"
    claims = frozenset({"oft_blocks", "oft_diag", "rescale", "alpha"})
    markers = frozenset({"oft_blocks", "oft_diag"})

    def detect(self, shapes):
        return "oft_blocks" in shapes or "oft_diag" in shapes

    def problem(self, shapes):
        return _oft_blocks_problem(shapes["oft_blocks"] if "oft_blocks" in shapes else shapes["oft_diag"])

    def delta(self, adapter, get, w0, dyn):
        oft = _math('oft')
        if "oft_blocks" in adapter.tensors:
            return oft.delta(w0, get("oft_blocks"), (adapter.alpha or 0.0) * w0.shape[0], get("rescale"))
        return oft.delta_stored(w0, get("oft_diag"), get("rescale"))


class GLoRA(Algorithm):
    """LyCORIS GLoRA: W0·A + B. Two layouts (glora.py): the current one and LyCORIS < 2's."""

    name = "glora"
    claims = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight", "alpha", "scale"})
    markers = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"})
    _FACTORS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")

    def detect(self, shapes):
        return all(k in shapes for k in self._FACTORS)

    def old_layout(self, shapes: Shapes, base_shape: Shape | None = None) -> bool:
        """Whether the factors are in LyCORIS < 2's layout: a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r).

        With the patched weight's shape that is certain. From the factors alone, a square layer's
        old layout reads as the current one of another size (ranks swapped): the smaller rank wins."""
        a1, a2, b1, b2 = (shapes[k] for k in self._FACTORS)
        if base_shape is not None:
            out_dim, in_dim, in_flat = int(base_shape[0]), int(base_shape[1]), _prod(base_shape[1:])
            new_ok = a1[0] == in_dim and b1[0] == out_dim and _prod(b2[1:]) in (in_flat, in_dim)
            old_ok = (len(base_shape) == 2 and len(a1) == 2 and b2[0] == out_dim
                      and b1[-1] == in_dim and a2[0] == in_dim)
            return old_ok and not new_ok
        new_fits = min(map(len, (a1, a2, b1, b2))) >= 2 and a1[1] == a2[0] == b1[1] == b2[0]
        old_fits = (all(len(x) == 2 for x in (a1, a2, b1, b2))
                    and a1[0] == a2[1] == b1[0] == b2[1] and a1[1] == a2[0] == b1[1])
        if old_fits and new_fits:
            return a1[0] < a2[0]
        return old_fits

    def _rank(self, shapes, old: bool) -> int:
        return int(shapes["a1.weight"][0] if old else shapes["a2.weight"][0])

    def rank(self, shapes):
        return self._rank(shapes, self.old_layout(shapes))

    def shape_hint(self, shapes):
        # current layout only: b1 (out, r), a1 (in, r), b2 (r, in, *kernel); the old one is linear-only and rare
        a1, b1, b2 = shapes["a1.weight"], shapes["b1.weight"], shapes["b2.weight"]
        if len(b1) < 2 or len(a1) < 2 or self.old_layout(shapes):
            return None
        if b1[1] == shapes["a2.weight"][0] == b2[0]:
            return int(b1[0]), int(a1[0]) * _prod(b2[2:])
        return None

    def problem(self, shapes):
        return "zero rank" if self.rank(shapes) == 0 else None

    def delta(self, adapter, get, w0, dyn):
        glora = _math('glora')
        old = self.old_layout(adapter.shapes, w0.shape)
        scale = adapter.scale_for(self._rank(adapter.shapes, old))
        return glora.delta(w0, get("a1.weight"), get("a2.weight"), get("b1.weight"), get("b2.weight"),
                           get("bm.weight"), scale, old_layout=old)


class Full(Algorithm):
    """LyCORIS `full`: ΔW (and Δbias) stored as is."""

    name = "full"
    claims = frozenset({"diff", "diff_b"})
    markers = claims
    bias_suffix = "diff_b"

    def detect(self, shapes):
        return "diff" in shapes

    def shape_hint(self, shapes):
        d = shapes["diff"]
        return (int(d[0]), _prod(d[1:])) if len(d) >= 2 else None

    def delta(self, adapter, get, w0, dyn):
        full = _math('full')
        return full.delta(get("diff"))


class Norm(Algorithm):
    """LyCORIS norm-layer adapters: additive on a norm's weight (`w_norm`) and bias (`b_norm`)."""

    name = "norm"
    claims = frozenset({"w_norm", "b_norm"})
    markers = claims
    bias_suffix = "b_norm"
    target = "norm"

    def detect(self, shapes):
        return "w_norm" in shapes

    def delta(self, adapter, get, w0, dyn):
        norm = _math('norm')
        return norm.delta(get("w_norm"))


# Tried in this order; the first whose `detect` holds owns the module. BOFT before OFT (both
# read `oft_blocks`). A new algorithm is a class above plus its place here.
REGISTRY: tuple[Algorithm, ...] = (LoRA(), LoHa(), LoKr(), IA3(), BOFT(), OFT(), GLoRA(), Full(), Norm())
BY_NAME: dict[str, Algorithm] = {a.name: a for a in REGISTRY}
_BY_MARKER: dict[str, tuple[Algorithm, ...]] = {
    s: tuple(a for a in REGISTRY if s in a.markers) for a0 in REGISTRY for s in a0.markers
}


def detect(shapes: Shapes) -> Algorithm | None:
    """The algorithm of one module's tensors ({canonical suffix: shape}), or None."""
    for algorithm in REGISTRY:
        if algorithm.detect(shapes):
            return algorithm
    return None


def marked_by(suffix: str, shape: Shape | None = None) -> Algorithm | None:
    """The algorithm one tensor names on its own (a header summary's per-key evidence), or None."""
    for algorithm in _BY_MARKER.get(suffix, ()):
        if algorithm.marks(suffix, shape):
            return algorithm
    return None
