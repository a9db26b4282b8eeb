"""Small stand-ins that follow the formats/targets contract (docs/ARCHITECTURE.md), so the
patcher's bookkeeping can be tested on a tiny model without depending on the real parsers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FakeSlot:
    tensor: torch.Tensor
    rows: slice | None
    shape: tuple
    block: str
    component: str


class FakeBinding:
    """A tiny 'model': named tensors, plus key -> (weight name, bias name, rows, block, component)."""

    def __init__(self, family="sd1", seed=0, dtype=torch.float16):
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape, dt=dtype):
            return torch.nn.Parameter((torch.randn(*shape, generator=g) * 0.5).to(dt), requires_grad=False)

        self.family = family
        self.tensors = {
            "down.attn.to_q.weight": rnd(8, 8),
            "down.attn.to_k.weight": rnd(8, 8),
            "mid.ff.weight": rnd(16, 8),
            "mid.ff.bias": rnd(16),
            "up.conv.weight": rnd(6, 4, 3, 3),
            "up.proj_in.weight": rnd(8, 8, 1, 1),   # conv 1x1 in the model, linear ΔW in files
            "up.fp32.weight": rnd(8, 8, dt=torch.float32),
            "te.q.weight": rnd(8, 8),
            "te2.in_proj_weight": rnd(24, 8),       # fused q/k/v
            "norm.weight": rnd(8),
            "norm.bias": rnd(8),
        }
        self.map = {
            "unet:down_attn_to_q": ("down.attn.to_q.weight", None, None, "IN01", "unet", None),
            "unet:down_attn_to_k": ("down.attn.to_k.weight", None, None, "IN02", "unet", None),
            "unet:mid_ff": ("mid.ff.weight", "mid.ff.bias", None, "M00", "unet", None),
            "unet:up_conv": ("up.conv.weight", None, None, "OUT03", "unet", None),
            "unet:up_proj_in": ("up.proj_in.weight", None, None, "OUT04", "unet", (8, 8)),
            "unet:up_fp32": ("up.fp32.weight", None, None, "OUT05", "unet", None),
            "te1:q": ("te.q.weight", None, None, "BASE", "te1", None),
            "te2:q_proj": ("te2.in_proj_weight", None, slice(0, 8), "BASE", "te2", None),
            "te2:k_proj": ("te2.in_proj_weight", None, slice(8, 16), "BASE", "te2", None),
            "te2:v_proj": ("te2.in_proj_weight", None, slice(16, 24), "BASE", "te2", None),
            "unet:norm": ("norm.weight", "norm.bias", None, "M00", "unet", None),
        }
        self.resolve_calls = 0

    def resolve(self, key, part="weight"):
        self.resolve_calls += 1
        m = self.map.get(key)
        if m is None:
            return None
        wname, bname, rows, block, comp, shape = m
        name = wname if part == "weight" else bname
        if name is None:
            return None
        t = self.tensors[name]
        view = t[rows] if rows is not None else t
        return FakeSlot(t, rows, tuple(shape) if (shape and part == "weight") else tuple(view.shape), block, comp)

    def snapshot(self):
        return {k: v.detach().clone() for k, v in self.tensors.items()}


class LowRankAdapter:
    def __init__(self, key, up, down, alpha, bias=None):
        self.key, self.algo = key, "lora"
        self.up, self.down, self.alpha, self.bias = up, down, alpha, bias
        self.tensors = {"lora_up.weight": up, "lora_down.weight": down}
        self.target = "weight"

    def low_rank(self, dyn=None):
        up, down = self.up, self.down
        if dyn is not None:
            up, down = up[:, :dyn], down[:dyn]
        return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), self.alpha / self.up.shape[1]

    def delta(self, base, dyn=None):
        up, down, s = self.low_rank(dyn)
        return (s * up.float() @ down.float()).reshape(base.shape)

    def delta_bias(self, base_bias):
        return None if self.bias is None else self.bias.float()


class FullAdapter:
    """ΔW that depends on W0 (like IA3/OFT): ΔW = W0 * scale_rows - W0 ... plus a fixed diff."""

    def __init__(self, key, diff, gain=None, fail=False, bias=None):
        self.key, self.algo, self.target = key, "full", "weight"
        self.diff, self.gain, self.fail, self.bias = diff, gain, fail, bias
        self.tensors = {"diff": diff}
        self.calls = 0

    def low_rank(self, dyn=None):
        return None

    def delta(self, base, dyn=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("corrupt tensor")
        d = self.diff.float().reshape(base.shape).clone()
        if self.gain is not None:
            d += base.float() * self.gain
        return d

    def delta_bias(self, base_bias):
        return None if self.bias is None else self.bias.float()


@dataclass(eq=False)
class FakeLora:
    name: str
    adapters: dict
    family: str = "sd1"
    path: str = ""
    metadata: dict = field(default_factory=dict)
    unclaimed: list = field(default_factory=list)
    nbytes: int = 0


def make_lora(binding: FakeBinding, name: str, seed: int, keys=None, rank=2, family="sd1", full_keys=(), bias=False):
    """A LoRA touching `keys` (default: all) of the fake model with random factors."""
    g = torch.Generator().manual_seed(seed)
    adapters = {}
    for key in keys or list(binding.map):
        slot = binding.resolve(key)
        out = slot.shape[0]
        inn = 1
        for s in slot.shape[1:]:
            inn *= s
        if key in full_keys:
            adapters[key] = FullAdapter(key, torch.randn(slot.shape, generator=g) * 0.05, gain=0.1)
            continue
        up = (torch.randn(out, rank, generator=g) * 0.3).half()
        down = (torch.randn(rank, inn, generator=g) * 0.3).half()
        b = (torch.randn(out, generator=g) * 0.1).half() if bias else None
        adapters[key] = LowRankAdapter(key, up, down, alpha=float(rank) / 2, bias=b)
    return FakeLora(name=name, adapters=adapters, family=family, path=f"/fake/{name}.safetensors")


def oracle(binding: FakeBinding, w0: dict, stack) -> dict:
    """W0 + Σ m·ΔW computed independently in float64, rounded once to each tensor's dtype."""
    out = {k: v.double().clone() for k, v in w0.items()}
    for active in stack:
        if binding.family != "unknown" and active.lora.family not in ("unknown", binding.family):
            continue
        for key, adapter in active.lora.adapters.items():
            wname, bname, rows, block, comp, shape = binding.map[key]
            m = (active.te if comp != "unet" else active.unet)
            if active.block_weights is not None:
                bw = dict(zip(BLOCK_IDS, active.block_weights))
                m *= bw["BASE"] if comp != "unet" else bw[block]
            target = out[wname][rows] if rows is not None else out[wname]
            base = (w0[wname][rows] if rows is not None else w0[wname]).double()
            if isinstance(adapter, LowRankAdapter):
                up, down, s = adapter.low_rank(active.dyn)
                d = s * up.double() @ down.double()
            else:
                d = adapter.diff.double().reshape(target.shape) + (
                    base * adapter.gain if adapter.gain is not None else 0)
            target += m * d.reshape(target.shape)
            if bname is not None and adapter.bias is not None:
                out[bname] += m * adapter.bias.double()
    return {k: out[k].to(w0[k].dtype) for k in out}


BLOCK_IDS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max difference in units of b's dtype spacing at b's magnitude."""
    diff = (a.double() - b.double()).abs()
    finfo = torch.finfo(b.dtype)
    mag = b.double().abs().clamp_min(finfo.tiny)
    spacing = torch.pow(2.0, torch.floor(torch.log2(mag))) * finfo.eps
    return float((diff / spacing).max())


def snapshot(binding) -> dict:
    """A copy of every tensor of a (fake) binding."""
    return {k: v.detach().clone() for k, v in binding.tensors.items()}


def assert_bitwise(binding, snap: dict) -> None:
    for k, v in binding.tensors.items():
        assert torch.equal(v.detach(), snap[k]), k
