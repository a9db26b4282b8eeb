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


def test_demo_example_prompt_names_real_demo_loras_and_is_the_placeholder():
    """Issue 14 #4: the README and the prompt placeholder give a prompt the demo model can draw,
    with a tag naming a LoRA file that exists and its trigger word."""
    import json
    import re
    from pathlib import Path

    from lora_core.tags import parse_prompt

    root = Path(__file__).resolve().parents[1]
    loras = root / "lora_core" / "app" / "demo_assets" / "loras"
    files = {p.stem for p in loras.glob("*.safetensors")}
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert serve.DEMO_EXAMPLE_PROMPT in readme
    parsed = parse_prompt(serve.DEMO_EXAMPLE_PROMPT)
    assert parsed.requests and not parsed.problems
    for req in parsed.requests:
        assert req.name in files
        trigger = json.loads((loras / f"{req.name}.json").read_text())["activation text"]
        assert trigger and trigger in parsed.clean_text
    # the scene is one of the demo's captions: shape, colour, background, position
    assert re.match(r"a (large|small) \w+ (circle|square|triangle|star) on a \w+ background, in the center",
                    serve.DEMO_EXAMPLE_PROMPT)
    # every LoRA name the README gives in backticks or tags is a real demo file (trigger words are not)
    named = set(re.findall(r"<lora:([\w/]+)", readme)) | set(re.findall(r"`(demo_\w+)`", readme))
    named = {n for n in named if n.startswith("demo")}
    assert named and named <= files, named - files
    demo = SimpleNamespace(pipeline=SimpleNamespace(is_demo=True, family="sd1", label="demo"))
    assert serve.prompt_placeholder(demo).startswith(serve.DEMO_EXAMPLE_PROMPT)
    real = SimpleNamespace(pipeline=SimpleNamespace(is_demo=False, family="sd1", label="x"))
    assert "demo_stripes" not in serve.prompt_placeholder(real)


def test_gallery_shows_every_batch_whole():
    """Issue 14 #3: as many columns as rows, small images marked for crisp scaling."""
    assert [serve.gallery_columns(n) for n in (0, 1, 2, 3, 4, 5, 9, 10, 16)] == [1, 1, 2, 2, 2, 3, 3, 4, 4]
    for n in range(1, 17):
        cols = serve.gallery_columns(n)
        assert -(-n // cols) <= cols  # never more rows than columns: square cells fit the width
    assert serve.gallery_classes(64, 64) == ["lora-core-gallery", "lora-core-gallery-small"]
    assert serve.gallery_classes(512, 768) == ["lora-core-gallery"]


def test_one_time_startup_notes_are_shown_once():
    """Issue 14 #17: "Wrote 6 demo LoRAs" is said on the first page load, not on every load."""
    session = SimpleNamespace(pipeline=SimpleNamespace(is_demo=True, label="Demo model (built-in)"),
                              messages=["Demo model (built-in)", "Wrote 6 demo LoRAs to models/Lora/demo",
                                        "checksum mismatch: random weights"])
    notes = serve.SessionNotes(session)
    assert notes.current() == ["Wrote 6 demo LoRAs to models/Lora/demo", "checksum mismatch: random weights"]
    assert notes.current() == ["checksum mismatch: random weights"]  # a lasting state stays
    assert serve.SessionNotes(SimpleNamespace(pipeline=None, messages=[])).current() == []
