"""lora_core in the stand-in started as Forge, running a Forge-shaped tiny Flux.1 engine
(tiny_forge_flux.py: the BFL transformer in `forge_objects.unet.model.diffusion_model`, CLIP-L and
T5 in `forge_objects.clip.cond_stage_model.clip_l/t5xxl.transformer`, no is_flux flag).

Oracle for the transformer: diffusers reads the same LoRA files and fuses them into the tiny
FluxTransformer2DModel (`load_lora_adapter` + `fuse_lora`); the weights Forge's modules hold while
sampling are turned into diffusers' layout by diffusers' single-file converter and compared.
Text encoders and lbw: the plain LoRA math W0 + w·(alpha/r)·up@down on the tensors themselves.
"""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "a1111_standin"))
sys.path.insert(0, str(HERE / "targets"))
import tiny_forge  # noqa: E402
import tiny_forge_flux  # noqa: E402
import tiny_ldm  # noqa: E402
import webui_harness  # noqa: E402
from dit_files import (  # noqa: E402
    KOHYA_FLUX, KOHYA_FLUX_ALPHA, KOHYA_FLUX_TE, KOHYA_FLUX_TE_ALPHA, KOHYA_FLUX_TENSORS, PREFIX, diffusers_fused,
    flux_checkpoint, kohya_delta, kohya_flux_file, peft_file, transformer_part,
)
from dit_models import flux_to_diffusers  # noqa: E402

TE_TENSORS = dict(zip(KOHYA_FLUX_TE, KOHYA_FLUX_TE.values()))
UNET_TENSORS = {f"lora_unet_{m}": PREFIX + t for m, t in zip(KOHYA_FLUX, KOHYA_FLUX_TENSORS)}


@pytest.fixture
def forge(tmp_path):
    torch.set_num_threads(1)
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    kohya = kohya_flux_file(lora_dir / "fx.safetensors")
    peft_file(lora_dir, "flux")                                           # peft_flux.safetensors
    tiny_ldm.write_kohya_lora(lora_dir / "sd1.safetensors", seed=1)        # an SD1 LoRA
    ckpt = flux_checkpoint(torch.float32)
    w = webui_harness.launch(tmp_path, forge=True, builtin=False, checkpoints=[
        ("flux1-dev", "flux", tiny_forge_flux.builder, lambda: ckpt)])
    w.kohya, w.lora_dir = kohya, lora_dir
    yield w
    w.close()


def generate(w, prompt, compute=True):
    """A generation as Forge runs it; returns (weights the sampler saw, p)."""
    p = w.m.processing.StableDiffusionProcessing(prompt)

    def sample(p):
        objects = p.sd_model.forge_objects
        if compute:   # runs every layer (reads the weights at call time)
            tiny_forge.sample(p.sd_model)
        else:         # fp8/bf16 weights: the fp32 probe cannot run them; load the patchers only
            tiny_forge.load_models_gpu([objects.clip.patcher])
            tiny_forge.load_models_gpu([objects.unet])
        return tiny_forge_flux.checkpoint_weights(p.sd_model, objects)

    return w.m.processing.process_images(p, sample=sample)[0], p


def base(w):
    return tiny_forge_flux.checkpoint_weights(w.m.shared.sd_model)


def assert_bit_exact(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype.itemsize == 1 else a[k],
                           b[k].view(torch.uint8) if b[k].dtype.itemsize == 1 else b[k]), k


def test_forge_flux_engine_is_family_flux(forge):
    w = forge
    sd_model = w.m.shared.sd_model
    assert isinstance(sd_model, tiny_forge_flux.TinyForgeFlux) and not isinstance(sd_model, torch.nn.Module)
    assert not sd_model.is_webui_legacy_model() and not hasattr(sd_model, "is_flux")
    assert w.host.current_family() == "flux"
    generate(w, "<lora:fx:1>")
    assert w.host._engine.family == "flux"
    # every BFL tensor of the transformer and both encoders are bound, under the checkpoint's names
    binding = w.host._engine.binding
    assert binding.components == ("unet", "te1", "te3")
    assert binding.resolve("unet:single_blocks_0_linear2").name == PREFIX + "single_blocks.0.linear2.weight"
    assert {s.name for s, _rows in binding.resolve_parts("unet:single_blocks_0_linear1")} == {
        PREFIX + "single_blocks.0.linear1.weight"}
    assert binding.resolve("te3:encoder_block_0_layer_0_SelfAttention_q").name == \
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"


def test_kohya_and_peft_tags_equal_diffusers_fuse_and_no_tag_restores(forge):
    w = forge
    w0 = base(w)
    plain = tiny_forge.sample(w.m.shared.sd_model)
    seen, p = generate(w, "a cat <lora:fx:0.8> <lora:peft_flux:0.5>")
    assert p.comments == {} and "Lora hashes" in p.extra_generation_params
    # transformer: diffusers fuses the two files one after the other
    base_diffusers = flux_to_diffusers(transformer_part(w0))
    once = diffusers_fused("flux", base_diffusers, w.lora_dir / "fx.safetensors", 0.8)
    expect = diffusers_fused("flux", once, w.lora_dir / "peft_flux.safetensors", 0.5)
    got = flux_to_diffusers(transformer_part(seen))
    changed = 0
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=k)
        changed += not torch.equal(got[k], base_diffusers[k])
    assert changed > 30
    # linear1 (q, k, v and the MLP in one tensor) took PEFT's to_q/to_k/to_v/proj_mlp in its rows
    assert not torch.equal(seen[PREFIX + "single_blocks.0.linear1.weight"], w0[PREFIX + "single_blocks.0.linear1.weight"])
    # text encoders (only the kohya file has them): W0 + 0.8·ΔW
    for module, name in KOHYA_FLUX_TE.items():
        want = w0[name] + 0.8 * kohya_delta(w.kohya, module, KOHYA_FLUX_TE_ALPHA, 2)
        torch.testing.assert_close(seen[name], want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(tiny_forge.sample(w.m.shared.sd_model), plain)
    again, _ = generate(w, "a cat")
    assert_bit_exact(again, w0)
    assert_bit_exact(base(w), w0)
    assert torch.equal(tiny_forge.sample(w.m.shared.sd_model), plain)


def test_cards_show_flux_loras_for_a_flux_checkpoint(forge):
    w = forge
    page = next(p for p in w.m.ui_extra_networks.extra_pages if p.name == "lora")
    page.populate("txt2img")
    assert set(page.items) == {"fx", "peft_flux"}      # the SD1 LoRA is hidden
    w.m.shared.opts.lora_core_show_all_families = True
    page.populate("txt2img")
    assert set(page.items) == {"fx", "peft_flux", "sd1"}


def test_sd1_lora_on_flux_is_refused_and_said(forge):
    w = forge
    w0 = base(w)
    seen, p = generate(w, "<lora:sd1:1>")
    assert_bit_exact(seen, w0)
    assert any("sd1" in c and "flux" in c for c in p.comments), p.comments


def test_lbw_61_value_flux_vector_through_the_host(forge):
    w = forge
    w0 = base(w)
    ids = ("CLIP", "T5", "IN") + tuple(f"D{i:02d}" for i in range(19)) + tuple(f"S{i:02d}" for i in range(38)) + ("OUT",)
    factors = dict.fromkeys(ids, 1.0)
    factors.update(CLIP=0.0, T5=0.5, D00=2.0, D01=0.0, S01=0.25)
    vector = ",".join(f"{factors[b]:g}" for b in ids)
    assert len(vector.split(",")) == 61
    seen, p = generate(w, f"<lora:fx:1:lbw={vector}>")
    assert p.comments == {}, p.comments
    block = {"double_blocks_0": "D00", "double_blocks_1": "D01", "single_blocks_0": "S00", "single_blocks_1": "S01"}
    for module, name in UNET_TENSORS.items():
        factor = factors[block[module[len("lora_unet_"):][:15]]]
        want = w0[name] + factor * kohya_delta(w.kohya, module, KOHYA_FLUX_ALPHA, 4)
        torch.testing.assert_close(seen[name], want, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(seen[name], w0[name]) == (factor == 0), name
    te1, t5 = TE_TENSORS.values()
    assert torch.equal(seen[te1], w0[te1])
    t5_module = next(m for m in KOHYA_FLUX_TE if m.startswith("lora_te3_"))
    torch.testing.assert_close(seen[t5], w0[t5] + 0.5 * kohya_delta(w.kohya, t5_module, KOHYA_FLUX_TE_ALPHA, 2))
    generate(w, "")
    assert_bit_exact(base(w), w0)


def test_fp8_flux_is_patched_and_restored_bit_for_bit(tmp_path):
    """Forge runs fp8 Flux checkpoints with float8_e4m3fn weights: merged in fp32, rounded to the
    nearest fp8 value, and restored exactly."""
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    kohya = kohya_flux_file(lora_dir / "fx.safetensors")
    ckpt = flux_checkpoint(torch.float8_e4m3fn)
    w = webui_harness.launch(tmp_path, forge=True, checkpoints=[
        ("flux1-dev-fp8", "flux", tiny_forge_flux.builder, lambda: ckpt)])
    try:
        w0 = base(w)
        assert w0[PREFIX + "double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
        seen, p = generate(w, "<lora:fx:4>", compute=False)
        assert p.comments == {}, p.comments
        for module, name in UNET_TENSORS.items():
            exact = w0[name].float() + 4 * kohya_delta(kohya, module, KOHYA_FLUX_ALPHA, 4)
            assert seen[name].dtype == torch.float8_e4m3fn
            # round to nearest: within half an fp8 step of the exact value, and moved
            torch.testing.assert_close(seen[name].float(), exact, rtol=2 ** -4 + 1e-5, atol=2 ** -10, msg=name)
            assert not torch.equal(seen[name].view(torch.uint8), w0[name].view(torch.uint8)), name
        seen, _ = generate(w, "", compute=False)
        assert_bit_exact(seen, w0)
    finally:
        w.close()


def test_forge_sd3_engine_with_three_text_encoders(tmp_path):
    """Forge's SD3 engine (is_sd3; clip_l, clip_g, t5xxl): a PEFT SD3 LoRA equals diffusers' fuse on
    the MMDiT, a kohya one reaches CLIP-G and T5 by the LoRA math; no tag restores bit for bit."""
    from dit_files import KOHYA_SD3, kohya_sd3_file, sd3_checkpoint
    from dit_models import sd3_to_diffusers

    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    kohya = kohya_sd3_file(lora_dir / "k3.safetensors")
    peft_file(lora_dir, "sd3")
    kohya_flux_file(lora_dir / "fx.safetensors")
    ckpt = sd3_checkpoint(torch.float32)
    w = webui_harness.launch(tmp_path, forge=True, checkpoints=[
        ("sd3_medium", "sd3", tiny_forge_flux.builder_sd3, lambda: ckpt)])
    try:
        assert w.host.current_family() == "sd3"
        w0 = base(w)
        seen, p = generate(w, "<lora:peft_sd3:0.6> <lora:k3:0.5:1.5>")
        assert p.comments == {}, p.comments
        assert w.host._engine.binding.components == ("unet", "te1", "te2", "te3")
        base_diffusers = sd3_to_diffusers(transformer_part(w0))
        expect = diffusers_fused("sd3", base_diffusers, lora_dir / "peft_sd3.safetensors", 0.6)
        got = sd3_to_diffusers(transformer_part(seen))
        qkv0 = PREFIX + "joint_blocks.0.x_block.attn.qkv.weight"
        fc1 = PREFIX + "joint_blocks.1.context_block.mlp.fc1.weight"
        for k, v in expect.items():   # the kohya file's two transformer modules add on top of PEFT's
            if k.startswith(tuple(f"transformer_blocks.0.attn.to_{x}." for x in "qkv")
                            + ("transformer_blocks.1.ff_context.net.0.",)):
                continue
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=k)
        peft_qkv = torch.cat([expect[f"transformer_blocks.0.attn.to_{x}.weight"] for x in "qkv"])
        torch.testing.assert_close(seen[qkv0], peft_qkv + 1.5 * kohya_delta(
            kohya, "lora_unet_joint_blocks_0_x_block_attn_qkv", 3.0, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(seen[fc1], expect["transformer_blocks.1.ff_context.net.0.proj.weight"] + 1.5 *
                                   kohya_delta(kohya, "lora_unet_joint_blocks_1_context_block_mlp_fc1", 3.0, 2),
                                   rtol=1e-5, atol=1e-5)
        for module, name in KOHYA_SD3.items():
            if module.startswith("lora_te"):
                torch.testing.assert_close(seen[name], w0[name] + 0.5 * kohya_delta(kohya, module, 3.0, 2), msg=name)
        seen, p = generate(w, "<lora:fx:1>")
        assert_bit_exact(seen, w0)
        assert any("flux" in c and "sd3" in c for c in p.comments), p.comments
    finally:
        w.close()


@pytest.mark.parametrize("layout", ["single-file", "transformer-only"])
def test_w0_read_back_from_the_flux_checkpoint_file(tmp_path, layout):
    """"Exact restore from the checkpoint" on Forge Flux: the full single file (transformer, CLIP-L
    and T5 under text_encoders.*, Forge's own save_checkpoint names) holds no W0 copy at all; the
    transformer-only flux1-dev.safetensors (bare double_blocks.* keys) backs the transformer, the
    encoders (not in that file) keep copies. Every generation equals the copying host's bit for bit."""
    from safetensors.torch import save_file

    ckpt = flux_checkpoint(torch.bfloat16)
    hosts = []
    for name in ("copies", "file"):
        lora_dir = tmp_path / name / "models" / "Lora"
        lora_dir.mkdir(parents=True)
        kohya_flux_file(lora_dir / "fx.safetensors")
        peft_file(lora_dir, "flux")
        hosts.append(webui_harness.launch(tmp_path / name, forge=True, checkpoints=[
            ("flux1-dev", "flux", tiny_forge_flux.builder, lambda: ckpt)]))
    copying, reading = hosts
    try:
        path = tmp_path / "flux1-dev.safetensors"
        on_disk = ckpt if layout == "single-file" else {k[len(PREFIX):]: v for k, v in ckpt.items() if k.startswith(PREFIX)}
        save_file(on_disk, str(path))
        reading.m.shared.sd_model.sd_checkpoint_info.filename = str(path)
        for w, mode in ((copying, "never"), (reading, "always")):
            w.m.script_callbacks.ui_settings_callback()
            w.m.shared.opts.lora_core_restore_from_checkpoint = mode
        w0 = base(reading)
        for prompt in ("<lora:fx:0.7>", "<lora:fx:0.3> <lora:peft_flux:1>", "a cat", "<lora:peft_flux:0.5>"):
            a, _ = generate(copying, prompt, compute=False)
            b, _ = generate(reading, prompt, compute=False)
            assert_bit_exact(a, b)
            if "<lora" in prompt:
                patcher, held = reading.host._engine.patcher, copying.host._engine.patcher.backup_bytes
                assert patcher.file_backed_tensors > 0 and held > 0
                if layout == "single-file" or "fx" not in prompt:   # only fx has text encoder modules
                    assert patcher.backup_bytes == 0
                else:
                    assert 0 < patcher.backup_bytes < held
        generate(reading, "", compute=False)
        assert_bit_exact(base(reading), w0)
    finally:
        copying.close()
        reading.close()


def test_quantized_weights_are_left_out_and_said(tmp_path, caplog):
    """Forge's nf4/GGUF Flux keeps packed integer storage in some Parameters: lora_core cannot merge
    into those, skips their modules (the rest is patched exactly), logs it once, restores bit for bit."""
    import logging

    from torch import nn

    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    kohya = kohya_flux_file(lora_dir / "fx.safetensors")
    ckpt = flux_checkpoint(torch.bfloat16)
    packed = PREFIX + "double_blocks.0.img_attn.qkv.weight"

    def quantized_builder(state_dict):
        engine = tiny_forge_flux.builder(state_dict)
        layer = engine.forge_objects.unet.model.diffusion_model.double_blocks.get_submodule("0.img_attn.qkv")
        n = layer.weight.numel()   # nf4: two 4-bit values a byte, stored [n/2, 1] uint8
        layer.weight = nn.Parameter(torch.randint(0, 255, (n // 2, 1), dtype=torch.uint8), requires_grad=False)
        return engine

    w = webui_harness.launch(tmp_path, forge=True, checkpoints=[("flux1-dev-nf4", "flux", quantized_builder, lambda: ckpt)])
    try:
        w0 = base(w)
        with caplog.at_level(logging.WARNING, logger="lora_core"):
            seen, p = generate(w, "<lora:fx:1>", compute=False)
        assert any("quantized" in r.getMessage() and packed[len("model."):] in r.getMessage() for r in caplog.records)
        assert torch.equal(seen[packed], w0[packed])
        for module, name in UNET_TENSORS.items():
            if name == packed:
                continue
            want = w0[name].float() + kohya_delta(kohya, module, KOHYA_FLUX_ALPHA, 4)
            torch.testing.assert_close(seen[name].float(), want, rtol=2 ** -8 + 1e-5, atol=1e-6, msg=name)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lora_core"):
            generate(w, "<lora:fx:0.5>", compute=False)
        assert not any("quantized" in r.getMessage() for r in caplog.records)   # once per binding
        seen, _ = generate(w, "", compute=False)
        assert_bit_exact(seen, w0)
    finally:
        w.close()
