"""Forge's Flux engine is recognised as Flux the way the real Forge (dfdcbab) holds it.

Found with the real program (tools/forge_flux_check.sh, probe of backend.loader.forge_loader on the
tiny Flux): `engine.model_config.unet_config` has no "image_model" -- huggingface_guess.guess
deletes it before Forge builds the transformer -- so reading it said "no family", and the Lora
cards page of a Forge running Flux listed SD1/SDXL LoRAs too. The stand-in engine
(a1111_standin/tiny_forge_flux.py) now holds the config as Forge does; Forge's own LoRA code
tells Flux by 'flux' in `model_config.huggingface_repo`, and so does lora_core.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "a1111_standin"))
import tiny_forge_flux  # noqa: E402

from lora_core.a1111.engine_port import family_of  # noqa: E402


def forge_engine(repo, unet_config):
    """An object shaped like backend.diffusion_engine.*: no is_flux; is_sd* flags False."""
    return SimpleNamespace(is_sd1=False, is_sd2=False, is_sdxl=False, is_sd3=False,
                           model_config=SimpleNamespace(huggingface_repo=repo, unet_config=unet_config))


@pytest.mark.parametrize("schnell", [False, True])
def test_standin_config_is_the_real_one_and_reads_as_flux(schnell):
    config = tiny_forge_flux.TinyForgeFlux._config(schnell)
    assert "image_model" not in config.unet_config          # as huggingface_guess.guess leaves it
    assert config.unet_config["guidance_embed"] is (not schnell)
    engine = forge_engine(config.huggingface_repo, config.unet_config)
    assert family_of(engine) == "flux"


def test_other_forge_engines_are_not_flux():
    # Chroma (a Flux derivative with its own LoRAs; Forge names its repo "Chroma"), an unknown
    # engine, and a config an older huggingface_guess might leave with image_model
    assert family_of(forge_engine("Chroma", {"in_channels": 16})) is None
    assert family_of(forge_engine("someone/else", {})) is None
    assert family_of(forge_engine(None, {"image_model": "flux"})) == "flux"
    # flags win: Forge's SD3 engine sets is_sd3
    sd3 = forge_engine("stabilityai/stable-diffusion-3-medium-diffusers", {})
    sd3.is_sd3 = True
    assert family_of(sd3) == "sd3"
