"""Key conventions (kohya, diffusers old and new, PEFT, old attention processors, SDXL LDM names),
alpha/scale resolution, family detection, unclaimed modules."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent / "formats"))
from formats_makers import make_sd1_lora_files, rename_keys  # noqa: E402

from lora_core.formats import load_lora  # noqa: E402
from lora_core.formats.keys import parse_key  # noqa: E402


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return make_sd1_lora_files(tmp_path_factory.mktemp("keys"), rank=4, alpha=8.0)


def rel_err(a, b):
    return float((a - b).norm() / (b.norm() + 1e-30))


def assert_same_deltas(lora, made, expect_all=True):
    keys = made.reference_deltas.keys()
    if expect_all:
        assert keys == lora.adapters.keys(), sorted(set(keys) ^ set(lora.adapters))[:6]
    for key in lora.adapters:
        assert rel_err(lora.adapters[key].delta(made.base[key]), made.reference_deltas[key]) < 1e-5, key


def test_kohya_sd1_te_prefix(sd1, tmp_path):
    """Real kohya SD1 files name the text encoder `lora_te_`, not `lora_te1_`."""
    path = rename_keys(sd1.kohya, str(tmp_path / "k.safetensors"), lambda k: k.replace("lora_te1_", "lora_te_"))
    lora = load_lora(path)
    assert any(k.startswith("te1:text_model_encoder_layers_0_") for k in lora.adapters)
    assert_same_deltas(lora, sd1)


def _old_diffusers_name(k: str) -> str:
    """PEFT-era diffusers key -> the pre-PEFT diffusers spelling (lora.up / lora.down, alpha kept)."""
    return k.replace(".lora_B.weight", ".lora.up.weight").replace(".lora_A.weight", ".lora.down.weight")


def test_old_diffusers_keys(sd1, tmp_path):
    path = rename_keys(sd1.diffusers, str(tmp_path / "old.safetensors"), _old_diffusers_name)
    assert_same_deltas(load_lora(path), sd1)


def test_old_attention_processor_keys(sd1, tmp_path):
    def rename(k):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            tag = f".{proj}.lora_"
            if k.startswith("unet.") and tag in k:
                head, tail = k.split(tag)
                ud = "up" if tail.startswith("B") else "down"
                return f"{head}.processor.{proj.split('.')[0]}_lora.{ud}.weight"
        if k.startswith("text_encoder."):  # old text-encoder layers: lora_linear_layer
            return k.replace(".lora_B.weight", ".lora_linear_layer.up.weight").replace(
                ".lora_A.weight", ".lora_linear_layer.down.weight")
        return k
    path = rename_keys(sd1.diffusers, str(tmp_path / "proc.safetensors"), rename)
    with safe_open(path, "pt") as f:
        assert any(".processor.to_out_lora.up.weight" in k for k in f.keys())
    lora = load_lora(path)
    assert "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0" in lora.adapters
    assert_same_deltas(lora, sd1)


def test_old_text_encoder_processor_names():
    key = parse_key("text_encoder.text_model.encoder.layers.3.self_attn.to_out_lora.down.weight")
    assert key.module == "te1:text_model_encoder_layers_3_self_attn_out_proj"
    assert key.suffix == "lora_down.weight"


def test_peft_raw_adapter_with_config(sd1, tmp_path):
    """A PEFT `adapter_model.safetensors` of a bare UNet, alpha in adapter_config.json."""
    folder = tmp_path / "peft"
    folder.mkdir()
    def rename(k):
        if not k.startswith("unet."):
            return None
        k = "base_model.model." + k[len("unet."):]
        return k.replace(".lora_A.weight", ".lora_A.default.weight") if "attn2" in k else k
    path = rename_keys(sd1.diffusers, str(folder / "adapter_model.safetensors"), rename, metadata={})
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    lora = load_lora(path)
    assert all(k.startswith("unet:") for k in lora.adapters) and len(lora.adapters) > 10
    assert_same_deltas(lora, sd1, expect_all=False)


def test_diffusers_key_flattening():
    k = parse_key("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight")
    assert k.module == "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = parse_key("text_encoder_2.text_model.encoder.layers.1.mlp.fc2.lora_B.weight")
    assert k.module == "te2:text_model_encoder_layers_1_mlp_fc2" and k.suffix == "lora_up.weight"
    k = parse_key("lycoris_down_blocks_1_resnets_0_conv1.lokr_w2_a")
    assert k.module == "unet:down_blocks_1_resnets_0_conv1" and k.suffix == "lokr_w2_a"


def _lora_tensors(module: str, out_dim: int, in_dim: int, rank=4, alpha=None, seed=0, conv=False):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(out_dim, rank, *((1, 1) if conv else ()), generator=g)
    down = torch.randn(rank, in_dim, *((3, 3) if conv else ()), generator=g)
    t = {f"{module}.lora_up.weight": up, f"{module}.lora_down.weight": down}
    if alpha is not None:
        t[f"{module}.alpha"] = torch.tensor(float(alpha))
    return t


def test_sdxl_ldm_named_kohya_keys(tmp_path):
    t = {}
    t.update(_lora_tensors("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 64, 64, alpha=2))
    t.update(_lora_tensors("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 64, 2048, alpha=2))
    t.update(_lora_tensors("lora_unet_output_blocks_2_0_conv1", 64, 32, conv=True))
    t.update(_lora_tensors("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768))
    t.update(_lora_tensors("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280))
    save_file(t, str(tmp_path / "xl.safetensors"))
    lora = load_lora(tmp_path / "xl.safetensors")
    assert lora.family == "sdxl"
    assert set(lora.adapters) == {
        "unet:input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "unet:input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        "unet:output_blocks_2_0_conv1",
        "te1:text_model_encoder_layers_0_self_attn_q_proj",
        "te2:text_model_encoder_layers_0_self_attn_q_proj",
    }
    a = lora.adapters["unet:input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    up, down = t[a_key := "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight"], \
        t[a_key.replace("lora_up", "lora_down")]
    assert torch.allclose(a.delta(torch.zeros(64, 64)), up @ down * 0.5)
    # no alpha key: alpha = rank, scale 1
    conv = lora.adapters["unet:output_blocks_2_0_conv1"]
    assert conv.kind == "locon"
    assert torch.allclose(conv.delta(torch.zeros(64, 32, 3, 3)),
                          (t["lora_unet_output_blocks_2_0_conv1.lora_up.weight"].reshape(64, 4)
                           @ t["lora_unet_output_blocks_2_0_conv1.lora_down.weight"].reshape(4, -1)).reshape(64, 32, 3, 3))


@pytest.mark.parametrize("keys,family", [
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768)}, "sd1"),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (320, 1024)}, "sd2"),
    ({"lora_te_text_model_encoder_layers_0_mlp_fc1": (3072, 768)}, "sd1"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_k_proj": (1024, 1024)}, "sd2"),
    ({"lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_k": (640, 2048)}, "sdxl"),
    ({"lora_unet_double_blocks_0_img_attn_qkv": (96, 32), "lora_te1_text_model_encoder_layers_0_mlp_fc1": (64, 768)}, "flux"),
    ({"lora_unet_single_blocks_3_linear1": (96, 32)}, "flux"),
    ({"transformer.single_transformer_blocks.0.attn.to_q": (32, 32)}, "flux"),
    # add_q_proj is in Flux and SD3 alike (issue 16): the model width decides, an unknown width says "transformer"
    ({"transformer.transformer_blocks.0.attn.add_q_proj": (32, 32)}, "transformer"),
    ({"transformer.transformer_blocks.0.attn.add_q_proj": (1536, 1536)}, "sd3"),
    ({"transformer.transformer_blocks.0.attn.add_q_proj": (3072, 3072)}, "flux"),
    ({"lora_unet_joint_blocks_0_x_block_attn_qkv": (96, 32)}, "sd3"),
])
def test_family_from_shapes_and_names(keys, family, tmp_path):
    t = {}
    for module, (out_dim, in_dim) in keys.items():
        if module.startswith("transformer."):
            t[f"{module}.lora_A.weight"] = torch.randn(4, in_dim)
            t[f"{module}.lora_B.weight"] = torch.randn(out_dim, 4)
        else:
            t.update(_lora_tensors(module, out_dim, in_dim))
    save_file(t, str(tmp_path / "f.safetensors"))
    assert load_lora(tmp_path / "f.safetensors").family == family


@pytest.mark.parametrize("meta,family", [
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"ss_v2": "True"}, "sd2"),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd1"),
    ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({}, "unknown"),
])
def test_family_from_metadata_when_shapes_are_silent(meta, family, tmp_path):
    # a resnet conv only: same shape in SD1, SD2 and SDXL
    t = _lora_tensors("lora_unet_down_blocks_1_resnets_0_conv1", 640, 320, conv=True)
    save_file(t, str(tmp_path / "m.safetensors"), metadata=meta)
    assert load_lora(tmp_path / "m.safetensors").family == family


def test_shapes_beat_metadata(tmp_path):
    t = _lora_tensors("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768)
    save_file(t, str(tmp_path / "m.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert load_lora(tmp_path / "m.safetensors").family == "sd1"


def test_unclaimed_modules_are_listed_not_fatal(tmp_path, caplog):
    t = _lora_tensors("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 32)
    t["lora_unet_mid_block_attentions_0_proj_out.lora_up.weight"] = torch.randn(32, 4)  # no down
    t["some_other_tool.thing"] = torch.randn(3)
    t["lora_unet_up_blocks_0_foo.weight"] = torch.randn(3)  # IA3 weight without on_input
    save_file(t, str(tmp_path / "u.safetensors"))
    with caplog.at_level("INFO", logger="lora_core.formats"):
        lora = load_lora(tmp_path / "u.safetensors")
    assert list(lora.adapters) == ["unet:down_blocks_0_attentions_0_proj_in"]
    assert lora.unclaimed == sorted(["lora_unet_mid_block_attentions_0_proj_out", "some_other_tool.thing",
                                     "lora_unet_up_blocks_0_foo"])
    assert "not understood" in caplog.text


def test_scale_key_overrides_alpha(tmp_path):
    t = _lora_tensors("lora_unet_x_proj_in", 16, 16, alpha=16)
    t["lora_unet_x_proj_in.scale"] = torch.tensor(0.25)
    save_file(t, str(tmp_path / "s.safetensors"))
    a = load_lora(tmp_path / "s.safetensors").adapters["unet:x_proj_in"]
    up, down = t["lora_unet_x_proj_in.lora_up.weight"], t["lora_unet_x_proj_in.lora_down.weight"]
    assert torch.allclose(a.delta(torch.zeros(16, 16)), 0.25 * up @ down)
    assert a.low_rank()[2] == 0.25


def test_pickle_checkpoint_loads(tmp_path):
    t = _lora_tensors("lora_unet_x_proj_in", 16, 16, alpha=2)
    torch.save({"state_dict": t}, tmp_path / "x.ckpt")
    torch.save({k: (2.0 if k.endswith("alpha") else v) for k, v in t.items()}, tmp_path / "y.pt")
    for name in ("x.ckpt", "y.pt"):
        a = load_lora(tmp_path / name).adapters["unet:x_proj_in"]
        assert a.low_rank()[2] == 0.5


def test_peft_metadata_rslora_and_bad_json(tmp_path):
    t = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.randn(4, 16),
         "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.randn(16, 4)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.use_rslora": True, "unet.r": 4})}
    save_file(t, str(tmp_path / "rs.safetensors"), metadata=meta)
    a = load_lora(tmp_path / "rs.safetensors").adapters["unet:down_blocks_0_attentions_0_proj_in"]
    assert a.low_rank()[2] == pytest.approx(8 / 2)  # alpha / sqrt(rank)
    save_file(t, str(tmp_path / "bad.safetensors"), metadata={"lora_adapter_metadata": "{oops"})
    a = load_lora(tmp_path / "bad.safetensors").adapters["unet:down_blocks_0_attentions_0_proj_in"]
    assert a.low_rank()[2] == 1.0


def test_key_and_family_modules_import_without_torch():
    import subprocess

    code = ("import sys; import lora_core.formats, lora_core.formats.keys, lora_core.formats.family; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parent.parent))
