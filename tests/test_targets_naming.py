"""lora_core.targets.naming: pure name maps and lbw block ids (full-size layouts)."""
import subprocess
import sys
from collections import Counter

import pytest

from lora_core.targets import naming
from lora_core.targets.naming import SD1_UNET, SDXL_UNET, unet_modules


def test_naming_imports_without_torch():
    code = ("import sys; import lora_core.targets.naming, lora_core.targets.layout; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("layout", [SD1_UNET, SDXL_UNET], ids=["sd1", "sdxl"])
def test_unet_map_is_a_bijection(layout):
    mods = unet_modules(layout)
    assert len({m.diffusers for m in mods}) == len(mods)
    assert len({m.ldm for m in mods}) == len(mods)
    # flattened, the two namespaces never name two different modules with one string
    flat_owner = {}
    for i, m in enumerate(mods):
        for name in (m.diffusers, m.ldm):
            assert flat_owner.setdefault(naming.flat(name), i) == i


def _attention_blocks(layout):
    return Counter(m.block for m in unet_modules(layout) if m.diffusers.endswith("attn1.to_q"))


def test_sd1_attention_blocks_are_the_17_block_list():
    # A plain LoRA touches only attention: its blocks are exactly the 17-value list minus BASE.
    counts = _attention_blocks(SD1_UNET)
    assert tuple(sorted(counts, key=naming.LBW_BLOCK_IDS_26.index)) == naming.LBW_BLOCK_IDS[17][1:]
    assert set(counts.values()) == {1}  # depth 1 everywhere


def test_sdxl_attention_blocks_are_the_12_block_list():
    counts = _attention_blocks(SDXL_UNET)
    assert tuple(sorted(counts, key=naming.LBW_BLOCK_IDS_26.index)) == naming.LBW_BLOCK_IDS[12][1:]
    assert counts["IN04"] == counts["IN05"] == 2 and counts["IN07"] == counts["IN08"] == 10
    assert counts["M00"] == 10
    assert [counts[f"OUT{i:02d}"] for i in range(6)] == [10, 10, 10, 2, 2, 2]


def test_full_block_ranges():
    blocks = {m.block for m in unet_modules(SD1_UNET)}
    assert blocks == set(naming.LBW_BLOCK_IDS[26][1:]) | {None}
    blocks = {m.block for m in unet_modules(SDXL_UNET)}
    assert blocks == set(naming.LBW_BLOCK_IDS[20][1:]) | {None}


@pytest.mark.parametrize("diffusers,ldm,block", [
    ("conv_in", "input_blocks.0.0", "IN00"),
    ("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", "input_blocks.2.1.transformer_blocks.0.attn2.to_k", "IN02"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op", "IN03"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection", "IN04"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q", "IN04"),
    ("down_blocks.3.resnets.1.time_emb_proj", "input_blocks.11.0.emb_layers.1", "IN11"),
    ("mid_block.resnets.0.norm1", "middle_block.0.in_layers.0", "M00"),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "middle_block.1.transformer_blocks.0.ff.net.0.proj", "M00"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3", "M00"),
    ("up_blocks.0.resnets.2.conv1", "output_blocks.2.0.in_layers.2", "OUT02"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv", "OUT02"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv", "OUT05"),
    ("up_blocks.3.attentions.2.proj_out", "output_blocks.11.1.proj_out", "OUT11"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0", "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0", "OUT11"),
    ("time_embedding.linear_1", "time_embed.0", None),
    ("time_embedding.linear_2", "time_embed.2", None),
    ("conv_norm_out", "out.0", None),
    ("conv_out", "out.2", None),
])
def test_sd1_known_pairs(diffusers, ldm, block):
    assert naming.unet_diffusers_to_ldm(SD1_UNET)[diffusers] == ldm
    assert naming.unet_ldm_to_diffusers(SD1_UNET)[ldm] == diffusers
    assert {m.diffusers: m.block for m in unet_modules(SD1_UNET)}[diffusers] == block
    assert naming.lbw_block_of_ldm(ldm) == block


def test_sdxl_known_pairs():
    to_ldm = naming.unet_diffusers_to_ldm(SDXL_UNET)
    assert to_ldm["add_embedding.linear_1"] == "label_emb.0.0"
    assert to_ldm["add_embedding.linear_2"] == "label_emb.0.2"
    assert to_ldm["down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_v"] == \
        "input_blocks.8.1.transformer_blocks.9.attn2.to_v"
    assert to_ldm["up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2"] == \
        "output_blocks.2.1.transformer_blocks.9.ff.net.2"
    assert to_ldm["up_blocks.2.resnets.2.conv_shortcut"] == "output_blocks.8.0.skip_connection"
    assert "down_blocks.0.attentions.0.proj_in" not in to_ldm  # SDXL level 0 has no attention
    assert "add_embedding.linear_1" not in naming.unet_diffusers_to_ldm(SD1_UNET)


def test_sd1_sdxl_module_counts():
    sd1, sdxl = unet_modules(SD1_UNET), unet_modules(SDXL_UNET)
    # 16 transformers of depth 1 (SD1); SDXL: 2+2 + 10*2 down, 10 mid, 10*3 + 2*3 up = 70 blocks
    assert sum(m.diffusers.endswith("attn1.to_q") for m in sd1) == 16
    assert sum(m.diffusers.endswith("attn1.to_q") for m in sdxl) == 70
    # conv_shortcut: 2 down (where channels grow) + every up resnet (skip concat)
    assert sum(m.diffusers.endswith("conv_shortcut") for m in sd1) == 2 + 12
    assert sum(m.diffusers.endswith("conv_shortcut") for m in sdxl) == 2 + 9


def test_lbw_lists_match_the_tags_package():
    from lora_core.tags import block_weights
    assert naming.LBW_BLOCK_IDS_26 == block_weights.BLOCK_IDS_26
    assert {n: tuple(v) for n, v in naming.LBW_BLOCK_IDS.items()} == \
        {n: tuple(v) for n, v in block_weights.LAYOUTS.items()}


def test_block_index_and_multiplier():
    assert naming.block_index("BASE", 17) == 0
    assert naming.block_index("IN04", 17) == 3
    assert naming.block_index("IN03", 17) is None  # not listed: the extension gives it 0
    assert naming.block_index("OUT11", 26) == 25
    assert naming.block_index("IN08", 12) == 4
    assert naming.block_index(None, 26) is None
    with pytest.raises(ValueError):
        naming.block_index("IN01", 13)
    w17 = [0.1 * i for i in range(17)]
    assert naming.block_multiplier("M00", w17) == pytest.approx(0.7)
    assert naming.block_multiplier("IN00", w17) == 0.0
    assert naming.block_multiplier(None, w17) == 1.0
    w26 = list(range(26))
    assert naming.block_multiplier("OUT00", w26) == 14.0


def test_clip_pairs_and_fused_rows():
    mods = naming.clip_modules(2)
    by_hf = {m.hf: m for m in mods}
    q = by_hf["text_model.encoder.layers.1.self_attn.q_proj"]
    assert (q.openclip, q.fused) == ("transformer.resblocks.1.attn.in_proj", 0)
    assert by_hf["text_model.encoder.layers.0.mlp.fc2"].openclip == "transformer.resblocks.0.mlp.c_proj"
    assert by_hf["text_model.encoder.layers.0.layer_norm2"].openclip == "transformer.resblocks.0.ln_2"
    assert by_hf["text_model.final_layer_norm"].openclip == "ln_final"
    assert naming.fused_rows(0, 3072) == (0, 1024)
    assert naming.fused_rows(2, 3072) == (2048, 3072)
    with pytest.raises(ValueError):
        naming.fused_rows(1, 100)


@pytest.mark.parametrize("name,expected", [
    ("transformer.resblocks.3.attn.in_proj_weight", ("transformer.resblocks.3.attn.in_proj", "weight")),
    ("transformer.resblocks.3.attn.in_proj_bias", ("transformer.resblocks.3.attn.in_proj", "bias")),
    ("positional_embedding", ("positional_embedding", "weight")),
    ("ln_final.bias", ("ln_final", "bias")),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
     ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "weight")),
])
def test_split_tensor_name_round_trips(name, expected):
    assert naming.split_tensor_name(name) == expected
    assert naming.openclip_tensor_name(*expected) == name or not name.startswith(("transformer.", "pos", "ln"))


def test_unknown_family_layout():
    with pytest.raises(ValueError):
        naming.unet_layout("flux")
    assert naming.unet_layout("sd2") == SD1_UNET
