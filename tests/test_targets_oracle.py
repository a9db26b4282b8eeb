"""The name maps against diffusers' own single-file converters (the oracle).

A tiny diffusers model's state dict is renamed to LDM / OpenCLIP names with lora_core's maps;
diffusers' converter must turn that back into exactly the original state dict.
"""
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint

from lora_core.targets import naming
from lora_core.targets.layout import layout_from_diffusers, layout_from_ldm
from targets.models import clip_to_openclip, tiny_clip, tiny_layout, tiny_unet, unet_to_ldm


def _assert_same_state(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_ldm_names_round_trip_through_diffusers_converter(family):
    unet = tiny_unet(family)
    state = unet.state_dict()
    layout = layout_from_diffusers({k: v.shape for k, v in state.items()})
    assert layout == tiny_layout(family)
    ldm = unet_to_ldm(state, layout)
    assert layout_from_ldm({k[len(naming.LDM_UNET_PREFIX):]: v.shape for k, v in ldm.items()}) == layout
    converted = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    _assert_same_state(converted, state)


@pytest.mark.parametrize("layers", [1, 3])
def test_openclip_names_round_trip_through_diffusers_converter(layers):
    te = tiny_clip(projection=True, layers=layers)
    state = te.state_dict()
    prefix = "conditioner.embedders.1.model."
    ckpt = clip_to_openclip(state, prefix)
    assert prefix + "transformer.resblocks.0.attn.in_proj_weight" in ckpt
    assert not any("q_proj" in k for k in ckpt)
    converted = convert_open_clip_checkpoint(te, ckpt, prefix=prefix)
    _assert_same_state(converted, state)


@pytest.mark.parametrize("family,kwargs", [
    ("sd1", {}),
    ("sdxl", dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)),
])
def test_full_size_layouts_cover_every_parameter(family, kwargs):
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**kwargs)
    shapes = {k: v.shape for k, v in unet.named_parameters()}
    assert layout_from_diffusers(shapes) == naming.unet_layout(family)
    modules = {k.rsplit(".", 1)[0] for k in shapes}
    assert modules == {m.diffusers for m in naming.unet_modules(naming.unet_layout(family))}


def test_refiner_like_layout_round_trips():
    # SDXL refiner shape: 4 levels, attention only in the middle two, text_time embedding
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=2, attention_head_dim=8, norm_num_groups=8, cross_attention_dim=40,
        block_out_channels=(16, 32, 48, 48),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=3, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=40 + 5 * 8, use_linear_projection=True)
    state = unet.state_dict()
    layout = layout_from_diffusers({k: v.shape for k, v in state.items()})
    assert layout.attention == (False, True, True, False) and layout.transformer_depth == (0, 3, 3, 0)
    converted = convert_ldm_unet_checkpoint(unet_to_ldm(state, layout), dict(unet.config))
    _assert_same_state(converted, state)


def test_text_encoder_prefixes_match_diffusers():
    import inspect

    from diffusers.loaders import single_file_utils as sfu
    hf = {prefix for prefix, _, ns in naming.LDM_TEXT_PREFIXES if ns == "hf"}
    assert hf == set(sfu.LDM_CLIP_PREFIX_TO_REMOVE)
    assert naming.LDM_UNET_PREFIX == sfu.LDM_UNET_KEY
    openclip = {prefix for prefix, _, ns in naming.LDM_TEXT_PREFIXES if ns == "openclip"}
    default = inspect.signature(sfu.convert_open_clip_checkpoint).parameters["prefix"].default
    assert default in openclip
    # every conditioner prefix diffusers' single-file loader knows (SDXL base and refiner)
    import re
    known = set(re.findall(r"conditioner\.embedders\.\d\.[a-z_]+\.", inspect.getsource(sfu)))
    assert known and known <= hf | openclip
