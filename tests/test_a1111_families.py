"""SD2 and SDXL text encoders under A1111's names: OpenCLIP's fused `in_proj_weight` gets the
q/k/v LoRA in its own rows only, SDXL's two encoders are told apart, and everything is restored
bit for bit. (The UNet side is covered on SD1 in test_a1111_generation.py.)"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "a1111_standin"))
import tiny_ldm  # noqa: E402
import webui_harness  # noqa: E402

W = tiny_ldm.WIDTH


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _generate(w, prompt):
    p = w.m.processing.StableDiffusionProcessing(prompt)
    return w.m.processing.process_images(p, sample=lambda p: _weights(w.m.shared.sd_model))[0], p


def _launch(tmp_path, arch, builder):
    return webui_harness.launch(tmp_path, checkpoints=[("c", arch, builder, tiny_ldm.checkpoint_of(builder, 5))])


def test_sdxl_both_text_encoders(tmp_path):
    deltas = tiny_ldm.write_text_lora(tmp_path / "models" / "Lora" / "xl.safetensors", 7, {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (W, W),
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (W, W),
    }, "sdxl_base_v1-0")
    w = _launch(tmp_path, "sdxl", tiny_ldm.TinySDXLText)
    try:
        assert w.m.shared.sd_model.is_sdxl
        w0 = _weights(w.m.shared.sd_model)
        seen, p = _generate(w, "<lora:xl:0.8>")
        q = tiny_ldm.SDXL_TE1_Q + ".weight"
        fused = tiny_ldm.SDXL_TE2_ATTN + ".in_proj_weight"
        torch.testing.assert_close(seen[q], w0[q] + 0.8 * deltas["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"])
        expected = w0[fused].clone()
        expected[W:2 * W] += 0.8 * deltas["lora_te2_text_model_encoder_layers_0_self_attn_k_proj"]
        torch.testing.assert_close(seen[fused], expected)
        assert torch.equal(seen[fused][:W], w0[fused][:W]) and torch.equal(seen[fused][2 * W:], w0[fused][2 * W:])
        assert p.comments == {}
        seen, _ = _generate(w, "nothing")
        for k in w0:
            assert torch.equal(seen[k], w0[k]), k
    finally:
        w.close()


def test_sd2_fused_in_proj_and_family_mismatch(tmp_path):
    lora_dir = tmp_path / "models" / "Lora"
    deltas = tiny_ldm.write_text_lora(lora_dir / "v2.safetensors", 8, {
        "lora_te_text_model_encoder_layers_0_self_attn_v_proj": (W, W)}, "sd_v2")
    tiny_ldm.write_text_lora(lora_dir / "xl.safetensors", 9, {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (W, W),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (W, W)}, "sdxl_base_v1-0")
    w = _launch(tmp_path, "sd2", tiny_ldm.TinySD2Text)
    try:
        w0 = _weights(w.m.shared.sd_model)
        fused = tiny_ldm.SD2_TE_ATTN + ".in_proj_weight"
        seen, p = _generate(w, "<lora:v2:1> <lora:xl:1>")
        expected = w0[fused].clone()
        expected[2 * W:] += deltas["lora_te_text_model_encoder_layers_0_self_attn_v_proj"]
        torch.testing.assert_close(seen[fused], expected)
        assert any("xl" in c and "sdxl" in c for c in p.comments), p.comments  # refused, and said so
        seen, _ = _generate(w, "")
        assert torch.equal(seen[fused], w0[fused])
    finally:
        w.close()
