"""Loads the tiny Flux with the real Forge loader (no server) and asks lora_core what it sees:
the family it reports for the engine (the cards page filters by it) and the tensors it binds.

    cd FORGE_COPY && VENV/bin/python probe_family.py FORGE_COPY PROJECT_DIR CHECKPOINT

Run by tools/forge_flux_check.sh with Forge's venv. Forge's `backend.loader.forge_loader` runs as
the server runs it, with the rig shim installed; only the webui's settings object, which the
server creates at start-up, is replaced by the one setting Forge's text engines read (emphasis).
Prints one JSON line; exit 1 when lora_core does not report Flux.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import types


def main(forge_dir: str, project: str, checkpoint: str) -> int:
    sys.argv = ["probe", "--always-cpu", "--clip-in-fp32", "--vae-in-fp32", "--attention-pytorch"]
    sys.path[:0] = [forge_dir, os.path.join(forge_dir, "repositories", "huggingface_guess"), project]
    import torch

    torch.set_num_threads(1)
    runpy.run_path(os.path.join(forge_dir, "extensions", "forge_flux_rig_shim", "preload.py"))
    import modules.shared as shared

    shared.opts = types.SimpleNamespace(emphasis="Original")
    import backend.text_processing.classic_engine as classic
    import backend.text_processing.t5_engine as t5_engine

    classic.opts = t5_engine.opts = shared.opts
    from backend.loader import forge_loader

    from lora_core.a1111 import engine_port, model_access

    engine = forge_loader(checkpoint)
    family = engine_port.family_of(engine)
    tensors = model_access.model_tensors(engine)
    bound = engine_port.create_engine(tensors, family, engine_port.create_cache(None, None))
    out = {"engine": f"{type(engine).__module__}.{type(engine).__name__}",
           "model_config": type(engine.model_config).__name__,
           "huggingface_repo": engine.model_config.huggingface_repo,
           "unet_config_has_image_model": "image_model" in engine.model_config.unet_config,
           "family_of": family, "binding_family": bound.family,
           "components": list(bound.binding.components),
           "unet_tensors": len(tensors.unet), "text_tensors": len(tensors.text)}
    print(json.dumps(out))
    return 0 if family == "flux" and bound.family == "flux" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
