"""Recipes from pictures, parsing side: real PNG/JPEG/WebP files written by Pillow with the metadata
A1111/Forge, Civitai and ComfyUI write, and hostile ones (bombs, truncation, garbage JSON)."""
from __future__ import annotations

import io
import json
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_core.library.recipe_image import RecipeImageError, decode_user_comment, image_texts
from lora_core.library.recipe_parse import (
    RecipeFormatError,
    lora_hashes,
    parse_settings,
    recipe_from_comfyui,
    recipe_from_texts,
)

A1111 = ('masterpiece, a cat in a hat, <lora:catStyle_v2:0.8>, (detailed:1.2) <lyco:hatLoha:0.6:0.4>\n'
         'Negative prompt: lowres, bad hands\n'
         'Steps: 28, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 0123456789, '
         'Model: dreamshaper_8, Lora hashes: "catStyle_v2: 1a2b3c4d5e6f, hatLoha: abcdefabcdef", Version: v1.10.1')


def png(texts: dict[str, str], itxt=(), ztxt=False) -> bytes:
    info = PngInfo()
    for key, value in texts.items():
        if key in itxt:
            info.add_itxt(key, value, zip=ztxt)
        else:
            info.add_text(key, value, zip=ztxt)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def exif_picture(fmt: str, comment: bytes, description: str | None = None) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    if description is not None:
        exif[0x010E] = description
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, fmt, exif=exif)
    return buf.getvalue()


# -- reading the text out of pictures ---------------------------------------------------------------
@pytest.mark.parametrize("itxt, ztxt", [((), False), (("parameters",), False), (("parameters",), True), ((), True)])
def test_png_text_chunks(itxt, ztxt):
    texts = image_texts(png({"parameters": A1111 + " ünïcode"}, itxt=itxt, ztxt=ztxt))
    if itxt:  # tEXt is Latin-1 by the PNG spec: only iTXt round-trips every character
        assert texts["parameters"] == A1111 + " ünïcode"
    else:
        assert texts["parameters"].startswith(A1111)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le", "ascii"])
def test_exif_user_comment(fmt, encoding):
    text = A1111.replace("ü", "u")
    raw = (b"UNICODE\0" + text.encode(encoding)) if encoding != "ascii" else b"ASCII\0\0\0" + text.encode()
    assert image_texts(exif_picture(fmt, raw))["parameters"] == text


def test_user_comment_forms():
    assert decode_user_comment(b"UNICODE\0" + "ab".encode("utf-16-le")) == "ab"
    assert decode_user_comment(b"UNICODE\0\xfe\xff" + "ab".encode("utf-16-be")) == "ab"
    assert decode_user_comment("plain") == "plain" and decode_user_comment(None) == "" and decode_user_comment(12) == ""


def test_comfyui_exif_strings():
    graph = {"3": {"class_type": "LoraLoader", "inputs": {"lora_name": "a.safetensors", "strength_model": 1,
                                                          "strength_clip": 1}}}
    texts = image_texts(exif_picture("WEBP", b"", description="Prompt:" + json.dumps(graph)))
    assert json.loads(texts["prompt"]) == graph


def test_hostile_pictures():
    with pytest.raises(RecipeImageError, match="not a PNG, JPEG or WebP"):
        image_texts(b"GIF89a....")
    with pytest.raises(RecipeImageError, match="empty"):
        image_texts(b"")
    good = png({"parameters": A1111})
    # a chunk whose length runs past the end, before any text
    with pytest.raises(RecipeImageError, match="damaged PNG"):
        image_texts(good[:8] + b"\x7f\xff\xff\xff" + b"tEXt" + b"x" * 20)
    # truncated after the text chunk: what was read is kept
    cut = good[: good.index(b"IDAT") + 10]
    assert image_texts(cut)["parameters"] == A1111
    # a zlib bomb in a zTXt chunk stops at the cap instead of inflating 200 MB
    bomb = zlib.compress(b"\0" * (200 * 1024 * 1024), 9)
    body = b"parameters\0\0" + bomb
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    bombed = good[:33] + chunk + good[33:]
    with pytest.raises(RecipeImageError, match="inflates past"):
        image_texts(bombed)
    # one text chunk larger than any real infotext: refused by name, not read into the page
    with pytest.raises(RecipeImageError, match=r"drop\.png: text 'parameters' too large"):
        image_texts(png({"parameters": "x" * (5 * 1024 * 1024)}), "drop.png")
    # a JPEG claiming 60000 x 60000 pixels: headers only are read, no pixel buffer is made
    huge = bytearray(exif_picture("JPEG", b"ASCII\0\0\0" + A1111.encode()))
    sof = huge.index(b"\xff\xc0")
    huge[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    try:
        texts = image_texts(bytes(huge))
    except RecipeImageError as exc:  # Pillow's bomb guard: a clear message is fine too
        assert "picture" in str(exc)
    else:
        assert texts["parameters"] == A1111
    # garbage after a JPEG start marker
    with pytest.raises(RecipeImageError):
        image_texts(b"\xff\xd8\xff" + b"\x00" * 50)


# -- infotext -------------------------------------------------------------------------------------------
def test_a1111_infotext():
    recipe = recipe_from_texts({"parameters": A1111})
    assert recipe.source == "a1111"
    assert recipe.prompt.startswith("masterpiece, a cat in a hat") and recipe.negative == "lowres, bad hands"
    assert recipe.settings["Steps"] == "28" and recipe.settings["Model"] == "dreamshaper_8"
    by_name = {r.name: r for r in recipe.loras}
    assert (by_name["catStyle_v2"].te, by_name["catStyle_v2"].unet, by_name["catStyle_v2"].hashes) == (0.8, 0.8, ["1a2b3c4d5e6f"])
    assert (by_name["hatLoha"].te, by_name["hatLoha"].unet, by_name["hatLoha"].hashes) == (0.6, 0.4, ["abcdefabcdef"])
    assert by_name["hatLoha"].tag == "<lyco:hatLoha:0.6:0.4>"


def test_settings_line_values():
    line = ('Steps: 20, Lora hashes: "a: 0123456789ab, b:c: ffffffffffff", Hashes: {"model": "0a", "lora:z": '
            '"AbCdEf012345"}, Civitai resources: [{"type":"lora","weight":0.7,"modelVersionId":77}], Size: 1x1')
    got = parse_settings(line)
    assert got["Steps"] == "20" and got["Size"] == "1x1"
    assert got["Civitai resources"] == [{"type": "lora", "weight": 0.7, "modelVersionId": 77}]
    assert lora_hashes(got["Lora hashes"]) == {"a": "0123456789ab", "b:c": "ffffffffffff"}
    assert lora_hashes("junk, x: nothex, : 0123456789") == {}
    # a broken JSON value does not swallow the rest
    assert parse_settings('A: [1, 2, B: 3')["A"] == "[1"


def test_civitai_resources_in_infotext():
    text = ('a dog <lora:dogLora:0.9>\nNegative prompt: cat\nSteps: 30, Sampler: Euler a, '
            'Civitai resources: [{"type":"checkpoint","modelVersionId":1},'
            '{"type":"lora","weight":0.9,"modelVersionId":555,"modelVersionName":"v1"},'
            '{"type":"lora","weight":0.45,"modelVersionId":556}], Civitai metadata: {}')
    recipe = recipe_from_texts({"parameters": text})
    assert recipe.source == "civitai"
    assert [(r.name, r.unet, r.version_id, bool(r.tag)) for r in recipe.loras] == [
        ("dogLora", 0.9, None, True), ("", 0.9, 555, False), ("", 0.45, 556, False)]


def test_civitai_image_meta():
    meta = {"prompt": "a fox <lora:foxy:0.7>", "negativePrompt": "blurry", "cfgScale": 5, "steps": 25,
            "resources": [{"name": "foxy", "type": "lora", "weight": 0.7, "hash": "aabbccddee"},
                          {"name": "extra", "type": "lora", "weight": 0.3, "hash": "1122334455"},
                          {"name": "model", "type": "model", "hash": "99"}],
            "hashes": {"model": "99", "lora:foxy": "aabbccddee"},
            "civitaiResources": [{"type": "lora", "weight": 1, "modelVersionId": 9001}]}
    raw = b"UNICODE\0" + json.dumps(meta).encode("utf-16-be")
    recipe = recipe_from_texts(image_texts(exif_picture("JPEG", raw)))
    assert recipe.prompt == "a fox <lora:foxy:0.7>" and recipe.negative == "blurry"
    assert [(r.name, r.unet, r.hashes, r.version_id) for r in recipe.loras] == [
        ("foxy", 0.7, ["aabbccddee"], None), ("extra", 0.3, ["1122334455"], None), ("", 1.0, [], 9001)]


def test_no_generation_data():
    with pytest.raises(RecipeFormatError, match="no generation data"):
        recipe_from_texts({})
    with pytest.raises(RecipeFormatError, match="not valid JSON"):
        recipe_from_texts({"prompt": "{" * 10})
    with pytest.raises(RecipeFormatError, match="not valid JSON"):
        recipe_from_texts({"prompt": "[" * 100_000 + "]" * 100_000})  # deeper than json's recursion
    # a plain caption without settings is still a prompt (no LoRAs)
    assert recipe_from_texts({"parameters": "just words"}).prompt == "just words"


# -- ComfyUI ------------------------------------------------------------------------------------------------
# The API graph ComfyUI embeds as `prompt`: node id -> {class_type, inputs}; links are [node id, output].
COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                  "lora_name": "styles\\inkWash.safetensors",
                                                  "strength_model": 0.75, "strength_clip": 0.5}},
    "11": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["10", 0], "lora_name": "detailer.safetensors",
                                                           "strength_model": 1.2}},
    "12": {"class_type": "Power Lora Loader (rgthree)", "inputs": {
        "PowerLoraLoaderHeaderWidget": {"type": "PowerLoraLoaderHeaderWidget"},
        "lora_1": {"on": True, "lora": "sub/glow.safetensors", "strength": 0.6, "strengthTwo": None},
        "lora_2": {"on": False, "lora": "off.safetensors", "strength": 1},
        "➕ Add Lora": "", "model": ["11", 0], "clip": ["10", 1]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "negative words", "clip": ["12", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["12", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["12", 0],
                                               "positive": ["7", 0], "negative": ["6", 0],
                                               "latent_image": ["5", 0]}},
}
# The editor graph (`workflow`): widgets_values in the node's widget order.
COMFY_WORKFLOW = {"last_node_id": 12, "last_link_id": 9, "version": 0.4, "links": [], "groups": [], "nodes": [
    {"id": 7, "type": "CLIPTextEncode", "mode": 0, "widgets_values": ["a lighthouse at dusk"]},
    {"id": 6, "type": "CLIPTextEncode", "mode": 0, "widgets_values": ["negative words"]},
    {"id": 10, "type": "LoraLoader", "mode": 0, "widgets_values": ["styles/inkWash.safetensors", 0.75, 0.5]},
    {"id": 11, "type": "LoraLoaderModelOnly", "mode": 4, "widgets_values": ["bypassed.safetensors", 1]},
    {"id": 12, "type": "Power Lora Loader (rgthree)", "mode": 0, "widgets_values": [
        {}, {"type": "PowerLoraLoaderHeaderWidget"},
        {"on": True, "lora": "glow.safetensors", "strength": 0.6, "strengthTwo": None}, {}, ""]},
]}


def test_comfyui_api_graph_in_png():
    texts = image_texts(png({"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)}))
    recipe = recipe_from_texts(texts)
    assert recipe.source == "comfyui"
    assert (recipe.prompt, recipe.negative) == ("a lighthouse at dusk", "negative words")
    assert [(r.name, r.te, r.unet) for r in recipe.loras] == [
        ("inkWash", 0.5, 0.75), ("detailer", 0.0, 1.2), ("glow", 0.6, 0.6)]


def test_comfyui_workflow_only():
    recipe = recipe_from_comfyui(None, json.dumps(COMFY_WORKFLOW))
    assert recipe.prompt == "a lighthouse at dusk"
    assert [(r.name, r.te, r.unet) for r in recipe.loras] == [("inkWash", 0.5, 0.75), ("glow", 0.6, 0.6)]


def test_comfyui_hostile_graph():
    graph = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": ["9", 0], "strength_model": "nan"}},
             "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "ok.safetensors", "strength_model": float("inf"),
                                                          "strength_clip": True}},
             "3": "not a node", "4": {"class_type": "KSampler", "inputs": {"positive": ["404", 0]}}}
    recipe = recipe_from_comfyui(json.dumps(graph), None)
    assert [(r.name, r.te, r.unet) for r in recipe.loras] == [("ok", 1.0, 1.0)]
    assert recipe.prompt == ""
