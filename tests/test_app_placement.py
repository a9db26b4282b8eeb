"""The standalone app's device and precision (`--device`, `--precision`): the rules, the errors, and
a model placed in another precision that loads, takes a LoRA, restores bit for bit and draws. (This
machine has no GPU: the GPU placement itself runs in tools/device_check.sh.)"""
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_core.app import placement as pl
from lora_core.app.pipeline import GenerationParams, PipelineHandle
from lora_core.engine import Engine
from tests.app_pipeline.tiny_ldm import write_checkpoint


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_auto_picks_the_gpu_only_when_torch_sees_one():
    chosen = pl.choose("auto", "auto")
    assert chosen.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pl.choose("cpu", "auto").dtype_for("sd1") == torch.float32
    assert pl.choose("cpu", "bf16").dtype_for("sd1") == torch.bfloat16


def test_precision_rules_on_a_gpu(monkeypatch):
    monkeypatch.setattr(pl, "_has_bf16", lambda device: True)
    gpu = pl.Placement("cuda", "auto")
    assert gpu.dtype_for(None) == gpu.dtype_for("sdxl") == torch.float16
    assert gpu.dtype_for("flux") == gpu.dtype_for("sd3") == torch.bfloat16
    monkeypatch.setattr(pl, "_has_bf16", lambda device: False)
    assert gpu.dtype_for("flux") == torch.float32  # fp16 overflows in Flux/SD3
    assert pl.Placement("cuda", "fp32").dtype_for("sd1") == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_a_gpu_that_is_not_there_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(pl.PlacementError, match="sees no CUDA GPU"):
        pl.choose("cuda", "auto")
    with pytest.raises(pl.PlacementError, match="not a device name"):
        pl.choose("gpu0", "auto")
    with pytest.raises(pl.PlacementError, match="unknown precision"):
        pl.choose("cpu", "fp8")


def test_checkpoint_in_bf16_takes_a_lora_restores_and_draws(tmp_path):
    path, config_root, models = write_checkpoint(tmp_path, "sd1")
    handle = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root,
                                 placement=pl.Placement("cpu", "bf16"))
    assert handle.pipe.unet.conv_in.weight.dtype == torch.bfloat16
    assert handle.pipe.text_encoder.dtype == torch.bfloat16
    assert handle.device_label == "cpu, bfloat16"
    unet = handle.pipe.unet
    w0 = {k: v.clone() for k, v in unet.state_dict().items()}
    # a kohya LoRA on one attention projection
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    out_f, in_f = attn.weight.shape
    g = torch.Generator().manual_seed(1)
    up, down = torch.randn(out_f, 2, generator=g), torch.randn(2, in_f, generator=g)
    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    lora = {f"{module}.lora_up.weight": up, f"{module}.lora_down.weight": down, f"{module}.alpha": torch.tensor(2.0)}
    lora_path = tmp_path / "one.safetensors"
    save_file(lora, str(lora_path))
    engine = Engine(handle.binding)
    from lora_core.patcher import ActiveLora
    from lora_core.formats import load_lora

    engine.patcher.apply([ActiveLora(load_lora(lora_path), 1.0, 1.0)])
    expect = (w0["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"].float()
              + up @ down).to(torch.bfloat16)
    assert attn.weight.dtype == torch.bfloat16
    assert torch.equal(attn.weight.detach(), expect)  # merged in fp32, rounded once
    engine.patcher.restore()
    assert all(torch.equal(v, w0[k]) for k, v in unet.state_dict().items())
    image = handle.generate(GenerationParams(prompt="a cat", steps=2, seed=3, width=64, height=64))[0]
    assert image.size == (64, 64)


def test_generate_cli_bf16_draws_the_demo_close_to_fp32(tmp_path):
    def run(precision):
        out = tmp_path / f"{precision}.png"
        proc = subprocess.run([sys.executable, "-m", "lora_core", "generate",
                               "a large blue star on a white background, in the center", "--seed", "1",
                               "--steps", "8", "--out", str(out), "--models-dir", str(tmp_path / "models"),
                               "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--precision", precision],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        from PIL import Image
        return np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)

    full, half = run("fp32"), run("bf16")
    assert full.shape == half.shape == (64, 64, 3)
    assert np.abs(full - half).mean() < 12  # the same picture, bf16 rounding aside
