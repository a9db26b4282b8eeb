"""LyCORIS files for the tiny SD1 UNet of tests/patcher/engine_makers.py, written by the LyCORIS
library itself (`lycoris.create_lycoris` on the diffusers UNet, randomised trained tensors,
`save_weights`). Keys come out as `lycoris_<module path>`, which lora_core reads as UNet keys."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "patcher"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))


def make_unet_lycoris(directory, algo: str, seed: int, scale: float = 0.05, parts=("down_blocks",)) -> str:
    """A LyCORIS file on the UNet submodules named in `parts` (all of them with parts=None)."""
    import torch.nn as nn
    from engine_makers import base_models
    from lycoris import create_lycoris
    from lycoris_makers import randomise

    unet, _te = base_models()
    target = unet
    if parts is not None:  # a holder with the same attribute names keeps the UNet's module paths
        target = nn.Module()
        for name in parts:
            setattr(target, name, getattr(unet, name))
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        network = create_lycoris(target, 1.0, linear_dim=4, linear_alpha=2.0, algo=algo)
        network.apply_to()
    randomise(network, algo, seed, scale)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), f"lyco_{algo}.safetensors")
    network.save_weights(path, None, {"ss_network_module": "lycoris.kohya", "ss_network_args": algo})
    return path
