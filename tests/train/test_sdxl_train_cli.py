"""`python -m lora_core train` on a tiny SDXL single-file checkpoint (LDM layout, both text encoders,
loaded by lora_core.app.checkpoints with a configs folder): the command picks SDXL from the file,
says so, and writes a kohya SDXL LoRA (and a preview through the SDXL pipeline)."""
import argparse

import pytest

from lora_core.demo.data import BASE
from train.tiny_parts import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from app_pipeline.tiny_ldm import write_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    path, configs, _ = write_checkpoint(root, "sdxl")
    BASE.write(root / "data", seed=0, n=3, repeats=2)
    return root, path, configs


def _run(argv):
    from lora_core.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.run(parser.parse_args(argv))


def test_train_command_on_an_sdxl_checkpoint(checkpoint, tmp_path, capsys):
    from lora_core.formats import load_lora

    root, path, configs = checkpoint
    out = tmp_path / "xl_style.safetensors"
    rc = _run(["--checkpoint", str(path), "--config-root", str(configs), "--data", str(root / "data"),
               "--out", str(out), "--data-dir", str(root / "cache"), "--steps", "2", "--rank", "2",
               "--alpha", "1", "--trigger", "lcxl", "--seed", "3"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "sdxl" in printed and "lora_te1" in printed and "lora_te2" in printed
    lora = load_lora(out)
    assert lora.family == "sdxl" and not lora.unclaimed
    assert {k.split(":")[0] for k in lora.adapters} == {"unet", "te1", "te2"}
    assert any(k.startswith("unet:input_blocks_") for k in lora.adapters)
    assert not any("down_blocks" in k or "up_blocks" in k for k in lora.adapters)
    md = lora.metadata
    assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["ss_steps"] == "2"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["ss_resolution"] == "(16, 16)"  # the model's native size: 8x8 latents x 2
    assert md["ss_sd_model_name"] == path.stem
    assert (tmp_path / "xl_style.preview.png").is_file()
