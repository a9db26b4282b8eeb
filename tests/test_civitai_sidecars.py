"""Sidecars next to a LoRA (name.civitai.info, name.preview.png) and the update check."""
import io
import json
import os

import pytest
from PIL import Image

try:
    from tests.civitai_mock import (CivitaiMock, Reply, file_hashes, make_image, make_model, make_version,
                                    new_client, png_bytes)
except ImportError:
    from civitai_mock import (CivitaiMock, Reply, file_hashes, make_image, make_model, make_version,
                              new_client, png_bytes)

from lora_core.library import civitai_files
from lora_core.library.atomic import atomic_write
from lora_core.library.civitai import ERROR, FOUND, NOT_FOUND, preview_level_from_info, version_from_info

CONTENT = b"sidecar lora"
SHA = file_hashes(CONTENT)["SHA256"]
EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        m.add_image("explicit.png", png_bytes(color=(255, 0, 0)))
        m.add_image("clip.mp4", b"not an image")
        m.add_image("safe.jpg", png_bytes(size=(40, 30), color=(0, 0, 255), fmt="JPEG"), "image/jpeg")
        m.add_image("safe2.webp", png_bytes(size=(5, 5), fmt="WEBP"), "image/webp")
        images = [
            make_image(m.base_url, "explicit.png", nsfw_level=8),
            make_image(m.base_url, "clip.mp4", nsfw_level=1, kind="video"),
            make_image(m.base_url, "safe.jpg", nsfw_level=2, width=40, height=30),
            make_image(m.base_url, "safe2.webp", nsfw_level=1),
        ]
        v1 = m.add_version(make_version(111, 11, CONTENT, name="v1", images=images, description=EVIL,
                                        trained_words=["pastel", EVIL]))
        v2 = make_version(333, 11, b"newer file", name="v2")
        m.add_model(make_model(11, [v2, v1]))
        yield m


@pytest.fixture
def lora(tmp_path):
    folder = tmp_path / "Lora" / "styles"
    folder.mkdir(parents=True)
    path = folder / "pastel.style.safetensors"  # dots in the stem must survive
    path.write_bytes(CONTENT)
    return path


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_fetch_writes_info_and_png_preview(mock, tmp_path, lora):
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="PG13")
    assert res.lookup.status == FOUND and res.message == ""
    assert _files(lora.parent) == ["pastel.style.civitai.info", "pastel.style.preview.png", "pastel.style.safetensors"]
    assert res.info_path == lora.parent / "pastel.style.civitai.info"
    assert res.preview_path == lora.parent / "pastel.style.preview.png"

    # the first image within PG13 that is an image: not the X one, not the video -> the JPEG
    assert res.preview_nsfw_level == 2
    assert mock.count("GET", "/images/") == 1 and mock.requests[-1].path == "/images/safe.jpg"
    raw = res.preview_path.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "PNG" and im.size == (40, 30)
        r, g, b = im.convert("RGB").getpixel((20, 15))
        assert b > 200 and r < 50  # the blue JPEG, re-encoded

    info = json.loads(res.info_path.read_text(encoding="utf-8"))
    assert civitai_files.read_info(lora) == info
    # Civitai's version JSON as it came (Civitai Helper reads these keys) ...
    assert info["id"] == 111 and info["modelId"] == 11 and info["baseModel"] == "SD 1.5"
    assert info["trainedWords"] == ["pastel", EVIL]  # untrusted text stored as data, verbatim
    assert info["description"] == EVIL
    assert info["files"][0]["hashes"]["SHA256"] == SHA
    assert info["images"][0]["nsfwLevel"] == 8
    # ... plus our record, including the NSFW level of the preview
    ours = info["extensions"]["lora_core"]
    assert ours["hash"] == SHA and ours["link"] == f"{mock.base_url}/models/11?modelVersionId=111"
    assert ours["preview"] == {"file": "pastel.style.preview.png", "url": f"{mock.base_url}/images/safe.jpg",
                               "nsfwLevel": 2, "nsfw": "PG13"}
    assert isinstance(ours["last_update"], int)


def test_strict_threshold_picks_later_image(mock, tmp_path, lora):
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="PG")
    assert res.preview_nsfw_level == 1 and mock.requests[-1].path == "/images/safe2.webp"
    assert res.preview_path.read_bytes().startswith(b"\x89PNG")


def test_no_threshold_takes_first_image(mock, tmp_path, lora):
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level=None)
    assert res.preview_nsfw_level == 8


def test_no_image_safe_enough(mock, tmp_path, lora):
    mock.versions[0]["images"] = mock.versions[0]["images"][:2]  # the X image and the video
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="R")
    assert res.preview_path is None and "no preview image within R" in res.message
    assert mock.count("GET", "/images/") == 0
    info = civitai_files.read_info(lora)
    assert info["id"] == 111 and info["extensions"]["lora_core"]["preview"] is None


def test_unreadable_image_falls_through_to_next(mock, tmp_path, lora):
    mock.add_image("safe.jpg", b"<html>not an image</html>", "image/jpeg")
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="PG13")
    assert res.preview_nsfw_level == 1  # safe2.webp after safe.jpg failed
    assert [r.path for r in mock.requests if r.path.startswith("/images/")] == ["/images/safe.jpg", "/images/safe2.webp"]


def test_oversized_image_refused(mock, tmp_path, lora):
    mock.versions[0]["images"] = mock.versions[0]["images"][2:3]  # only the JPEG (a few hundred bytes)
    res = new_client(mock.base_url, tmp_path, max_image=100).fetch_for_file(lora, SHA)
    assert res.preview_path is None and "too large" in res.message
    assert not civitai_files.preview_path(lora).exists()
    assert civitai_files.read_info(lora)["id"] == 111  # the info is still written


def test_decompression_bomb_refused(tmp_path, lora):
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, format="PNG")  # 81 Mpx, a few kB on disk
    with pytest.raises(civitai_files.PreviewError, match="too large"):
        civitai_files.write_preview(lora, out.getvalue())
    assert not civitai_files.preview_path(lora).exists()


def test_large_preview_is_downscaled(tmp_path, lora):
    path = civitai_files.write_preview(lora, png_bytes(size=(3000, 1500)))
    with Image.open(path) as im:
        assert im.size == (1024, 512)


def test_existing_preview_kept(mock, tmp_path, lora):
    own = lora.with_name("pastel.style.png")
    own.write_bytes(b"user's own")
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA)
    assert res.preview_path == own and own.read_bytes() == b"user's own"
    assert mock.count("GET", "/images/") == 0
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, overwrite_preview=True)
    assert res.preview_path == civitai_files.preview_path(lora) and own.read_bytes() == b"user's own"


def test_other_extensions_entries_kept(mock, tmp_path, lora):
    civitai_files.info_path(lora).write_text(json.dumps(
        {"id": 1, "extensions": {"sd_civitai_helper": {"version": "1.8.13", "skeleton_file": False}}}))
    mock.versions[0]["extensions"] = {"lora_core": "from civitai, not trusted", "other": 1}
    new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, preview=False)
    info = civitai_files.read_info(lora)
    assert info["id"] == 111
    assert info["extensions"]["sd_civitai_helper"] == {"version": "1.8.13", "skeleton_file": False}
    assert info["extensions"]["lora_core"]["hash"] == SHA and "other" not in info["extensions"]


def test_info_write_is_atomic(mock, tmp_path, lora, monkeypatch):
    target = civitai_files.info_path(lora)
    target.write_text('{"id": 1, "old": true}')

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(civitai_files.os, "replace", failing_replace)
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, preview=False)
    assert res.lookup.found and res.info_path is None and "disk full" in res.message
    assert json.loads(target.read_text()) == {"id": 1, "old": True}  # old file intact
    assert _files(lora.parent) == ["pastel.style.civitai.info", "pastel.style.safetensors"]  # no temp left

    monkeypatch.undo()
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, preview=False)
    assert res.info_path == target and civitai_files.read_info(lora)["id"] == 111


def test_read_info_tolerates_garbage(tmp_path, lora):
    assert civitai_files.read_info(lora) is None
    for junk in (b"{broken", b"[1, 2]", b"\xff\xfe", b"[" * 50_000):
        civitai_files.info_path(lora).write_bytes(junk)
        assert civitai_files.read_info(lora) is None


def test_not_found_and_error_write_nothing(mock, tmp_path, lora):
    client = new_client(mock.base_url, tmp_path, max_retries=0)
    res = client.fetch_for_file(lora, "cd" * 32)
    assert res.lookup.status == NOT_FOUND and res.info_path is None
    mock.script("GET", "/api/v1/model-versions/by-hash/", [Reply(500, "x")])
    res = client.fetch_for_file(lora, SHA)
    assert res.lookup.status == ERROR and "HTTP 500" in res.message
    assert _files(lora.parent) == ["pastel.style.safetensors"]


def test_fetch_for_files_batch(mock, tmp_path, lora):
    other = lora.with_name("unknown.safetensors")
    other.write_bytes(b"nobody knows")
    seen = []
    results = new_client(mock.base_url, tmp_path).fetch_for_files(
        [(lora, SHA), (other, file_hashes(b"nobody knows")["SHA256"])],
        progress=lambda done, total, r: seen.append((done, total)), preview=False)
    assert [r.lookup.status for r in results] == [FOUND, NOT_FOUND]
    assert mock.count("POST") == 1 and seen == [(1, 2), (2, 2)]
    assert results[0].info_path.is_file() and results[1].info_path is None


def test_with_model_adds_parent_fields(mock, tmp_path, lora):
    res = new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, preview=False, with_model=True)
    info = civitai_files.read_info(lora)
    assert info["model"]["description"] == "<p>model <b>description</b></p>"
    assert info["model"]["tags"] == ["style", "anime"] and info["model"]["allowDerivatives"] is True
    assert info["creator"] == {"username": "someone", "image": "https://image.civitai.com/avatar.png"}
    assert res.lookup.version.model_description == "<p>model <b>description</b></p>"


def test_update_check(mock, tmp_path, lora):
    client = new_client(mock.base_url, tmp_path)
    up = client.check_update(11, 111)
    assert up.status == FOUND and up.has_update
    assert up.latest.version_id == 333 and up.latest.name == "v2"
    assert up.link == f"{mock.base_url}/models/11?modelVersionId=333"
    assert mock.requests[-1].path == "/api/v1/models/11"

    assert not client.check_update(11, 333).has_update
    assert client.check_update(11, 50).has_update  # our version no longer listed, newer exists
    assert client.check_update(99, 1).status == NOT_FOUND

    client.fetch_for_file(lora, SHA, preview=False)
    assert client.check_update_for_file(lora).has_update
    assert client.check_update_for_file(lora.with_name("none.safetensors")).status == ERROR


def test_update_check_ignores_unpublished(mock, tmp_path):
    draft = make_version(444, 11, b"draft")
    draft["status"] = "Draft"
    mock.models[11]["modelVersions"].insert(0, draft)
    mock.models[11]["modelVersions"].insert(0, {"id": "junk"})
    up = new_client(mock.base_url, tmp_path).check_update(11, 333)
    assert up.latest.version_id == 333 and not up.has_update


def test_atomic_write_leaves_no_temp_on_success(tmp_path):
    target = tmp_path / "x.civitai.info"
    atomic_write(target, b"{}")
    atomic_write(target, b'{"a": 1}')
    assert os.listdir(tmp_path) == ["x.civitai.info"] and target.read_bytes() == b'{"a": 1}'


def test_saved_info_readable_offline(mock, tmp_path, lora):
    assert version_from_info(lora) is None and preview_level_from_info(lora) is None
    new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="PG13")
    mock.stop()  # no network from here on
    v = version_from_info(lora, base_url="https://civitai.com")
    assert (v.version_id, v.model_id, v.name, v.base_model) == (111, 11, "v1", "SD 1.5")
    assert v.trained_words == ("pastel", EVIL)
    assert v.link == "https://civitai.com/models/11?modelVersionId=111"
    assert preview_level_from_info(lora) == 2
    civitai_files.info_path(lora).write_text("{}")  # Civitai Helper's "not on Civitai" marker
    assert version_from_info(lora) is None


def test_oversized_info_is_trimmed_to_what_readers_use(tmp_path, lora):
    version = make_version(111, 11, CONTENT, trained_words=["w"])
    version["junk"] = "j" * (9 * 1024 * 1024)
    version["images"] = [{"url": "https://x/%d.png" % i, "nsfwLevel": 1} for i in range(50)]
    path = civitai_files.write_info(lora, version, {"hash": SHA})
    assert path.stat().st_size < civitai_files.MAX_INFO_WRITE
    info = civitai_files.read_info(lora)
    assert "junk" not in info and info["trainedWords"] == ["w"] and len(info["images"]) == 20
    assert info["extensions"]["lora_core"] == {"hash": SHA}


def test_library_sidecar_reader_sees_what_we_wrote(mock, tmp_path, lora):
    """Integration with lora_core.library.sidecars (the index's reader of the same files)."""
    from lora_core.library import sidecars

    new_client(mock.base_url, tmp_path).fetch_for_file(lora, SHA, max_preview_level="PG13")
    trimmed = sidecars.trim_civitai(sidecars.read_civitai_info(str(lora)))
    assert trimmed["id"] == 111 and trimmed["modelId"] == 11 and trimmed["trainedWords"] == ["pastel", EVIL]
    assert sidecars.find_preview(str(lora)) == str(civitai_files.preview_path(lora))
