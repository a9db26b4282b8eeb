"""Sidecars: A1111 user metadata, Civitai Helper info, previews, thumbnails; atomic writes."""
import base64
import io
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.library import Library, StorageError, sidecars  # noqa: E402


def png_bytes(size=(64, 48), color=(200, 10, 10)):
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", metadata=kohya_metadata("alpha"))
    return root


def test_reads_a1111_json_and_civitai_info(root, tmp_path):
    (root / "a.json").write_text(json.dumps({
        "description": "d", "activation text": "ink style", "preferred weight": 0.7,
        "negative text": "blurry", "notes": "n", "sd version": "SD1"}))
    (root / "a.civitai.info").write_text(json.dumps({
        "id": 5, "modelId": 9, "name": "v1", "baseModel": "SD 1.5", "trainedWords": ["inkstyle", "ink style", 3],
        "model": {"name": "Ink", "type": "LORA", "nsfw": False, "secret": "x"},
        "images": [{"url": "https://x/1.png", "nsfw": "None", "meta": {"huge": "y" * 100}}]}))
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        e = lib.find("a")
        assert e.user_metadata["activation text"] == "ink style" and e.preferred_weight == 0.7
        assert e.civitai["trainedWords"] == ["inkstyle", "ink style"]
        assert e.civitai["model"] == {"name": "Ink", "type": "LORA", "nsfw": False}
        assert e.civitai["images"][0]["url"] == "https://x/1.png" and "meta" not in e.civitai["images"][0]
        assert e.trigger_words == ["ink style", "inkstyle"]
        assert lib.search("inkstyle").total == 1


def test_broken_sidecars_are_ignored_with_the_lora_still_indexed(root, tmp_path):
    (root / "a.json").write_text("{not json")
    (root / "a.civitai.info").write_text("[1, 2]")
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        e = lib.find("a")
        assert e.user_metadata == {} and e.civitai is None and e.error is None


def test_preview_lookup_order_matches_a1111(root):
    names = {"a.preview.png", "a.jpg", "a.png"}
    assert sidecars.find_preview(str(root / "a.safetensors"), names).endswith("/a.png")
    assert sidecars.find_preview(str(root / "a.safetensors"), {"a.preview.png", "a.jpg"}).endswith("/a.preview.png")
    assert sidecars.find_preview(str(root / "a.safetensors"), {"a.webp", "a.preview.gif"}).endswith("/a.webp")
    assert sidecars.find_preview(str(root / "a.safetensors"), {"b.png"}) is None


def test_write_user_metadata_is_atomic_merges_and_reindexes(root, tmp_path):
    (root / "a.json").write_text(json.dumps({"notes": "keep me", "custom": 1}))
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        entry = lib.write_user_metadata(lib.find("a").path, {"activation text": "blue ink"})
        assert entry.activation_text == "blue ink"
        on_disk = json.loads((root / "a.json").read_text())
        assert on_disk == {"notes": "keep me", "custom": 1, "activation text": "blue ink"}
        assert lib.search("blue ink").total == 1
        assert [p for p in os.listdir(root) if p.startswith(".tmp-")] == []


def test_failed_write_leaves_old_sidecar_and_no_temp_files(root, monkeypatch):
    target = root / "a.json"
    target.write_text('{"notes": "old"}')

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sidecars.os, "replace", no_space)
    with pytest.raises(StorageError, match="No space left"):
        sidecars.write_user_metadata(str(root / "a.safetensors"), {"notes": "new"})
    assert json.loads(target.read_text()) == {"notes": "old"}
    assert [p for p in os.listdir(root) if p.startswith(".tmp-")] == []


def test_civitai_info_write_roundtrip(root):
    sidecars.write_civitai_info(str(root / "a.safetensors"), {"id": 1, "trainedWords": ["w"]})
    assert sidecars.read_civitai_info(str(root / "a.safetensors")) == {"id": 1, "trainedWords": ["w"]}


def test_thumbnails_from_preview_and_embedded_cover(root, tmp_path):
    (root / "a.png").write_bytes(png_bytes((600, 300)))
    cover = base64.b64encode(png_bytes((100, 100), (0, 0, 255))).decode()
    write_lora(root / "b.safetensors", kohya_lora(), kohya_metadata("b", ssmd_cover_images=json.dumps([cover])))
    (root / "c.png").write_bytes(b"not an image")
    write_lora(root / "c.safetensors")
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        thumb = lib.thumbnail(lib.find("a"), size=128)
        assert thumb and thumb.startswith(str(tmp_path / "data"))
        with Image.open(thumb) as img:
            assert max(img.size) == 128 and img.size == (128, 64)
        assert lib.thumbnail(lib.find("a"), size=128) == thumb          # cached
        cover_thumb = lib.thumbnail(lib.find("b"), size=64)
        with Image.open(cover_thumb) as img:
            assert img.size == (64, 64) and img.convert("RGB").getpixel((32, 32))[2] > 200
        assert lib.thumbnail(lib.find("c")) is None                      # broken preview: no crash
