"""Base-model taxonomy (library/base_models.py): the label from metadata, names and Civitai's
baseModel; stored by the index, used by the family filter ("base:..."), kept apart from the family."""
from __future__ import annotations

import json

import pytest

from lora_core.library import Library, base_models
from tests.library.libtest_files import kohya_lora, kohya_metadata, write_lora


@pytest.mark.parametrize("summary, civitai, rel, expected", [
    ({"family": "sd1", "base_model_version": "sd_v1"}, None, "a", "sd1"),
    ({"family": "sd2", "base_model_version": "sd_v2"}, None, "a", "sd2"),
    ({"family": "sdxl", "base_model_version": "sdxl_base_v1-0"}, None, "a", "sdxl"),
    ({"family": "sdxl", "sd_model_name": "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"}, None, "a", "pony"),
    ({"family": "sdxl", "sd_model_name": "illustriousXL_v01.safetensors"}, None, "a", "illustrious"),
    ({"family": "sdxl", "sd_model_name": "noobaiXLNAIXL_epsilonPred11.safetensors"}, None, "a", "noobai"),
    ({"family": "sdxl", "sd_model_name": "sd_xl_turbo_1.0_fp16.safetensors"}, None, "a", "sdxl-turbo"),
    ({"family": "sdxl"}, None, "lightning/sdxl_lightning_4step", "sdxl-lightning"),
    ({"family": "flux", "modelspec": {"modelspec.architecture": "flux-1-dev/lora"}}, None, "a", "flux-dev"),
    ({"family": "flux", "sd_model_name": "flux1-schnell.safetensors"}, None, "a", "flux-schnell"),
    ({"family": "flux"}, None, "a", "flux"),
    ({"family": "sd3", "modelspec": {"modelspec.architecture": "stable-diffusion-3.5-large/lora"}}, None, "a", "sd3.5"),
    ({"family": "sd3", "modelspec": {"modelspec.architecture": "stable-diffusion-3-medium/lora"}}, None, "a", "sd3"),
    # training captions: Pony's score tags
    ({"family": "sdxl", "top_tags": [["score_9", 40], ["1girl", 30]]}, None, "a", "pony"),
    # folder names
    ({"family": "sdxl"}, None, "Pony/characters/alice", "pony"),
    ({"family": "sdxl"}, None, "IL/alice_illustriousXL", "illustrious"),
    # Civitai's label wins over a generic one and names a sub-family
    ({"family": "sdxl", "base_model_version": "sdxl_base_v1-0"}, {"baseModel": "Illustrious"}, "a", "illustrious"),
    ({"family": "sdxl"}, {"baseModel": "SDXL Lightning"}, "a", "sdxl-lightning"),
    ({"family": "unknown"}, {"baseModel": "Flux.1 D"}, "a", "flux-dev"),
    # a contradiction with the key-based family is dropped: keys cannot be faked by a rename
    ({"family": "sd1"}, None, "pony/alice", "sd1"),
    ({"family": "sd1"}, {"baseModel": "Pony"}, "a", "sd1"),
    # family unknown: the strongest source settles it, weaker ones of another family are ignored
    ({"family": "unknown"}, {"baseModel": "SD 1.5"}, "pony/x", "sd1"),
    ({"family": "unknown"}, None, "x", ""),
    ({}, {"baseModel": 12}, "", ""),
    (None, "junk", None, ""),
])
def test_classify(summary, civitai, rel, expected):
    assert base_models.classify(summary, civitai, rel or "") == expected


def test_names_do_not_overmatch():
    # words that merely contain letters of a label say nothing
    for text in ("fluxion", "still_life", "illness", "sd15x", "xylophone"):
        assert base_models.from_name(text) is None, text
    assert base_models.from_name("myFluxLoRA") == "flux"
    assert base_models.from_name("sd15_style") == "sd1"
    assert base_models.label_name("pony") == "Pony" and base_models.label_name("") == ""


def test_compatible():
    assert base_models.compatible("pony") == ("pony", "sdxl")
    assert base_models.compatible("noobai") == ("noobai", "illustrious", "sdxl")
    assert base_models.compatible("sd1") == ("sd1",)
    assert base_models.compatible("nonsense") == ()


def _sdxl(path, **meta):
    write_lora(path, kohya_lora(context_dim=2048, te2=True), kohya_metadata(base="sdxl_base_v1-0", **meta))


def test_index_stores_label_and_filters(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "plain15.safetensors", kohya_lora(), kohya_metadata())
    _sdxl(root / "pony" / "ponychar.safetensors")
    _sdxl(root / "xl" / "tagged.safetensors", ss_tag_frequency=json.dumps({"1_x": {"score_9": 5, "cat": 3}}))
    _sdxl(root / "xl" / "generic.safetensors")
    _sdxl(root / "xl" / "ill.safetensors", ss_sd_model_name="illustriousXL_v01.safetensors")
    with Library([root], data_dir=tmp_path / "data") as lib:
        lib.scan()
        labels = {e.name: e.base_model for e in lib.all()}
        assert labels == {"plain15": "sd1", "ponychar": "pony", "tagged": "pony", "generic": "sdxl",
                          "ill": "illustrious"}
        assert {e.family for e in lib.all() if e.name != "plain15"} == {"sdxl"}
        assert {e.name for e in lib.search(family="base:pony").items} == {"ponychar", "tagged"}
        assert {e.name for e in lib.search(family="base:pony,sdxl").items} == {"ponychar", "tagged", "generic"}
        assert {e.name for e in lib.search(family="sdxl").items} == {"ponychar", "tagged", "generic", "ill"}
        assert lib.search(family="base:sd3").total == 0
        # a .civitai.info written later relabels the file without re-reading the LoRA
        (root / "xl" / "generic.civitai.info").write_text(json.dumps({"id": 1, "modelId": 2, "baseModel": "NoobAI"}))
        report = lib.scan()
        assert report.sidecars == 1 and report.read == 0
        assert lib.find("generic").base_model == "noobai"
        assert {e.name for e in lib.search(family="base:noobai").items} == {"generic"}
