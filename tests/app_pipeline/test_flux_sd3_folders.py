"""The standalone app on diffusers-format Flux.1 and SD3 folders in models/Stable-diffusion.

Tiny pipelines are built in code (tiny_dit_pipes.py) and saved with `save_pretrained`, tokenizers
included; the app loads them offline, binds the Engine to the transformer and text encoders,
applies `<lora:...>` tags and generates. Oracle for the merged weights: diffusers + PEFT's own
`load_lora_weights` + `fuse_lora` on the same folder.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_dit_pipes import build_flux, build_sd3, save_folder  # noqa: E402

from lora_core.app.session import CheckpointLoadError, Session  # noqa: E402

WEIGHT = 0.8
GEN = dict(steps=2, seed=7, width=64, height=64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/ with a tiny Flux folder and a tiny SD3 folder (and nothing else)."""
    root = tmp_path_factory.mktemp("models")
    cache = tmp_path_factory.mktemp("tok")
    save_folder(build_flux(cache), root, "tiny-flux")
    save_folder(build_sd3(cache), root, "tiny-sd3")
    (root / "Lora").mkdir()
    return root


def _session(models, tmp_path, name):
    return Session(models, tmp_path / "data", checkpoint=name, strict=True)


def _pixels(image) -> bytes:
    return np.asarray(image).tobytes()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fused_oracle(folder, pipe_cls, lora_file=None, pipe=None) -> dict[str, torch.Tensor]:
    """The transformer weights after diffusers + PEFT load the LoRA and fuse it at WEIGHT."""
    if pipe is None:
        pipe = pipe_cls.from_pretrained(str(folder), local_files_only=True)
        pipe.load_lora_weights(str(lora_file))
    pipe.fuse_lora(lora_scale=WEIGHT)
    return {k: v.detach() for k, v in pipe.transformer.state_dict().items() if "lora_" not in k}


def _assert_merged_equal(ours: dict, oracle: dict, base: dict):
    """Every transformer tensor equals diffusers' fused one, and the LoRA changed some."""
    oracle = {k.replace(".base_layer.", "."): v for k, v in oracle.items()}
    assert set(ours) == set(oracle)
    changed = 0
    for name, value in ours.items():
        torch.testing.assert_close(value, oracle[name], rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(value, base[name])
    assert changed >= 4, changed


def _apply_and_compare(session, tag: str):
    """Plain image, image with the tag (+ the merged transformer then), plain image again."""
    transformer = session.pipeline.pipe.transformer
    base = _state(transformer)
    plain, _, msgs = session.txt2img("a photo of a cat", **GEN)
    assert plain and not msgs, msgs
    with_lora, info, msgs = session.txt2img(f"a photo of a cat {tag}", **GEN)
    assert with_lora, msgs
    assert not [m for m in msgs if "match" in m.lower() or "could not" in m.lower()], msgs
    merged = _state(transformer)
    again, _, _ = session.txt2img("a photo of a cat", **GEN)
    assert _pixels(with_lora[0]) != _pixels(plain[0])
    assert _pixels(again[0]) == _pixels(plain[0])  # restored bit-exactly
    assert all(torch.equal(v, base[k]) for k, v in _state(transformer).items())
    return base, merged, info


# ------------------------------------------------------------------------------------------ Flux

def _kohya_flux_lora(path: Path, width: int = 16):
    """kohya sd-scripts' Flux layout over both double blocks and the single blocks' linear2.
    (single_blocks.N.linear1 is left out: diffusers' kohya converter splits it at the real model's
    fixed 3072 width, so it cannot be the oracle for a tiny model.)"""
    g = torch.Generator().manual_seed(11)
    h = width
    modules = {}
    for i in range(2):
        for s in ("img", "txt"):
            modules[f"double_blocks_{i}_{s}_attn_qkv"] = (3 * h, h)
            modules[f"double_blocks_{i}_{s}_attn_proj"] = (h, h)
            modules[f"double_blocks_{i}_{s}_mlp_0"] = (4 * h, h)
            modules[f"double_blocks_{i}_{s}_mlp_2"] = (h, 4 * h)
    for i in range(2):
        modules[f"single_blocks_{i}_linear2"] = (h, 5 * h)
    sd = {}
    for n, (name, (out_dim, in_dim)) in enumerate(modules.items()):
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, in_dim, generator=g) * 0.5
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out_dim, 4, generator=g) * 0.5
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(2.0 + n % 3)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora_flux"})


def test_flux_folder_listed_loaded_and_labelled(models, tmp_path):
    from lora_core.app import serve

    session = _session(models, tmp_path, "tiny-flux")
    try:
        names = session.checkpoints()
        # the folders are one entry each; their weight files are not checkpoints of their own
        assert names[1:] == ["tiny-flux", "tiny-sd3"], names
        assert session.family == "flux" and session.current_checkpoint() == "tiny-flux"
        assert "Flux" in session.pipeline.label and "diffusers folder" in session.pipeline.label
        banner = serve.model_banner_html(session)
        assert "tiny-flux" in banner and "Flux model" in banner and "Demo model" not in banner
        assert serve._sampler_names(session) == (["Euler", "DPM++ 2M"], "Euler")
        # the engine is bound to the transformer, CLIP-L (te1) and T5 (te3)
        assert set(session.engine.binding.components) == {"unet", "te1", "te3"}
    finally:
        session.close()


def test_flux_kohya_lora_changes_image_restores_and_matches_diffusers_fuse(models, tmp_path):
    from diffusers import FluxPipeline

    _kohya_flux_lora(models / "Lora" / "kohya_flux.safetensors")
    session = _session(models, tmp_path, "tiny-flux")
    try:
        base, merged, info = _apply_and_compare(session, f"<lora:kohya_flux:{WEIGHT}>")
        assert "Sampler: Euler," in info and "CFG scale: 3.5" in info and "kohya_flux" in info
    finally:
        session.close()
    oracle = _fused_oracle(models / "Stable-diffusion" / "tiny-flux", FluxPipeline,
                           models / "Lora" / "kohya_flux.safetensors")
    _assert_merged_equal(merged, oracle, base)


def test_flux_peft_lora_saved_by_diffusers_matches_fuse_lora(models, tmp_path):
    """A PEFT LoRA on every Flux linear (q/k/v and proj_mlp of the single blocks included, alpha != r),
    written by FluxPipeline.save_lora_weights."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    folder = models / "Stable-diffusion" / "tiny-flux"
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(3)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=6, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out", "norm1.linear"]))
    lora_dir = tmp_path / "peft"
    # with the adapter config, as diffusers' training scripts write it (the file then carries alpha)
    FluxPipeline.save_lora_weights(lora_dir, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                   transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict())
    shutil.copy(lora_dir / "pytorch_lora_weights.safetensors", models / "Lora" / "peft_flux.safetensors")
    session = _session(models, tmp_path, "tiny-flux")
    try:
        base, merged, _ = _apply_and_compare(session, f"<lora:peft_flux:{WEIGHT}>")
    finally:
        session.close()
    _assert_merged_equal(merged, _fused_oracle(folder, FluxPipeline, pipe=pipe), base)


# kohya text-encoder modules of a Flux LoRA: (kohya name, HF module path, encoder attribute, out, in)
FLUX_TE_MODULES = [
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "encoder.layers.0.self_attn.q_proj", "text_encoder", 8, 8),
    ("lora_te1_text_model_encoder_layers_1_mlp_fc1", "encoder.layers.1.mlp.fc1", "text_encoder", 16, 8),
    ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", "encoder.block.0.layer.0.SelfAttention.q", "text_encoder_2",
     16, 12),
    ("lora_te3_encoder_block_1_layer_1_DenseReluDense_wi", "encoder.block.1.layer.1.DenseReluDense.wi",
     "text_encoder_2", 32, 12),
]


def _peft_delta(encoder, module_path: str, down, up, alpha: float) -> torch.Tensor:
    """PEFT's ΔW for one Linear of a copy of `encoder` given kohya's factors (oracle; diffusers'
    own text-encoder LoRA loading does not fit transformers 5's CLIP, so PEFT is asked directly)."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=down.shape[0], lora_alpha=alpha, target_modules=[module_path]),
                                    copy.deepcopy(encoder))
    layer = model.get_submodule(module_path)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(down)
        layer.lora_B["default"].weight.copy_(up)
        return layer.get_delta_weight("default").float()


def test_flux_kohya_text_encoder_lora_clip_and_t5(models, tmp_path):
    """`lora_te1_` (CLIP-L) and `lora_te3_` (T5) modules of a kohya Flux LoRA reach the folder's
    text encoders, each ΔW equal to PEFT's for the same factors, and leave them exact afterwards."""
    g = torch.Generator().manual_seed(21)
    sd, factors = {}, {}
    for name, _, _, out_dim, in_dim in FLUX_TE_MODULES:
        down, up = torch.randn(2, in_dim, generator=g), torch.randn(out_dim, 2, generator=g)
        sd.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.5)})
        factors[name] = (down, up)
    save_file(sd, str(models / "Lora" / "kohya_flux_te.safetensors"))
    session = _session(models, tmp_path, "tiny-flux")
    try:
        pipe = session.pipeline.pipe
        encoders = {attr: _state(getattr(pipe, attr)) for attr in ("text_encoder", "text_encoder_2")}
        plain, _, _ = session.txt2img("a photo of a cat", **GEN)
        styled, _, msgs = session.txt2img(f"a photo of a cat <lora:kohya_flux_te:{WEIGHT}>", **GEN)
        assert _pixels(styled[0]) != _pixels(plain[0]), msgs
        for name, path, attr, _, _ in FLUX_TE_MODULES:
            down, up = factors[name]
            merged = getattr(pipe, attr).get_submodule(path).weight.detach()
            expected = encoders[attr][f"{path}.weight"] + WEIGHT * _peft_delta(getattr(pipe, attr), path, down, up, 1.5)
            torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6, msg=name)
        again, _, _ = session.txt2img("a photo of a cat", **GEN)
        assert _pixels(again[0]) == _pixels(plain[0])
        for attr, base in encoders.items():
            assert all(torch.equal(v, base[k]) for k, v in _state(getattr(pipe, attr)).items()), attr
    finally:
        session.close()


def test_flux_samplers_sizes_and_prompt_syntax(models, tmp_path):
    session = _session(models, tmp_path, "tiny-flux")
    try:
        images, _, msgs = session.txt2img("a cat", sampler="Euler a", **{**GEN, "steps": 1})
        assert not images and "does not apply to Flux" in msgs[0] and "Euler, DPM++ 2M" in msgs[0]
        images, _, msgs = session.txt2img("a cat", width=72, height=64, steps=1)
        assert not images and "multiple of 16" in msgs[0]
        images, info, msgs = session.txt2img("a cat", sampler="dpm++ 2m", **GEN)
        assert images and "Sampler: DPM++ 2M," in info, msgs
        # weights and BREAK are read and dropped: the same image as the plain text, with a note
        plain, _, _ = session.txt2img("a red cat, blue", **GEN)
        weighted, info, msgs = session.txt2img("a (red:1.4) cat, [blue]", "dog", **GEN)
        assert _pixels(weighted[0]) == _pixels(plain[0])
        assert any("not applied to Flux" in m for m in msgs) and any("no negative prompt" in m for m in msgs)
        assert info.startswith("a (red:1.4) cat, [blue]")  # the infotext keeps what the user wrote
    finally:
        session.close()


@pytest.mark.parametrize("name, family", [("tiny-flux", "flux"), ("tiny-sd3", "sd3")])
def test_flow_samplers_follow_the_models_flow(models, name, family):
    """Both offered samplers solve the model's flow ODE (with enough steps they reach the same
    latents, far closer to each other than to another seed's), and DPM++ 2M steps along the model's
    shifted schedule: Flux's dynamic shift (exp(mu), as the Euler scheduler gets it from the
    pipeline), SD3's fixed shift from the folder's scheduler config."""
    import diffusers
    import numpy as np

    from lora_core.app.diffusers_folders import PIPELINE_FAMILIES
    from lora_core.app.samplers import make_scheduler

    folder = models / "Stable-diffusion" / name
    cls = getattr(diffusers, {v: k for k, v in PIPELINE_FAMILIES.items()}[family])
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)

    def run(sampler, steps, seed=1):
        pipe.scheduler = make_scheduler(sampler, base, family)
        latents = pipe("a cat", num_inference_steps=steps, width=64, height=64, output_type="latent",
                       generator=torch.Generator().manual_seed(seed)).images
        return latents, pipe.scheduler.sigmas[:-1].double().numpy()

    def distance(a, b):
        return float((a - b).norm() / b.norm())

    reference, _ = run("Euler", 30)
    assert distance(run("DPM++ 2M", 30)[0], reference) < 0.02 * distance(run("Euler", 30, seed=2)[0], reference)
    _, euler_sigmas = run("Euler", 6)
    _, dpm_sigmas = run("DPM++ 2M", 6)
    if family == "flux":
        np.testing.assert_allclose(dpm_sigmas, euler_sigmas, atol=2e-3)  # timesteps are whole numbers there
    else:
        plain = np.linspace(1.0, 1 / 6, 6)
        shift = base["shift"]
        np.testing.assert_allclose(dpm_sigmas, shift * plain / (1 + (shift - 1) * plain), atol=2e-3)
        assert shift != 1.0


def test_generate_cli_with_folder(models, tmp_path):
    import argparse

    from lora_core.app import generate
    from lora_core.app.infotext import parse_infotext, read_png_infotext

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    out = tmp_path / "flux.png"
    args = parser.parse_args(["a photo of a cat", "--checkpoint", str(models / "Stable-diffusion" / "tiny-flux"),
                              "--models-dir", str(models), "--data-dir", str(tmp_path / "data"), "--out", str(out),
                              "--steps", "1", "--seed", "5", "--width", "64", "--height", "64"])
    assert generate.run(args) == 0
    parsed = parse_infotext(read_png_infotext(out))
    assert parsed.settings["Model"] == "tiny-flux" and parsed.settings["Sampler"] == "Euler"
    assert parsed.settings["CFG scale"] == "3.5"


# ------------------------------------------------------------------------------------------- SD3

def test_sd3_peft_lora_saved_by_diffusers_matches_fuse_lora(models, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict

    folder = models / "Stable-diffusion" / "tiny-sd3"
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(4)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj"]))
    lora_dir = tmp_path / "peft"
    StableDiffusion3Pipeline.save_lora_weights(
        lora_dir, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict())
    shutil.copy(lora_dir / "pytorch_lora_weights.safetensors", models / "Lora" / "peft_sd3.safetensors")
    session = _session(models, tmp_path, "tiny-sd3")
    try:
        assert session.family == "sd3" and "SD3" in session.pipeline.label
        base, merged, info = _apply_and_compare(session, f"<lora:peft_sd3:{WEIGHT}>")
        assert "CFG scale: 7" in info
        # SD3 keeps real CFG: the negative prompt changes the image
        a, _, _ = session.txt2img("a photo of a cat", **GEN)
        b, _, msgs = session.txt2img("a photo of a cat", "blue", **GEN)
        assert _pixels(a[0]) != _pixels(b[0]) and not msgs
    finally:
        session.close()
    _assert_merged_equal(merged, _fused_oracle(folder, StableDiffusion3Pipeline, pipe=pipe), base)


def test_flux_lora_on_sd3_folder_is_refused(models, tmp_path):
    _kohya_flux_lora(models / "Lora" / "kohya_flux_b.safetensors")
    session = _session(models, tmp_path, "tiny-sd3")
    try:
        base = _state(session.pipeline.pipe.transformer)
        images, _, msgs = session.txt2img("a cat <lora:kohya_flux_b:1>", **GEN)
        assert any("flux" in m.lower() for m in msgs), msgs
        assert all(torch.equal(v, base[k]) for k, v in _state(session.pipeline.pipe.transformer).items())
    finally:
        session.close()


# ------------------------------------------------------------------------------------ bad folders

def _copy_folder(models, tmp_path, name="tiny-flux") -> Path:
    target = tmp_path / "models" / "Stable-diffusion" / name
    shutil.copytree(models / "Stable-diffusion" / name, target)
    return target


@pytest.mark.parametrize("damage, expected", [
    ("no_tokenizer", "missing the tokenizer_2/ subfolder (folders must carry their tokenizers"),
    ("bad_index", "cannot read model_index.json"),
    ("sdxl_pipeline", "'StableDiffusionXLPipeline' is not supported as a folder"),
    ("truncated_weights", "cannot load the flux pipeline"),
])
def test_unusable_folder_is_refused_naming_it(models, tmp_path, damage, expected):
    folder = _copy_folder(models, tmp_path)
    if damage == "no_tokenizer":
        shutil.rmtree(folder / "tokenizer_2")
    elif damage == "bad_index":
        (folder / "model_index.json").write_text("{not json")
    elif damage == "sdxl_pipeline":
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    else:
        weights = next((folder / "transformer").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointLoadError) as err:
        Session(tmp_path / "models", tmp_path / "data", checkpoint="tiny-flux", strict=True, scan=False)
    assert "tiny-flux" in str(err.value) and expected in str(err.value), str(err.value)
    # without strict the app stays usable (the demo model) and says why
    session = Session(tmp_path / "models", tmp_path / "data", checkpoint="tiny-flux", scan=False)
    try:
        assert session.pipeline.is_demo and any(expected in m for m in session.messages), session.messages
    finally:
        session.close()


def test_web_ui_follows_the_family(models, tmp_path):
    """The page offers the loaded model's samplers and CFG default, and a switch to another family
    updates them (the chosen sampler kept where it applies) and the banner."""
    from lora_core.app import serve

    session = _session(models, tmp_path, "tiny-flux")
    try:
        blocks = serve.build_blocks(session)
        widgets = {getattr(c, "elem_id", None): c for c in blocks.blocks.values()}
        assert [c[0] for c in widgets["txt2img_sampling"].choices] == ["Euler", "DPM++ 2M"]
        assert widgets["txt2img_sampling"].value == "Euler" and widgets["txt2img_cfg_scale"].value == 3.5
        assert "Flux model" in widgets["lora_core_banner"].value
        fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
        switch = next(b.fn for b in fns if getattr(b.fn, "__name__", "") == "on_ckpt_change")
        banner, _, _, _, _, _, sampler, cfg = switch("tiny-sd3", "DPM++ 2M", 3.5)
        assert session.family == "sd3" and "SD3 model" in banner
        assert sampler["choices"] == ["Euler", "DPM++ 2M"] and sampler["value"] == "DPM++ 2M"
        assert cfg["value"] == 7.0
        banner, _, _, _, _, _, sampler, cfg = switch(session.checkpoints()[0], "Euler", 7.0)  # the demo model
        assert "Demo model loaded" in banner and "Euler a" in sampler["choices"] and sampler["value"] == "Euler"
    finally:
        session.close()
