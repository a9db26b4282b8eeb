"""Flux / SD3 family from keys and real widths (issue 16): the loader, the header-only detector and
the library's summary (with its per-layout caches) agree, for every layout; variants come from
metadata only."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.formats import load_lora
from lora_core.formats.family import family_from_header, family_variant
from lora_core.formats.header import read_header
from lora_core.library.inspect_header import Summarizer, family_from_header_or_names


def lora(module, out_dim, in_dim, rank=1, style="kohya"):
    """Zero tensors (only shapes matter here), rank 1 so real widths stay small."""
    if style == "peft":
        return {f"{module}.lora_A.weight": torch.zeros(rank, in_dim), f"{module}.lora_B.weight": torch.zeros(out_dim, rank)}
    if style == "xlabs":
        return {f"{module}.down.weight": torch.zeros(rank, in_dim), f"{module}.up.weight": torch.zeros(out_dim, rank)}
    if style == "lokr":   # LoKr: in = 4 × (in / 4)
        return {f"{module}.lokr_w1": torch.zeros(4, 4), f"{module}.lokr_w2_a": torch.zeros(out_dim // 4, rank),
                f"{module}.lokr_w2_b": torch.zeros(rank, in_dim // 4), f"{module}.alpha": torch.tensor(1.0)}
    return {f"{module}.lora_down.weight": torch.zeros(rank, in_dim),
            f"{module}.lora_up.weight": torch.zeros(out_dim, rank), f"{module}.alpha": torch.tensor(1.0)}


def attn_only(prefix, width, blocks=(0,), style="peft", sep="."):
    t = {}
    for i in blocks:
        for proj in ("to_q", "to_k", "to_v", f"to_out{sep}0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            t.update(lora(f"{prefix}transformer_blocks{sep}{i}{sep}attn{sep}{proj}", width, width, style=style))
    return t


def sd3_default(prefix, width, blocks=(0, 1)):
    """diffusers' SD3 DreamBooth-LoRA default: to_q, to_k, to_v, to_out.0 only."""
    t = {}
    for i in blocks:
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            t.update(lora(f"{prefix}transformer_blocks.{i}.attn.{proj}", width, width, style="peft"))
    return t


CASES = {
    # the two bugs of the issue
    "diffusers-flux-double-attn-only": (attn_only("transformer.", 3072), {}, "flux"),
    "diffusers-sd3-medium-default": (sd3_default("transformer.", 1536), {}, "sd3"),
    "diffusers-sd35-large-default": (sd3_default("transformer.", 2432), {}, "sd3"),
    "diffusers-sd35-medium-attn2": ({**lora("transformer.transformer_blocks.0.attn2.to_q", 64, 64, style="peft")},
                                    {}, "sd3"),
    "diffusers-sd3-block-23": ({**lora("transformer.transformer_blocks.23.attn.to_q", 64, 64, style="peft")}, {}, "sd3"),
    "diffusers-tiny-unknown": (attn_only("transformer.", 64), {}, "transformer"),
    "diffusers-tiny-meta-flux": (attn_only("transformer.", 64), {"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    "diffusers-tiny-meta-sd3": (sd3_default("transformer.", 64), {"ss_base_model_version": "sd3"}, "sd3"),
    "peft-bare-flux": (attn_only("", 3072), {}, "flux"),
    "peft-wrapper-sd3": (sd3_default("base_model.model.", 1536), {}, "sd3"),
    "onetrainer-flux": (attn_only("lora_transformer_", 3072, style="kohya", sep="_"), {}, "flux"),
    "onetrainer-sd3": (attn_only("lora_transformer_", 1536, style="kohya", sep="_"), {}, "sd3"),
    "lycoris-lokr-flux": (attn_only("lycoris_", 3072, style="lokr", sep="_"), {}, "flux"),
    "lycoris-lokr-sd3": (attn_only("lycoris_", 2432, style="lokr", sep="_"), {}, "sd3"),
    "kohya-flux": ({**lora("lora_unet_double_blocks_0_img_attn_qkv", 9216, 3072),
                    **lora("lora_te1_text_model_encoder_layers_0_mlp_fc1", 3072, 768),
                    **lora("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 4096, 4096)}, {}, "flux"),
    "kohya-flux-old": ({**lora("lora_flux_single_blocks_0_linear2", 3072, 15360),
                        **lora("lora_te2_encoder_block_0_layer_0_SelfAttention_q", 4096, 4096)}, {}, "flux"),
    "kohya-sd3": ({**lora("lora_unet_joint_blocks_0_x_block_attn_qkv", 4608, 1536),
                   **lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)}, {}, "sd3"),
    "diffusion_model-diffusers-names": (attn_only("diffusion_model.", 3072), {}, "flux"),
    "diffusion_model-diffusers-tiny": (attn_only("diffusion_model.", 64, blocks=(0, 3)), {}, "transformer"),
    "kohya-diffusers-names-sd3": (attn_only("lora_unet_", 1536, style="kohya", sep="_"), {}, "sd3"),
    "comfyui-sd3": ({**lora("diffusion_model.joint_blocks.0.x_block.attn.qkv", 4608, 1536, style="peft")}, {}, "sd3"),
    "comfyui-bfl": ({**lora("diffusion_model.double_blocks.0.img_attn.qkv", 9216, 3072, style="peft")}, {}, "flux"),
    "xlabs": ({**lora("double_blocks.0.processor.qkv_lora1", 9216, 3072, style="xlabs")}, {}, "flux"),
    "diffusers-sd3-te-only": ({**lora("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj", 1280, 1280,
                                      style="peft"),
                               **lora("text_encoder_3.encoder.block.0.layer.0.SelfAttention.q", 4096, 4096,
                                      style="peft")}, {}, "sd3"),
    "diffusers-flux-t5-not-sdxl": ({**lora("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q", 4096, 4096,
                                           style="peft")}, {"ss_base_model_version": "flux1"}, "flux"),
    # SD families stay as they were
    "sdxl-kohya": ({**lora("lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_k", 640, 2048),
                    **lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)}, {}, "sdxl"),
    "sd1-peft": ({**lora("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v", 640, 768, style="peft")},
                 {}, "sd1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_header_and_library_agree(tmp_path, case):
    tensors, metadata, expected = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    header, meta, _offset = read_header(str(path))
    assert load_lora(path).family == expected
    assert family_from_header(header, meta) == expected
    assert family_from_header_or_names(header, meta) == expected
    summary = Summarizer().summarize(header, meta)
    assert summary["family"] == expected
    # the library reads every layout's suffixes as load_lora does (XLabs `.down.weight` included)
    assert summary["algorithm"] == ("lokr" if "lokr" in case else "lora")
    assert summary["layout"] == load_lora(path).layout


@pytest.mark.parametrize("case", sorted(CASES))
def test_info_names_family_layout_and_module_counts(tmp_path, case):
    from lora_core.commands.info import describe

    tensors, metadata, expected = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    lora_file = load_lora(path)
    info = describe(str(path), with_hashes=False)
    assert info["family"] == expected and info["layout"] == lora_file.layout
    producer = case.split("-")[0]
    if producer in ("kohya", "comfyui", "xlabs", "onetrainer", "lycoris", "diffusers"):
        assert info["layout"] == producer
    assert sum(info["modules"].values()) == len(lora_file.adapters) > 0 and info["unclaimed"] == 0


def test_library_cache_tells_flux_from_sd3_by_width():
    """The summarizer shares answers between files of the same key names: the width must be part
    of what it shares on (same names, Flux width vs SD3 width)."""
    summarizer = Summarizer()
    for width, expected in ((3072, "flux"), (1536, "sd3"), (3072, "flux"), (2432, "sd3")):
        header = {k: {"shape": list(v.shape)} for k, v in sd3_default("transformer.", width).items()}
        assert summarizer.summarize(header, {})["family"] == expected


@pytest.mark.parametrize("metadata,family,variant", [
    ({"modelspec.architecture": "flux-1-dev/lora"}, "flux", "flux-dev"),
    ({"modelspec.architecture": "flux-1-schnell/lora"}, "flux", "flux-schnell"),
    ({"ss_base_model_version": "flux1", "ss_sd_model_name": "flux1-dev-fp8.safetensors"}, "flux", "flux-dev"),
    ({"modelspec.architecture": "stable-diffusion-v3-medium/lora"}, "sd3", "sd3-medium"),
    ({"modelspec.architecture": "stable-diffusion-v3.5-large/lora"}, "sd3", "sd3.5-large"),
    ({"ss_sd_model_name": "sd3.5_large_turbo.safetensors"}, "sd3", "sd3.5-large-turbo"),
    ({"modelspec.architecture": "stable-diffusion-v3.5-medium/lora"}, "sd3", "sd3.5-medium"),
    ({"modelspec.architecture": "flux-1-dev/lora"}, "sd3", None),   # metadata contradicting the keys: no variant
    ({}, "flux", None),
])
def test_variant_from_metadata_only(metadata, family, variant):
    assert family_variant(metadata, family) == variant


def test_summary_and_info_show_family_variant_and_layout(tmp_path):
    from lora_core.commands.info import describe, format_text

    path = tmp_path / "f.safetensors"
    save_file(attn_only("transformer.", 3072), str(path), metadata={"modelspec.architecture": "flux-1-schnell/lora"})
    info = describe(str(path), with_hashes=False)
    assert (info["family"], info["variant"], info["layout"]) == ("flux", "flux-schnell", "diffusers")
    assert info["modules"] == {"unet": 8}
    text = format_text(info)
    assert "family:     flux (flux-schnell)" in text and "layout:     diffusers" in text
    header, meta, _ = read_header(str(path))
    summary = Summarizer().summarize(header, meta)
    assert (summary["family"], summary["family_variant"], summary["layout"]) == ("flux", "flux-schnell", "diffusers")


def test_library_family_column_and_filter_hold_flux_and_sd3(tmp_path):
    """The index stores what the header says (diffusers names alike: the width decides) and the
    family filter finds each; the variant rides in the summary."""
    from lora_core.library import Library

    root = tmp_path / "Lora"
    root.mkdir()
    save_file(attn_only("transformer.", 3072), str(root / "fluxy.safetensors"),
              metadata={"modelspec.architecture": "flux-1-dev/lora"})
    save_file(sd3_default("transformer.", 2432), str(root / "sd3y.safetensors"))
    save_file(lora("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768),
              str(root / "sd1y.safetensors"))
    with Library([root], tmp_path / "data") as library:
        library.scan()
        for family, name in (("flux", "fluxy"), ("sd3", "sd3y"), ("sd1", "sd1y")):
            page = library.search("", family=family)
            assert [e.name for e in page.items] == [name]
        entry = library.search("", family="flux").items[0]
        assert entry.family == "flux" and entry.summary["family_variant"] == "flux-dev"
        assert entry.summary["layout"] == "diffusers"
