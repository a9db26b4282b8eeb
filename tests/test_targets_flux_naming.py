"""The pure name maps of the DiT families (no models): detection and row-split rules."""
from __future__ import annotations

import pytest

from lora_core.targets import naming, naming_dit
from lora_core.targets.layout_dit import dit_family
from lora_core.targets.naming_flux import FLUX
from lora_core.targets.naming_sd3 import SD3


def test_family_from_names_not_widths():
    assert dit_family(["double_blocks.0.img_attn.qkv.weight", "img_in.weight"]) == ("flux", "ldm")
    assert dit_family(["single_blocks.3.linear1.weight"]) == ("flux", "ldm")
    assert dit_family(["joint_blocks.0.x_block.attn.qkv.weight"]) == ("sd3", "ldm")
    assert dit_family(["x_embedder.weight", "transformer_blocks.0.attn.to_q.weight"]) == ("flux", "diffusers")
    assert dit_family(["pos_embed.proj.weight", "transformer_blocks.0.attn.to_q.weight"]) == ("sd3", "diffusers")
    assert dit_family(["down_blocks.0.resnets.0.conv1.weight"]) is None
    assert dit_family([]) is None


def test_full_size_flux_relations():
    pairs, fused, swapped = naming_dit.modules(FLUX, {"double_blocks": 19, "single_blocks": 38})
    d2l = {p.diffusers: p.ldm for p in pairs}
    assert d2l["transformer_blocks.18.attn.to_add_out"] == "double_blocks.18.txt_attn.proj"
    assert d2l["single_transformer_blocks.37.proj_out"] == "single_blocks.37.linear2"
    assert d2l["time_text_embed.guidance_embedder.linear_2"] == "guidance_in.out_layer"
    by = {f.ldm: f for f in fused}
    assert by["single_blocks.0.linear1"].parts[-1] == "single_transformer_blocks.0.proj_mlp"
    assert by["double_blocks.5.txt_attn.qkv"].parts == tuple(
        f"transformer_blocks.5.attn.add_{c}_proj" for c in "qkv")
    assert len(fused) == 19 * 2 + 38 and [s.ldm for s in swapped] == ["final_layer.adaLN_modulation.1"]
    # 3072-wide Flux: linear1 is q, k, v (3072 each) then the 12288-row MLP
    assert naming_dit.fused_sizes(naming_dit.QKV_MLP, 4, (21504, 3072)) == (3072, 3072, 3072, 12288)
    assert naming_dit.fused_sizes(naming_dit.EQUAL, 3, (9216, 3072)) == (3072,) * 3
    with pytest.raises(ValueError):
        naming_dit.fused_sizes(naming_dit.EQUAL, 3, (100, 10))
    with pytest.raises(ValueError):
        naming_dit.fused_sizes(naming_dit.QKV_MLP, 4, (30, 10))


def test_sd3_last_block_is_context_pre_only():
    pairs, _fused, swapped = naming_dit.modules(SD3, {"joint_blocks": 24})
    d = {p.diffusers for p in pairs}
    assert "transformer_blocks.22.attn.to_add_out" in d and "transformer_blocks.23.attn.to_add_out" not in d
    assert "transformer_blocks.22.norm1_context.linear" in d
    assert ("transformer_blocks.23.norm1_context.linear", "joint_blocks.23.context_block.adaLN_modulation.1") in {
        (s.diffusers, s.ldm) for s in swapped}


def test_lbw_ids_of_dit_vectors():
    assert naming.block_index("D00", 61) == 3 and naming.block_index("S37", 61) == 59
    assert naming.block_index("OUT", 61) == 60 and naming.block_index("J23", 28) == 26
    assert naming.block_multiplier("S00", [0.0] * 22 + [0.25] + [0.0] * 38) == 0.25
    assert naming_dit.block_of_ldm(FLUX, "single_blocks.7.linear1") == "S07"
    assert naming_dit.block_of_diffusers(SD3, "transformer_blocks.3.attn.to_q") == "J03"
