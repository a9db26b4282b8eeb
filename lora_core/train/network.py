"""Trainable LoRA modules wrapped around a diffusers UNet's and a CLIP text encoder's layers, named
the way kohya sd-scripts names them, so the saved file is an ordinary kohya LoRA/LoCon.

Naming (kohya `networks/lora.py`, SD1/SD2 with diffusers module names): for every targeted
`nn.Linear`/`nn.Conv2d`, `lora_unet_` or `lora_te_` + its module path from the model root with
dots turned into underscores, e.g. `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj`. kohya picks the layers by the class of
their parent block: every Linear and 1x1 Conv2d inside a `Transformer2DModel` (attention, feed
forward, proj_in/proj_out) and inside CLIP's attention and MLP; with conv LoRA (LoCon) also every
Linear/Conv2d inside `ResnetBlock2D`, `Downsample2D` and `Upsample2D`, 3x3 convs at the conv rank.

SDXL (kohya `sdxl_train_network.py`): the two text encoders are `lora_te1_` (CLIP-L) and `lora_te2_`
(OpenCLIP bigG), and UNet names are the LDM ones kohya's own SDXL UNet has (`unet_names` maps our
diffusers paths to them; see train/sdxl.py).

A Linear gets down: Linear(in, r) and up: Linear(r, out); a conv gets down: Conv2d(in, r, the
layer's kernel/stride/padding) and up: a 1x1 Conv2d(r, out). Forward: W0·x + up(down(x))·alpha/r.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"
UNET_ATTENTION_PARENTS = ("Transformer2DModel",)
UNET_CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
ATTENTION_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
TARGET_SETS = ("attn", "attn_ff", "locon")


@dataclass(frozen=True)
class NetworkSpec:
    rank: int = 8
    alpha: float = 8.0
    targets: str = "attn_ff"  # attn | attn_ff | locon
    conv_rank: int | None = None  # LoCon 3x3 convs (default: rank)
    conv_alpha: float | None = None  # (default: alpha)
    train_te: bool = True

    def __post_init__(self):
        if self.targets not in TARGET_SETS:
            raise ValueError(f"unknown targets {self.targets!r}; choose one of {', '.join(TARGET_SETS)}")
        if self.rank < 1 or (self.conv_rank is not None and self.conv_rank < 1):
            raise ValueError("rank must be at least 1")

    @property
    def is_locon(self) -> bool:
        return self.targets == "locon"


class LoRAModule(nn.Module):
    """A low-rank update for one Linear or Conv2d. The base layer is held outside the module tree
    (its weights stay frozen and are not saved)."""

    def __init__(self, lora_name: str, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.lora_name = lora_name
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       dilation=base.dilation, bias=False)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        elif isinstance(base, nn.Linear):
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"{lora_name}: cannot wrap {type(base).__name__}")
        self.rank = rank
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / rank
        self.multiplier = 1.0
        # kohya/Microsoft init: down random, up zero, so training starts from the base model
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.lora_up.weight)
        self.lora_down.to(base.weight.device)
        self.lora_up.to(base.weight.device)
        object.__setattr__(self, "_base", base)  # not a submodule
        self._base_forward = None

    def apply_to(self) -> None:
        """Route the base layer's forward through this module."""
        if self._base_forward is None:
            self._base_forward = self._base.forward
            self._base.forward = self.forward

    def remove(self) -> None:
        if self._base_forward is not None:
            del self._base.forward  # drop the instance attribute: the class method is back
            self._base_forward = None

    def forward(self, x):
        out = self._base_forward(x)
        dx = x.to(self.lora_down.weight.dtype)
        return out + (self.lora_up(self.lora_down(dx)) * (self.multiplier * self.scale)).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · up ∘ down, shaped like the base weight (fp32)."""
        up = self.lora_up.weight.detach().float()
        down = self.lora_down.weight.detach().float()
        if down.dim() == 2:
            return up @ down * self.scale
        # a 1x1 up conv after a kxk down conv: ΔW[o, i, :, :] = Σ_r up[o, r] · down[r, i, :, :]
        return torch.einsum("or,rikl->oikl", up.flatten(1), down) * self.scale


def _leaf_ok(child_name: str, child: nn.Module, parent_kind: str, spec: NetworkSpec) -> tuple[bool, bool]:
    """(take it, is a 3x3-style conv that uses the conv rank)."""
    is_linear = isinstance(child, nn.Linear)
    is_conv = isinstance(child, nn.Conv2d)
    if not (is_linear or is_conv):
        return False, False
    is_1x1 = is_conv and tuple(child.kernel_size) == (1, 1)
    if parent_kind == "conv":
        return spec.is_locon, is_conv and not is_1x1
    if is_conv and not is_1x1:
        return False, False
    if spec.targets == "attn":
        return child_name in ATTENTION_LEAVES or child_name.endswith(tuple("." + leaf for leaf in ATTENTION_LEAVES)), False
    return True, False


def find_targets(root: nn.Module, prefix: str, spec: NetworkSpec,
                 rename: Mapping[str, str] | None = None) -> list[tuple[str, nn.Module, bool]]:
    """(lora_name, layer, uses conv rank) for every layer kohya would wrap, in module order.

    rename: module path -> the path kohya's model has for it (SDXL's LDM UNet names); every
    wrapped layer must be in it (a LoRA half in one namespace would not load anywhere)."""
    root_path = ""
    if prefix == UNET_PREFIX:
        parents = {name: "attention" for name in UNET_ATTENTION_PARENTS}
        parents.update({name: "conv" for name in UNET_CONV_PARENTS})
    else:
        parents = {name: "attention" for name in TE_PARENTS}
        # transformers 5 dropped the `text_model.` level of CLIPTextModel; kohya's names (made
        # with transformers 4) have it, and so must ours
        if not hasattr(root, "text_model"):
            root_path = "text_model."
    found: dict[str, tuple[str, nn.Module, bool]] = {}
    for name, module in root.named_modules():
        kind = parents.get(type(module).__name__)
        if kind is None:
            continue
        for child_name, child in module.named_modules():
            if not child_name:
                continue
            take, conv_rank = _leaf_ok(child_name, child, kind, spec)
            if take:
                path = f"{name}.{child_name}"
                if rename is not None:
                    if path not in rename:
                        raise ValueError(f"{prefix}: no kohya name for module {path}")
                    path = rename[path]
                lora_name = f"{prefix}.{root_path}{path}".replace(".", "_")
                found.setdefault(lora_name, (lora_name, child, conv_rank))
    return list(found.values())


class LoRANetwork(nn.Module):
    """All LoRA modules of one training run, keyed by kohya name."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | Sequence[nn.Module] | None, spec: NetworkSpec,
                 seed: int = 0, unet_names: Mapping[str, str] | None = None):
        """text_encoder: one (SD1/SD2: `lora_te_`) or a pair (SDXL: `lora_te1_`, `lora_te2_`).
        unet_names: diffusers module path -> kohya's path (SDXL), None to keep diffusers names."""
        super().__init__()
        self.spec = spec
        generator = torch.Generator("cpu").manual_seed(int(seed))
        modules: dict[str, LoRAModule] = {}
        roots = [(UNET_PREFIX, unet, unet_names)]
        if isinstance(text_encoder, nn.Module):
            encoders = [(TE_PREFIX, text_encoder)]
        else:
            encoders = [(f"{TE_PREFIX}{i + 1}", te) for i, te in enumerate(text_encoder or ())]
        if spec.train_te:
            roots += [(prefix, te, None) for prefix, te in encoders if te is not None]
        for prefix, root, rename in roots:
            for lora_name, layer, conv in find_targets(root, prefix, spec, rename):
                rank = (spec.conv_rank or spec.rank) if conv else spec.rank
                alpha = (spec.conv_alpha if spec.conv_alpha is not None else spec.alpha) if conv else spec.alpha
                modules[lora_name] = LoRAModule(lora_name, layer, rank, alpha, generator)
        if not modules:
            raise ValueError("no layers to train: the model has no modules of the targeted kinds")
        self.loras = nn.ModuleDict(modules)

    def apply_to(self) -> "LoRANetwork":
        for m in self.loras.values():
            m.apply_to()
        return self

    def remove(self) -> None:
        for m in self.loras.values():
            m.remove()

    def set_multiplier(self, value: float) -> None:
        for m in self.loras.values():
            m.multiplier = float(value)

    def unet_modules(self) -> list[LoRAModule]:
        return [m for n, m in self.loras.items() if n.startswith(UNET_PREFIX + "_")]

    def te_modules(self) -> list[LoRAModule]:
        return [m for n, m in self.loras.items() if n.startswith(TE_PREFIX)]  # lora_te_, lora_te1_, lora_te2_

    def kohya_state_dict(self, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` for every module."""
        out = {}
        for name, m in self.loras.items():
            out[f"{name}.lora_down.weight"] = m.lora_down.weight.detach().to("cpu", dtype).contiguous()
            out[f"{name}.lora_up.weight"] = m.lora_up.weight.detach().to("cpu", dtype).contiguous()
            out[f"{name}.alpha"] = m.alpha.detach().to("cpu", dtype).clone()
        return out


def merged_forward_check(module: LoRAModule, x: torch.Tensor) -> torch.Tensor:
    """What the base layer would output with ΔW merged into its weight (for tests/diagnostics)."""
    base = module._base
    w = base.weight.detach().float() + module.multiplier * module.delta_weight()
    b = base.bias.detach().float() if base.bias is not None else None
    if isinstance(base, nn.Linear):
        return F.linear(x.float(), w, b)
    return F.conv2d(x.float(), w, b, base.stride, base.padding, base.dilation, base.groups)
