"""Single-file LDM checkpoints load offline through the shipped configs; family detection; errors."""
import json

import pytest
import torch

from lora_core.app import checkpoints
from lora_core.app.checkpoints import CONFIG_ROOT, CheckpointError, family_from_checkpoint_shapes
from lora_core.app.pipeline import GenerationParams, PipelineHandle
from tests.app_pipeline.tiny_ldm import write_checkpoint


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _n(module):
    return sum(p.numel() for p in module.parameters())


# Parameter counts of the released models (diffusers format), a fact the shipped configs must reproduce.
KNOWN = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("folder", sorted(KNOWN))
def test_shipped_configs_build_the_real_architectures(folder):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIG_ROOT / folder
    index = json.loads((root / "model_index.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_json_file(root / "text_encoder" / "config.json"))
        counts = {"unet": _n(unet), "vae": _n(vae), "text_encoder": _n(te)}
        if "text_encoder_2" in index:
            te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(root / "text_encoder_2" / "config.json"))
            counts["text_encoder_2"] = _n(te2)
    assert counts == KNOWN[folder]
    # a few LDM-visible shapes: cross-attention width and the first conv
    attn2 = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
    assert attn2.to_k.weight.shape[1] == {"sd15": 768, "sd21": 1024, "sdxl": 2048}[folder]
    assert tuple(unet.conv_in.weight.shape) == (320, 4, 3, 3)
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == ("v_prediction" if folder == "sd21" else "epsilon")


def test_clip_tokenizer_uses_the_real_vocabulary(tmp_path):
    from lora_core.app.clip_tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer(tmp_path)
    assert len(tok) == 49408
    # ids of the public CLIP vocabulary: <|startoftext|> a photo of a cat <|endoftext|>
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tmp_path / "clip_tokenizer").is_dir()
    padded = load_clip_tokenizer(tmp_path, pad_token="!")("hi", padding="max_length", max_length=5).input_ids
    assert padded[-1] == 0  # OpenCLIP pads with "!" (id 0)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_ldm_checkpoint_loads_offline_bit_exact(tmp_path, family):
    path, config_root, models = write_checkpoint(tmp_path, family)
    handle = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root)
    assert handle.family == family and not handle.is_demo
    assert handle.model_hash == checkpoints.file_sha256(path)[:10]
    for name, original in models.items():
        loaded = getattr(handle.pipe, name).state_dict()
        for key, tensor in original.state_dict().items():
            if key.endswith("position_ids"):
                continue
            assert torch.equal(loaded[key], tensor), (name, key)
    images = handle.generate(GenerationParams(prompt="a cat", steps=2, seed=3, width=64, height=64))
    assert len(images) == 1 and images[0].size == (64, 64)
    assert handle.binding.family == family


def test_fp16_checkpoint_is_loaded_as_float32(tmp_path):
    path, config_root, _ = write_checkpoint(tmp_path, "sd1", dtype=torch.float16)
    handle = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root)
    assert handle.pipe.unet.conv_in.weight.dtype == torch.float32


def test_family_from_shapes_of_full_size_layouts():
    te = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}
    unet = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    base = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    assert family_from_checkpoint_shapes({**base, **te, unet: (320, 768)}) == "sd1"
    assert family_from_checkpoint_shapes({**base, unet: (320, 1024), "cond_stage_model.model.ln_final.weight": (1024,)}) == "sd2"
    xl = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    assert family_from_checkpoint_shapes({**base, xl: (640, 2048), "model.diffusion_model.label_emb.0.0.weight": (1280, 2816)}) == "sdxl"


@pytest.mark.parametrize("shapes, problem", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "not a Stable Diffusion"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "inpainting"),
    ({"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 1280)}, "refiner"),
])
def test_unsupported_checkpoints_get_a_clear_message(shapes, problem):
    with pytest.raises(CheckpointError, match=problem):
        family_from_checkpoint_shapes(shapes, "x.safetensors")


def test_corrupt_or_incomplete_checkpoint(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        PipelineHandle.load(bad, data_dir=tmp_path / "data")
    from safetensors.torch import load_file, save_file

    path, config_root, _ = write_checkpoint(tmp_path, "sd1")
    sd = load_file(str(path))
    del sd["model.diffusion_model.out.2.weight"]
    cut = tmp_path / "cut.safetensors"
    save_file(sd, str(cut))
    with pytest.raises(CheckpointError, match="missing|no weights"):
        PipelineHandle.load(cut, data_dir=tmp_path / "data", config_root=config_root)


def test_pickled_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError):
        checkpoints.read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("yaml_text, expected", [
    ('model:\n  params:\n    parameterization: "v"\n', "v_prediction"),
    ("model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),
])
def test_sd2_prediction_type_follows_the_yaml_next_to_it(tmp_path, yaml_text, expected):
    path, config_root, _ = write_checkpoint(tmp_path, "sd2")
    path.with_suffix(".yaml").write_text(yaml_text)
    handle = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root)
    assert handle.pipe.scheduler.config.prediction_type == expected
    assert any(".yaml" in n for n in handle.notes)


def test_sd2_without_yaml_is_probed_like_a1111(tmp_path):
    path, config_root, _ = write_checkpoint(tmp_path, "sd2")
    handle = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root)
    predicts_v = checkpoints._unet_predicts_v(handle.pipe.unet, torch.float32)
    assert handle.pipe.scheduler.config.prediction_type == ("v_prediction" if predicts_v else "epsilon")
    # a UNet whose output sits far below its input is a v-model by that test
    with torch.no_grad():
        handle.pipe.unet.conv_out.bias.fill_(-5.0)
    assert checkpoints._unet_predicts_v(handle.pipe.unet, torch.float32)


@pytest.mark.parametrize("folder", sorted(KNOWN))
def test_full_size_ldm_names_convert_onto_the_shipped_configs(folder):
    """Real-size LDM key sets (named by lora_core.targets.naming) map through diffusers' converter
    onto every parameter of the models built from the shipped configs, shapes included (meta tensors)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from lora_core.train.ldm_export import unet_to_ldm, vae_to_ldm

    root = CONFIG_ROOT / folder
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
    for model, ldm, convert in ((unet, unet_to_ldm(unet), convert_ldm_unet_checkpoint),
                                (vae, vae_to_ldm(vae), convert_ldm_vae_checkpoint)):
        converted = convert(ldm, model.config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert family_from_checkpoint_shapes({k: tuple(v.shape) for k, v in {**unet_to_ldm(unet)}.items()}) == \
        {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}[folder]
