"""Pieces of the standalone server that need no model: CLI defaults, the demo banner, paste parameters."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

from lora_core.app import serve
from lora_core.library import Library
from tests.ui.library_fixture import write_lora

SAMPLERS = ["Euler a", "DDIM"]
CURRENT = ["old", "", 20, 7.0, -1, 512, 512, "Euler a"]


def test_cli_binds_localhost_by_default():
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.models_dir == "models"


def test_demo_banner_names_the_checkpoint_folder_and_escapes_it():
    demo = SimpleNamespace(pipeline=SimpleNamespace(is_demo=True, family="sd1", label="demo"))
    text = serve.demo_banner_html(demo, "/srv/<models>")
    assert "Demo model loaded" in text and "/srv/&lt;models&gt;/Stable-diffusion" in text
    real = SimpleNamespace(pipeline=SimpleNamespace(is_demo=False, family="sdxl", label="x"))
    assert serve.demo_banner_html(real, "models") == ""


def test_paste_fills_fields_and_keeps_the_rest():
    text = "a cat\nNegative prompt: blurry\nSteps: 12, Sampler: DDIM, CFG scale: 5.5, Seed: 42, Size: 64x96"
    values, notes = serve.apply_pasted(text, CURRENT, SAMPLERS)
    assert values == ["a cat", "blurry", 12, 5.5, 42, 64, 96, "DDIM"] and notes == []
    values, notes = serve.apply_pasted("just a prompt", CURRENT, SAMPLERS)
    assert values[0] == "just a prompt" and values[2:] == CURRENT[2:]
    values, notes = serve.apply_pasted("x\nSteps: 3, Sampler: Nope, Seed: 1", CURRENT, SAMPLERS)
    assert values[7] == "Euler a" and "unknown sampler" in notes[0]
    assert serve.apply_pasted("  ", CURRENT, SAMPLERS) == (CURRENT, ["Nothing to paste."])


def test_paste_relinks_loras_by_hash(tmp_path):
    write_lora(tmp_path / "Lora" / "local_name.safetensors", metadata={"ss_output_name": "Pretty"})
    lib = Library([tmp_path / "Lora"], data_dir=str(tmp_path / "data"))
    lib.scan(hashes=True)
    assert lib.wait_for_hashes(timeout=60)
    short = lib.find("local_name").autov3
    text = (f"a <lora:renamed_by_someone:0.5>\nSteps: 12, Sampler: DDIM, Seed: 1, "
            f"Lora hashes: \"renamed_by_someone: {short}\"")
    values, notes = serve.apply_pasted(text, CURRENT, SAMPLERS, lib)
    assert values[0] == "a <lora:Pretty:0.5>"
    assert any("Pretty" in n for n in notes)
