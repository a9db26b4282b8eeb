"""`python -m lora_core train` end to end on a tiny SD1-layout single-file checkpoint (written in
LDM layout, loaded back by lora_core.app.checkpoints with a configs folder)."""
import argparse
import json

import pytest

from lora_core.demo.data import BASE
from lora_core.demo.model import DemoArch, build_models, write_configs
from lora_core.train.ldm_export import sd1_state_dict
from lora_core.train.safetensors_io import write_safetensors
from train.tiny_parts import one_torch_thread

ARCH = DemoArch(unet_channels=(32, 32, 32, 32), unet_layers_per_block=1, te_hidden=32, te_layers=1,
                te_intermediate=64, vae_channels=(8, 8, 8, 8))


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    unet, te, vae = build_models(ARCH, seed=0)
    path = write_safetensors(root / "tiny.safetensors", sd1_state_dict(unet, vae, te))
    write_configs(root / "configs", ARCH, scaling=1.0)
    BASE.write(root / "data", seed=0, n=3, repeats=2)
    return root


def _run(argv):
    from lora_core.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.run(parser.parse_args(argv))


def _argv(root, out, *extra):
    return ["--checkpoint", str(root / "tiny.safetensors"), "--config-root", str(root / "configs"),
            "--data", str(root / "data"), "--out", str(out), "--data-dir", str(root / "cache"), *extra]


def test_train_command_writes_lora_and_preview(checkpoint, tmp_path, capsys):
    from lora_core.formats import load_lora

    out = tmp_path / "style.safetensors"
    rc = _run(_argv(checkpoint, out, "--steps", "3", "--rank", "2", "--alpha", "1", "--trigger", "lcstripes",
                    "--targets", "locon", "--seed", "5", "--loss-log", str(tmp_path / "loss.json")))
    assert rc == 0
    losses = json.loads((tmp_path / "loss.json").read_text())
    assert len(losses) == 3 and all(v > 0 for v in losses)
    lora = load_lora(out)
    assert lora.family == "sd1" and lora.algorithms()["locon"] > 0
    assert any(k.startswith("te1:text_model_encoder_layers_0") for k in lora.adapters)
    md = lora.metadata
    assert md["ss_output_name"] == "style" and md["ss_steps"] == "3" and md["ss_seed"] == "5"
    assert md["ss_resolution"] == "(64, 64)"  # the model's native size: 8x8 latents x 8
    assert md["ss_sd_model_name"] == "tiny" and md["ss_num_train_images"] == "6"
    assert json.loads(md["ss_tag_frequency"])["2_scenes"]["lcstripes"] == 3
    assert (tmp_path / "style.preview.png").is_file()
    assert "wrote" in capsys.readouterr().out


def test_train_command_bad_input_is_a_clear_error(checkpoint, tmp_path, capsys):
    assert _run(_argv(checkpoint, tmp_path / "x.ckpt", "--steps", "1")) == 2
    assert ".safetensors" in capsys.readouterr().out
    assert _run(_argv(checkpoint, tmp_path / "x.safetensors", "--steps", "0")) == 2
    assert "--steps must be at least 1" in capsys.readouterr().out
    if not __import__("torch").cuda.is_available():
        assert _run(_argv(checkpoint, tmp_path / "x.safetensors", "--steps", "1", "--device", "cuda")) == 2
        assert "no CUDA GPU" in capsys.readouterr().out
    assert _run(_argv(checkpoint, tmp_path / "x.safetensors", "--steps", "1", "--resolution", "60")) == 2
    assert "multiple of 8" in capsys.readouterr().out
    bad = _argv(checkpoint, tmp_path / "x.safetensors", "--steps", "1")
    bad[bad.index("--data") + 1] = str(tmp_path / "missing")
    assert _run(bad) == 2
    assert "not found" in capsys.readouterr().out
    notckpt = tmp_path / "lora.safetensors"
    write_safetensors(notckpt, {"lora_unet_x.lora_down.weight": __import__("torch").zeros(1, 1)})
    bad = _argv(checkpoint, tmp_path / "y.safetensors", "--steps", "1")
    bad[bad.index("--checkpoint") + 1] = str(notckpt)
    assert _run(bad) == 2
    assert "lora.safetensors" in capsys.readouterr().out


def test_base_and_folder_loras_from_the_command_line(checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file

    base = tmp_path / "base.safetensors"
    assert _run(_argv(checkpoint, base, "--steps", "2", "--lr", "0.05", "--no-preview")) == 0
    outs = {}
    for name, extra in (("plain", ()), ("on_base", ("--base-lora", f"{base}:0.5")),
                        ("on_folder", ("--folder-lora", f"2_scenes={base}:0.5"))):
        outs[name] = tmp_path / f"{name}.safetensors"
        assert _run(_argv(checkpoint, outs[name], "--steps", "2", "--seed", "1", "--no-preview", *extra)) == 0
    plain, on_base, on_folder = (load_file(str(outs[n])) for n in ("plain", "on_base", "on_folder"))
    assert plain.keys() == on_base.keys()
    assert not all(torch_equal(plain[k], on_base[k]) for k in plain)
    assert all(torch_equal(on_folder[k], on_base[k]) for k in plain)  # the one folder holds every image
    capsys.readouterr()
    for extra, message in ((("--folder-lora", "2_scenes"), "want FOLDER=FILE[:WEIGHT]"),
                           (("--folder-lora", f"9_none={base}"), "no data folder named 9_none"),
                           (("--base-lora", str(tmp_path / "gone.safetensors")), "gone.safetensors: file not found")):
        assert _run(_argv(checkpoint, tmp_path / "x.safetensors", "--steps", "1", "--no-preview", *extra)) == 2
        assert message in capsys.readouterr().out
    assert not (tmp_path / "x.safetensors").exists()


def torch_equal(a, b):
    return bool(__import__("torch").equal(a, b))


def test_ctrl_c_writes_the_lora_so_far(checkpoint, tmp_path, monkeypatch, capsys):
    from lora_core.formats import load_lora
    from lora_core.train import trainer

    real = trainer.F.mse_loss
    calls = {"n": 0}

    def interrupting_loss(*a, **kw):  # Ctrl-C arrives during the 3rd step's forward pass
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(trainer.F, "mse_loss", interrupting_loss)
    out = tmp_path / "cut.safetensors"
    assert _run(_argv(checkpoint, out, "--steps", "20", "--no-preview")) == 130
    lora = load_lora(out)
    assert lora.metadata["ss_steps"] == "2" and lora.metadata["lora_core_interrupted"] == "True"
    assert not (tmp_path / "cut.preview.png").exists()
    assert "interrupted" in capsys.readouterr().out
