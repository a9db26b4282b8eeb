"""Recipes from pictures, resolving side: the picture's LoRAs matched to a real temp library by AutoV3,
AutoV2, SHA256, Civitai version id and name; missing ones checked against the loopback Civitai mock."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_core.library import Library
from lora_core.library.recipes import KNOWN, UNKNOWN, UNKNOWN_TO_CIVITAI, recipe_from_image
from lora_core.tags import parse_prompt
from tests.civitai_mock import CivitaiMock, closed_port_url, make_version, new_client
from tests.library.libtest_files import kohya_lora, kohya_metadata, write_lora
from tests.test_recipes import COMFY_PROMPT


def png(infotext: str = "", **chunks) -> bytes:
    info = PngInfo()
    if infotext:
        info.add_itxt("parameters", infotext)
    for key, value in chunks.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "local_style.safetensors", kohya_lora(rank=4), kohya_metadata(name="local_style"))
    write_lora(root / "chars" / "alice.safetensors", kohya_lora(rank=2), kohya_metadata(name="alice"))
    write_lora(root / "inkWash.safetensors", kohya_lora(rank=3), kohya_metadata(name="inkWash"))
    write_lora(root / "by_version.safetensors", kohya_lora(rank=5), kohya_metadata(name="by_version"))
    (root / "by_version.civitai.info").write_text(json.dumps({"id": 4242, "modelId": 42, "baseModel": "SD 1.5"}))
    library = Library([root], data_dir=tmp_path / "data")
    library.scan()
    library.request_hashes()
    assert library.wait_for_hashes(60)
    yield library
    library.close()


def test_a1111_picture_resolved_by_each_hash_kind(lib):
    style, alice = lib.find("local_style"), lib.find("alice")
    # the picture calls them by other names; its hashes are AutoV3 (A1111), AutoV2 and full SHA256
    text = ("a girl <lora:theirStyle:0.7>, <lora:theirAlice:1> <lora:inkWash:0.5>\nNegative prompt: bad\n"
            f'Steps: 20, Sampler: Euler, Lora hashes: "theirStyle: {style.autov3}, theirAlice: {alice.autov2}", '
            f'Hashes: {{"lora:inkWash": "{lib.find("inkWash").sha256}"}}')
    result = recipe_from_image(png(text), lib)
    assert result.error == "" and result.negative == "bad"
    assert result.prompt == "a girl <lora:local_style:0.7>, <lora:alice:1> <lora:inkWash:0.5>"
    assert [(r.name, r.found, r.match, r.path) for r in result.loras] == [
        ("theirStyle", True, "hash", style.path), ("theirAlice", True, "hash", alice.path),
        ("inkWash", True, "hash", lib.find("inkWash").path)]
    # what the page gets is exactly what our parser reads back
    assert [(q.name, q.te, q.unet) for q in parse_prompt(result.prompt).requests] == [
        ("local_style", 0.7, 0.7), ("alice", 1.0, 1.0), ("inkWash", 0.5, 0.5)]


def test_name_fallback_and_tag_names(lib):
    text = 'x <lora:alice:0.6>\nSteps: 20, Sampler: Euler, Lora hashes: "alice: 0000000000aa"'
    result = recipe_from_image(png(text), lib, tag_name=lambda e: "chars/" + e.name)
    (item,) = result.loras
    assert (item.found, item.match) == (True, "name")
    assert "hash differs" in item.note  # same name, another file: said, not hidden
    assert result.prompt == "x <lora:chars/alice:0.6>"


def test_civitai_version_id_and_comfyui(lib):
    text = ('a dog\nSteps: 30, Sampler: Euler a, Civitai resources: '
            '[{"type":"lora","weight":0.8,"modelVersionId":4242}, {"type":"lora","weight":0.5,"modelVersionId":77}]')
    result = recipe_from_image(png(text), lib)
    found, missing = result.loras
    assert (found.found, found.match, found.path) == (True, "version", lib.find("by_version").path)
    assert (missing.found, missing.civitai, missing.download) == (False, KNOWN, "https://civitai.com/model-versions/77")
    assert result.prompt == "a dog, <lora:by_version:0.8>"  # no name for the missing one: no tag
    comfy = recipe_from_image(png(prompt=json.dumps(COMFY_PROMPT)), lib)
    assert comfy.prompt == ("a lighthouse at dusk, <lora:inkWash:0.5:0.75>, <lora:detailer:0:1.2>, "
                            "<lora:glow:0.6>")
    assert [(r.name, r.found) for r in comfy.loras] == [("inkWash", True), ("detailer", False), ("glow", False)]
    assert {r.civitai for r in comfy.missing} == {UNKNOWN}  # no hash, no id: nothing to ask Civitai


def test_missing_loras_asked_of_civitai(lib, tmp_path):
    content = b"the remote lora file"
    version = make_version(501, 50, content, name="v2", model_name="Remote Style")
    autov2 = version["files"][0]["hashes"]["AutoV2"]
    text = (f'p <lora:remote:0.9> <lora:nobody:1>\nSteps: 20, Sampler: Euler, '
            f'Lora hashes: "remote: {autov2.lower()}, nobody: 0123456789ab"')
    with CivitaiMock() as mock:
        mock.add_version(version)
        client = new_client(mock.base_url, tmp_path)
        result = recipe_from_image(png(text), lib, civitai=client)
    remote, nobody = result.loras
    assert (remote.found, remote.civitai, remote.civitai_name, remote.download) == (
        False, KNOWN, "Remote Style / v2", "civitai:50@501")
    assert (nobody.civitai, nobody.download) == (UNKNOWN_TO_CIVITAI, "")
    assert result.prompt == "p <lora:remote:0.9> <lora:nobody:1>"  # kept: they work once downloaded
    # offline (a fresh data dir: no remembered 404s): "unknown", no error, no exception
    offline = recipe_from_image(png(text), lib, civitai=new_client(closed_port_url(), tmp_path / "offline",
                                                                    max_retries=0))
    assert [r.civitai for r in offline.loras] == [UNKNOWN, UNKNOWN] and offline.error == ""


def test_bad_pictures_are_messages(lib):
    assert "not a PNG, JPEG or WebP" in recipe_from_image(b"hello", lib).error
    assert "no generation data" in recipe_from_image(png(), lib).error
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (65 * 1024 * 1024)
    assert "larger than" in recipe_from_image(big, lib).error
    # tag-breaking names from a hostile graph cannot split the tag they land in
    graph = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "a>b<script>:x.safetensors",
                                                          "strength_model": 1, "strength_clip": 1}}}
    result = recipe_from_image(png(prompt=json.dumps(graph)), lib)
    assert [q.name for q in parse_prompt(result.prompt).requests] == ["a_b_script__x"]


def test_every_tag_of_a_renamed_lora_gets_the_local_name(lib):
    """A LoRA named by two tags (the second in another prompt section, its own weight and lbw) and a
    picture name that equals another LoRA's local name: each tag keeps its weights, every tag of a
    renamed LoRA gets the local name, and no tag is renamed twice."""
    style, alice = lib.find("local_style"), lib.find("alice")
    text = ("<lora:theirStyle:0.7> a girl BREAK <LoRA:theirStyle:0.3:lbw=MIDD>, <lora:local_style:1>\n"
            f'Steps: 20, Lora hashes: "theirStyle: {style.autov3}, local_style: {alice.autov2}"')
    result = recipe_from_image(png(text), lib)
    assert result.error == ""
    assert result.prompt == ("<lora:local_style:0.7> a girl BREAK <LoRA:local_style:0.3:lbw=MIDD>, "
                             "<lora:alice:1>")
    assert [(r.name, r.path) for r in result.loras] == [("theirStyle", style.path), ("local_style", alice.path)]
