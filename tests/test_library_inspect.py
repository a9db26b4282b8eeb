"""Header-only facts: kohya metadata summary, cover images, family from names/shapes (no torch)."""
import base64
import json

from lora_core.library.inspect_header import (
    detect_algorithm, family_from_header_or_names, embedded_cover, split_key, summarize, top_training_tags,
)


def shaped(keys_shapes):
    return {k: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]} for k, s in keys_shapes.items()}


def lora_pair(module, in_dim, rank=4, out=8):
    return {f"{module}.lora_down.weight": (rank, in_dim), f"{module}.lora_up.weight": (out, rank), f"{module}.alpha": ()}


K = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def test_family_from_cross_attention_and_text_encoder_dims():
    assert family_from_header_or_names(shaped(lora_pair(K, 768))) == "sd1"
    assert family_from_header_or_names(shaped(lora_pair(K, 1024))) == "sd2"
    assert family_from_header_or_names(shaped(lora_pair(K, 2048))) == "sdxl"
    assert family_from_header_or_names(shaped(lora_pair(TE, 768))) == "sd1"
    assert family_from_header_or_names(shaped(lora_pair(TE, 1024))) == "sd2"
    te2 = lora_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280)
    assert family_from_header_or_names(shaped({**te2, **lora_pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768)})) == "sdxl"


def test_family_from_names_when_no_usable_shapes():
    assert family_from_header_or_names(shaped({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072)})) == "flux"
    assert family_from_header_or_names(shaped({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)})) == "flux"
    assert family_from_header_or_names(shaped({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 1536)})) == "sd3"
    xl_depth = {"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.hada_w1_a": (640, 4)}
    assert family_from_header_or_names(shaped(xl_depth)) == "sdxl"
    assert family_from_header_or_names(shaped({"x.lokr_w1": (4, 4)})) == "unknown"


def test_family_falls_back_to_metadata():
    header = shaped({"some_module.lokr_w1": (4, 4)})
    assert family_from_header_or_names(header, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"
    assert family_from_header_or_names(header, {"modelspec.architecture": "stable-diffusion-v1/lora"}) == "sd1"
    assert family_from_header_or_names(header, {"ss_v2": "True"}) == "sd2"
    # tensors win over metadata that contradicts them
    assert family_from_header_or_names(shaped(lora_pair(K, 2048)), {"ss_base_model_version": "sd_v1"}) == "sdxl"


def test_algorithm_from_peft_and_diffusers_keys():
    peft = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 32),
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (32, 4)}
    assert detect_algorithm(shaped(peft))[0] == "lora"
    old = {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": (8, 4)}
    assert detect_algorithm(shaped(old))[0] == "lora"
    magnitude = {**peft, "unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector": (32,)}
    assert detect_algorithm(shaped(magnitude))[0] == "dora"
    assert split_key("a.b.hada_w1_a") == ("a.b", "hada_w1_a")
    assert split_key("a.b.lora_A.default.weight") == ("a.b", "lora_down.weight")
    assert split_key("a.b.alpha") == ("a.b", "alpha") and split_key("a.b.c") == ("a.b", None)


def test_kohya_plain_lora_with_1x1_proj_is_not_locon_but_resnets_are():
    proj = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1)}
    assert detect_algorithm(shaped(proj))[0] == "lora"
    res = {**proj, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (4, 320, 3, 3)}
    algo, counts = detect_algorithm(shaped(res))
    assert algo == "locon" and counts == {"locon": 2}


def test_summary_reads_kohya_metadata():
    meta = {
        "ss_output_name": "inkStyle", "ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora",
        "ss_network_dim": "16", "ss_network_alpha": "8", "ss_resolution": "(768, 512)",
        "ss_tag_frequency": json.dumps({"5_a": {"ink": 3, " 1girl": 7}, "3_b": {"ink": 5, "bad": "x"}}),
        "ss_dataset_dirs": json.dumps({"5_a": {"n_repeats": 5, "img_count": 12}, "3_b": {"img_count": 3}}),
        "ss_training_started_at": "1700000000.25", "modelspec.title": "Ink", "modelspec.trigger_phrase": "inkstyle",
    }
    s = summarize(shaped(lora_pair(K, 768)), meta)
    assert s["alias"] == "inkStyle" and s["family"] == "sd1" and s["algorithm"] == "lora"
    assert s["network_dim"] == 16 and s["network_alpha"] == 8.0 and s["resolution"] == "768x512"
    assert s["top_tags"] == [("ink", 8), ("1girl", 7)]
    assert s["dataset_size"] == 15 and s["training_started_at"] == 1700000000.25
    assert s["modelspec"]["modelspec.title"] == "Ink" and s["trigger_phrase"] == "inkstyle"
    json.dumps(s)  # storable


def test_summary_survives_garbage_metadata():
    meta = {"ss_tag_frequency": "{oops", "ss_network_dim": "many", "ss_resolution": "",
            "ss_training_started_at": "nan", "ssmd_cover_images": "[1, 2", "ss_network_args": "[]"}
    s = summarize({}, meta)
    assert s["top_tags"] == [] and s["network_dim"] is None and s["training_started_at"] is None
    assert s["cover_images"] == 0 and s["algorithm"] == "unknown" and s["family"] == "unknown"
    assert top_training_tags({"ss_tag_frequency": json.dumps([1, 2])}) == []


def test_embedded_cover_images():
    png = b"\x89PNG\r\n\x1a\nfake"
    meta = {"ssmd_cover_images": json.dumps([base64.b64encode(png).decode()])}
    assert embedded_cover(meta) == png and summarize({}, meta)["cover_images"] == 1
    meta = {"modelspec.thumbnail": "data:image/png;base64," + base64.b64encode(png).decode()}
    assert embedded_cover(meta) == png and summarize({}, meta)["cover_images"] == 1
    assert "modelspec.thumbnail" not in summarize({}, meta)["modelspec"]  # big blobs stay out of the index
