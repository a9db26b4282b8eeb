"""LyCORIS-written example files: a tiny model with Linear / Conv2d (/ LayerNorm) layers, a LyCORIS
network on it with randomised trained tensors, saved with the network's own `save_weights`.

`make_lycoris_file(path, algo, **kwargs) -> LycoMade` returns the file, the layers with their
original weights, and `reference(name, x)`: that layer's output through LyCORIS' forward pass.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    def __init__(self, lin=(64, 32), conv=(16, 32), conv1=32, norm: int | None = None, extra_linears=()):
        super().__init__()
        self.lin = nn.Linear(*lin)
        self.conv = nn.Conv2d(conv[0], conv[1], 3, padding=1)
        self.conv1 = nn.Conv2d(conv1, conv1, 1)
        if norm:
            self.norm = nn.LayerNorm(norm)
        for i, (i_dim, o_dim) in enumerate(extra_linears):
            setattr(self, f"big{i}", nn.Linear(i_dim, o_dim, bias=False))


@dataclass
class LycoMade:
    path: str
    model: nn.Module
    network: object
    originals: dict = field(default_factory=dict)  # layer name -> (weight, bias)

    def layer(self, name):
        return getattr(self.model, name)

    @torch.no_grad()
    def reference(self, name, x):
        """Output of layer `name` through LyCORIS' forward (multiplier 1)."""
        return self.layer(name)(x)


def randomise(network, algo: str, seed: int = 0, scale: float = 0.3):
    """Give every trained tensor non-trivial values (LyCORIS initialises ΔW to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith("dora_scale"):
                p.mul_(1.0 + 0.5 * torch.rand(p.shape, generator=g))
            elif name.endswith("rescale"):
                p.copy_(1.0 + noise)
            elif algo == "full":
                p.add_(noise)
            else:
                p.copy_(noise)


def make_lycoris_file(path, algo: str, linear_dim: int = 4, linear_alpha: float = 2.0, seed: int = 0,
                      model: nn.Module | None = None, dtype=None, **kwargs) -> LycoMade:
    from lycoris import create_lycoris

    torch.manual_seed(seed)
    model = model or TinyNet(norm=32 if kwargs.get("train_norm") else None)
    originals = {n: (m.weight.detach().clone(), None if getattr(m, "bias", None) is None else m.bias.detach().clone())
                 for n, m in model.named_children()}
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        network = create_lycoris(model, 1.0, linear_dim=linear_dim, linear_alpha=linear_alpha, algo=algo, **kwargs)
        network.apply_to()
    randomise(network, algo, seed)
    network.save_weights(str(path), dtype, {"ss_network_module": "lycoris.kohya", "ss_network_args": algo})
    return LycoMade(str(path), model, network, originals)


def merged_output(name: str, module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Output of `module`'s op with a given weight and bias (what a merged layer computes)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
    raise TypeError(name)


def sample_input(module: nn.Module, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if isinstance(module, nn.Linear):
        return torch.randn(5, module.in_features, generator=g)
    if isinstance(module, nn.Conv2d):
        return torch.randn(2, module.in_channels, 6, 6, generator=g)
    if isinstance(module, nn.LayerNorm):
        return torch.randn(5, *module.normalized_shape, generator=g)
    raise TypeError(type(module))
