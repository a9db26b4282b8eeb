"""The embedded default: the committed demo-model files match their manifest, the install script
turns a training build into an asset folder, the app loads it through the user-checkpoint path,
copies its LoRAs once, and falls back to the random-weight model when the file is wrong."""
import json
import logging
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from lora_core.app import demo
from lora_core.app.demo_pack import (ASSETS_DIR, ASSETS_ENV, DemoPackError, load_verified_pack, read_pack,
                                     sha256_of, verify_pack)

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run: python tools/install_demo_assets.py <build folder of tools/train_demo_model.py --loras>"


# ------------------------------------------------------------------ the committed files
def test_committed_checkpoint_matches_its_manifest_sha256():
    """Fails when someone changes the shipped weights without re-running the install script."""
    assert (ASSETS_DIR / "manifest.json").is_file(), INSTALL_HINT
    pack = read_pack(ASSETS_DIR)
    assert sha256_of(pack.checkpoint) == pack.sha256 == pack.manifest["checkpoint"]["sha256"]
    assert pack.checkpoint.stat().st_size == pack.manifest["checkpoint"]["bytes"] < 30 * 1024 * 1024
    assert pack.manifest["seed"] is not None and pack.manifest["unet_steps"] > 0 and pack.manifest["vae_steps"] > 0
    assert [lo.kind for lo in pack.loras].count("colour") == 3
    assert {lo.kind for lo in pack.loras} == {"style", "concept", "locon", "colour"}
    # every demo LoRA, the colour casts included, is trained by `lora_core train` from a recipe
    from lora_core.demo.loras import RECIPES

    recipes = {r.name: r for r in RECIPES}
    for item in pack.manifest["loras"]:
        recipe = recipes[item["name"]]
        assert item["kind"] == recipe.kind and item["algorithm"] == recipe.targets, item["name"]
        assert item["activation_text"] == recipe.activation_text != "", item["name"]
    for lora in pack.loras:
        assert sha256_of(lora.path) == lora.sha256, lora.name
        sidecar = json.loads(lora.sidecar.read_text())
        assert "demo" in sidecar["description"].lower() and sidecar["activation text"] == lora.activation_text
        assert lora.preview is not None and lora.preview.stat().st_size > 0
    verify_pack(pack)  # the check the app runs at start-up agrees


def test_package_data_ships_every_asset_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lora_core"]
    pkg = ROOT / "lora_core"
    shipped = {p for g in globs for p in pkg.glob(g) if p.is_file()}
    assets = {p for p in ASSETS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert assets, INSTALL_HINT
    assert assets <= shipped, sorted(str(p) for p in assets - shipped)


# ------------------------------------------------------------- install script on a tiny build
@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """A tiny (narrow) demo build with three 1-step LoRAs, installed by tools/install_demo_assets.py."""
    from lora_core.demo.loras import train_demo_loras
    from lora_core.demo.model import DemoArch, DemoTrainSettings, train_demo_model

    root = tmp_path_factory.mktemp("demo_build")
    arch = DemoArch(unet_channels=(32, 32, 32, 32), unet_layers_per_block=1, te_hidden=32, te_layers=1,
                    te_intermediate=64, vae_channels=(8, 8, 8, 8))
    few = DemoTrainSettings(n_images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, warmup=1)
    build = root / "build"
    manifest = train_demo_model(build, arch, few, data_dir=root / "cache", progress=False)
    train_demo_loras(build / manifest["file"], build / "configs", build / "loras", root / "work",
                     data_dir=root / "cache", steps=1, images=2, preview=False)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import install_demo_assets as tool
    finally:
        sys.path.pop(0)
    dest = root / "assets"
    assert tool.main([str(build), "--dest", str(dest), "--data-dir", str(root / "cache")]) == 0
    # installing again replaces the folder cleanly (no leftovers, no staging folders)
    assert tool.main([str(build), "--dest", str(dest), "--data-dir", str(root / "cache")]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["assets", "build", "cache", "work"]
    return {"dest": dest, "build": build, "root": root, "tool": tool}


def test_install_writes_manifest_sidecars_and_previews(tiny_assets):
    dest, build = tiny_assets["dest"], tiny_assets["build"]
    pack = load_verified_pack(dest)
    built = json.loads((build / "lora_core-demo.json").read_text())
    assert pack.sha256 == built["sha256"] == sha256_of(dest / "lora_core-demo.safetensors")
    assert pack.manifest["seed"] == built["seed"] and pack.manifest["unet_steps"] == built["unet_steps"]
    assert pack.default_size == 64
    assert (pack.config_root / "sd15" / "unet" / "config.json").is_file()
    by_name = {lo.name: lo for lo in pack.loras}
    assert set(by_name) == {"demo_stripes", "demo_lcshape", "demo_checker", "demo_warm", "demo_cool", "demo_green"}
    assert by_name["demo_stripes"].activation_text == "lcstripes"
    assert by_name["demo_lcshape"].activation_text == "lcshape"
    assert by_name["demo_checker"].activation_text == "lccheck"
    for lora in pack.loras:
        sidecar = json.loads(lora.sidecar.read_text())
        assert "demo" in sidecar["description"].lower() and sidecar["preferred weight"] == lora.preferred_weight
        assert sidecar["activation text"] == lora.activation_text
        from PIL import Image

        with Image.open(lora.preview) as im:
            assert im.size == (64, 64)


def test_install_refuses_a_build_whose_file_does_not_match_its_manifest(tiny_assets, tmp_path, capsys):
    bad = tmp_path / "build"
    shutil.copytree(tiny_assets["build"], bad, ignore=shutil.ignore_patterns("lora_data", ".cache"))
    data = bytearray((bad / "lora_core-demo.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "lora_core-demo.safetensors").write_bytes(bytes(data))
    assert tiny_assets["tool"].main([str(bad), "--dest", str(tmp_path / "assets"), "--no-previews"]) == 2
    assert "sha256" in capsys.readouterr().out
    assert not (tmp_path / "assets").exists()


def test_demo_handle_loads_the_pack_through_the_user_checkpoint_path(tiny_assets, tmp_path, monkeypatch):
    from lora_core.app import checkpoints

    calls = []
    real = checkpoints.load_checkpoint
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    pack = read_pack(tiny_assets["dest"])
    handle = demo.load_demo_handle(tmp_path, assets=tiny_assets["dest"])
    assert len(calls) == 1 and Path(calls[0][0][0]) == pack.checkpoint
    assert Path(calls[0][1]["config_root"]) == pack.config_root
    assert handle.is_demo and handle.label == demo.LABEL and "demo" in handle.label.lower()
    assert "models/Stable-diffusion" in handle.label
    assert handle.default_size == 64 and handle.family == "sd1"
    assert handle.model_hash == pack.sha256[:10] and demo.is_trained_demo(handle, pack)
    assert handle.pipe.unet.config.block_out_channels == (32, 32, 32, 32) or \
        list(handle.pipe.unet.config.block_out_channels) == [32, 32, 32, 32]
    assert handle.notes == []


@pytest.mark.parametrize("damage", ["flip_byte", "missing_file", "no_manifest", "malformed_manifest"])
def test_bad_or_missing_pack_falls_back_to_random_weights_with_a_warning(tiny_assets, tmp_path, caplog, damage):
    assets = tmp_path / "assets"
    shutil.copytree(tiny_assets["dest"], assets)
    ckpt = assets / "lora_core-demo.safetensors"
    if damage == "flip_byte":
        data = bytearray(ckpt.read_bytes())
        data[len(data) // 2] ^= 0x10
        ckpt.write_bytes(bytes(data))
    elif damage == "missing_file":
        ckpt.unlink()
    elif damage == "no_manifest":
        (assets / "manifest.json").unlink()
    else:
        manifest = json.loads((assets / "manifest.json").read_text())
        manifest["loras"] = [1, "x"]
        (assets / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DemoPackError, match="malformed"):
            read_pack(assets)
    if damage == "flip_byte":
        with pytest.raises(DemoPackError, match="sha256"):
            load_verified_pack(assets)
    with caplog.at_level(logging.WARNING, logger="lora_core.app.demo"):
        handle = demo.load_demo_handle(tmp_path / "data", assets=assets)
    assert handle.is_demo and handle.label == demo.FALLBACK_LABEL
    assert any("falling back" in r.getMessage() for r in caplog.records)
    assert handle.notes and "random weights" in handle.notes[0]
    from lora_core.app.pipeline import GenerationParams

    assert handle.generate(GenerationParams(prompt="x", steps=2, seed=1, width=64, height=64))[0].size == (64, 64)


def test_a_damaged_demo_lora_is_left_out_but_the_model_still_loads(tiny_assets, tmp_path, caplog):
    assets = tmp_path / "assets"
    shutil.copytree(tiny_assets["dest"], assets)
    (assets / "loras" / "demo_checker.safetensors").write_bytes(b"not the file")
    handle = demo.load_demo_handle(tmp_path / "data", assets=assets)
    assert demo.is_trained_demo(handle, read_pack(assets))
    with caplog.at_level(logging.WARNING, logger="lora_core.app.demo"):
        written = demo.ensure_demo_loras(tmp_path / "Lora", tmp_path / "data", handle, assets=assets)
    names = {p.stem for p in written}
    assert "demo_checker" not in names and {"demo_stripes", "demo_lcshape", "demo_warm"} <= names
    assert any("demo_checker" in r.getMessage() for r in caplog.records)


def test_session_copies_the_trained_loras_once(tiny_assets, tmp_path, monkeypatch):
    from lora_core.app.session import Session

    monkeypatch.setenv(ASSETS_ENV, str(tiny_assets["dest"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = Session(tmp_path / "models", tmp_path / "data")
    try:
        assert s.pipeline.is_demo and s.pipeline.label == demo.LABEL
        folder = tmp_path / "models" / "Lora" / "demo"
        # all copied from the pack (the colour casts too: no calibration at first start)
        for name in ("demo_stripes", "demo_lcshape", "demo_checker", "demo_warm", "demo_cool", "demo_green"):
            assert sha256_of(folder / f"{name}.safetensors") == sha256_of(tiny_assets["dest"] / "loras" /
                                                                         f"{name}.safetensors")
            assert (folder / f"{name}.preview.png").is_file()
        entry = s.library.find("demo_lcshape")
        assert entry.activation_text == "lcshape" and entry.preview
        # the user deletes them: a restart does not bring them back
        shutil.rmtree(folder)
    finally:
        s.close()
    s2 = Session(tmp_path / "models", tmp_path / "data")
    try:
        assert not (tmp_path / "models" / "Lora" / "demo").exists()
    finally:
        s2.close()


def test_loras_written_on_the_fallback_are_completed_once_the_trained_model_appears(tiny_assets, tmp_path):
    data, loras = tmp_path / "data", tmp_path / "Lora"
    fallback = demo.load_demo_handle(data, assets=tmp_path / "nowhere")
    written = demo.ensure_demo_loras(loras, data, fallback, assets=tmp_path / "nowhere")
    assert {p.stem for p in written} == {s.name for s in demo.DEMO_LORAS}
    _check_fallback_colour_loras(fallback, loras / demo.DEMO_LORA_FOLDER)
    assert demo.ensure_demo_loras(loras, data, fallback, assets=tmp_path / "nowhere") == []
    trained = demo.load_demo_handle(data, assets=tiny_assets["dest"])
    written = demo.ensure_demo_loras(loras, data, trained, assets=tiny_assets["dest"])
    assert {"demo_stripes", "demo_lcshape", "demo_checker"} <= {p.stem for p in written}
    assert demo.ensure_demo_loras(loras, data, trained, assets=tiny_assets["dest"]) == []


def _check_fallback_colour_loras(handle, folder):
    """On the fallback the colour casts are calibrated here: rank-1 conv_out kohya files, applied
    by the Engine like any LoRA (and the model is left unpatched)."""
    import json

    import numpy as np
    from safetensors import safe_open

    from lora_core.app.pipeline import GenerationParams
    from lora_core.engine import Engine
    from lora_core.request import ApplyRequest

    params = GenerationParams(prompt="x", steps=4, seed=3, width=64, height=64, sampler="Euler")
    base = np.asarray(handle.generate(params)[0], dtype=np.float64)
    engine = Engine(handle.binding)
    for spec in demo.DEMO_LORAS:
        path = folder / f"{spec.name}.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            meta, keys = fh.metadata(), set(fh.keys())
        assert meta["ss_output_name"] == spec.name
        assert {"lora_unet_conv_out.lora_down.weight", "lora_unet_conv_out.lora_up.weight"} <= keys
        sidecar = json.loads((folder / f"{spec.name}.json").read_text())
        assert sidecar["activation text"] == spec.activation_text
        assert sidecar["preferred weight"] == spec.preferred_weight
        assert (folder / f"{spec.name}.preview.png").stat().st_size > 0
        report = engine.apply([ApplyRequest(path)])
        assert report.loras[0].matched == 1 and not report.loras[0].refused
        shifted = np.asarray(handle.generate(params)[0], dtype=np.float64)
        engine.restore()
        shift = (shifted - base).reshape(-1, 3).mean(0)
        assert shift @ np.asarray(spec.rgb_shift) > 0, (spec.name, shift)
    assert np.array_equal(np.asarray(handle.generate(params)[0], dtype=np.float64), base)
