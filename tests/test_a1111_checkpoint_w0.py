"""A1111 / Forge with "Exact restore: read original weights back from the checkpoint file": the
host finds the safetensors file the webui loaded (`sd_checkpoint_info.filename`), the UNet's and
text encoder's names are the file's keys, no W0 copy is held, and every generation equals the one
with copies bit for bit."""
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "a1111_standin"))
import tiny_forge  # noqa: E402
import tiny_ldm  # noqa: E402
import webui_harness  # noqa: E402

PROMPTS = ["a cat <lora:x:0.7>", "a cat <lora:x:0.3>", "<lora:y:1> <lora:x:0.5>", "a cat", "<lora:x:1>"]


def launch(tmp_path, forge=False):
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    tiny_ldm.write_kohya_lora(lora_dir / "x.safetensors", seed=1)
    tiny_ldm.write_kohya_lora(lora_dir / "y.safetensors", seed=2, modules=[tiny_ldm.SD1_LINEARS[0][0]])
    builder = tiny_forge.builder if forge else tiny_ldm.TinySD1
    w = webui_harness.launch(tmp_path, checkpoints=[("ckpt_a", "sd1", builder, tiny_ldm.checkpoint(10))],
                             forge=forge)
    w.forge = forge
    w.m.script_callbacks.ui_settings_callback()
    return w


def weights(w):
    model = w.m.shared.sd_model
    if w.forge:
        return {k: v.detach().clone() for k, v in tiny_forge.ldm_weights(model).items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(w, prompt):
    p = w.m.processing.StableDiffusionProcessing(prompt)
    return w.m.processing.process_images(p, sample=lambda p: weights(w))[0]


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
def test_generations_equal_the_copying_host_and_hold_no_copies(tmp_path, forge):
    copying = launch(tmp_path / "copies", forge)
    reading = launch(tmp_path / "file", forge)
    try:
        ckpt = tmp_path / "ckpt_a.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_ldm.checkpoint(10)().items()}, os.fspath(ckpt))
        reading.m.shared.sd_model.sd_checkpoint_info.filename = str(ckpt)
        copying.m.shared.opts.lora_core_restore_from_checkpoint = "never"
        reading.m.shared.opts.lora_core_restore_from_checkpoint = "always"
        w0 = weights(reading)
        for prompt in PROMPTS:
            a, b = run(copying, prompt), run(reading, prompt)
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (prompt, k)
            patcher = reading.host._engine.patcher if reading.host._engine is not None else None
            if "<lora" in prompt:
                # A1111: UNet and CLIP are read back; Forge: the UNet (its CLIP has names of its own)
                held = copying.host._engine.patcher.backup_bytes
                assert patcher.file_backed_tensors > 0 and held > 0
                assert patcher.backup_bytes == 0 if not forge else 0 < patcher.backup_bytes < held
        run(reading, "a cat")
        after = weights(reading)
        for k in w0:
            assert torch.equal(after[k], w0[k]), k
    finally:
        copying.close()
        reading.close()


def test_auto_keeps_copies_for_small_models_and_a_missing_file_falls_back(tmp_path):
    w = launch(tmp_path)
    try:
        assert w.m.shared.opts.lora_core_restore_from_checkpoint == "auto"
        run(w, "<lora:x:1>")
        assert w.host._engine.patcher.w0_source is None  # a tiny model: copies
        w.m.shared.opts.lora_core_restore_from_checkpoint = "always"  # the stand-in's file does not exist
        w.host.on_model_loaded(w.m.shared.sd_model)
        run(w, "<lora:x:1>")
        assert w.host._engine.patcher.w0_source is None and w.host._engine.patcher.backup_bytes > 0
    finally:
        w.close()
