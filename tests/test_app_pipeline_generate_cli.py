"""`python -m lora_core generate` writes a PNG carrying A1111 parameters (demo model, demo LoRA)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from lora_core.app.demo import LABEL
from lora_core.app.infotext import parse_infotext, read_png_infotext

ROOT = Path(__file__).resolve().parents[1]


def test_generate_cli_writes_png_with_parameters(tmp_path):
    out = tmp_path / "out" / "a.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lora_core", "generate", "a red fox <lora:demo_cool:0.8>", "--out", str(out),
           "--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data"),
           "--seed", "5", "--steps", "6", "--negative", "blurry, low quality"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(out) as img:
        assert img.size == (64, 64) and img.format == "PNG"
    parsed = parse_infotext(read_png_infotext(out))
    assert parsed.prompt == "a red fox <lora:demo_cool:0.8>"
    assert parsed.negative == "blurry, low quality"
    assert parsed.settings["Seed"] == "5" and parsed.settings["Steps"] == "6"
    assert parsed.settings["Model"] == "lora_core-demo"
    assert list(parsed.lora_hashes()) == ["demo_cool"]
    # the demo LoRAs were written next to the models on this first run
    assert (tmp_path / "models" / "Lora" / "demo" / "demo_cool.safetensors").is_file()
    # the console says each useful thing once and carries no import noise
    output = done.stdout + done.stderr
    assert output.count(LABEL) == 1, output
    assert len(re.findall(r"[Ww]rote \d+ demo LoRAs", output)) == 1, output
    assert "torchvision" not in output, output

