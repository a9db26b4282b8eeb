"""Civitai in the LoRA tab: fetch one / fetch all (background) against the local mock server,
offline behaviour, escaped Civitai text, NSFW blur of previews. Real Library, real files."""
from __future__ import annotations

import functools
import html
import json
import re

import pytest

from lora_core.library import Library
from lora_core.library.civitai import CivitaiClient
from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync
from lora_core.ui.controller import LoraTabController, Query, TabSettings
from tests.civitai_mock import CivitaiMock, closed_port_url, make_image, make_version, png_bytes
from tests.ui.library_fixture import write_lora, write_preview

EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def _setup(tmp_path, base_url, names=("known", "unknown"), threshold="PG13", client_kwargs=None):
    root = tmp_path / "Lora"
    paths = [write_lora(root / "sub" / f"{n}.safetensors", metadata={"ss_output_name": n}) for n in names]
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    settings = CivitaiSettings(base_url=base_url, api_key=None, nsfw_threshold=threshold)
    factory = functools.partial(CivitaiClient, timeout=5.0, sleep=lambda s: None, **(client_kwargs or {}))
    sync = CivitaiSync(lambda: lib, lambda: settings, client_factory=factory)
    ctl = LoraTabController(lambda: lib, TabSettings(civitai=sync))
    return lib, ctl, sync, paths


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        yield m


def _publish(mock, path, version_id=111, model_id=11, nsfw=1):
    mock.add_image(f"img{version_id}.png", png_bytes(size=(16, 16)))
    images = [make_image(mock.base_url, f"img{version_id}.png", nsfw_level=nsfw)]
    mock.add_version(make_version(version_id, model_id, path.read_bytes(), name="v1", base_model="SD 1.5",
                                  trained_words=["pastel style", EVIL], description="<p>Hello <b>world</b></p>" + EVIL,
                                  images=images, model_name="Pastel" + EVIL))


def test_fetch_one_writes_sidecars_and_details_show_escaped_civitai_text(mock, tmp_path):
    lib, ctl, _sync, (known, _unknown) = _setup(tmp_path, mock.base_url)
    _publish(mock, known)
    message = ctl.fetch_civitai(str(known))
    assert message.startswith("Civitai: found"), message
    assert known.with_name("known.civitai.info").exists() and known.with_name("known.preview.png").exists()
    entry = lib.entry(str(known))
    assert entry.civitai and entry.sha256, "the entry was refreshed and hashed"
    details, _ = ctl.details(str(known))
    assert "pastel style" in details and "SD 1.5" in details
    assert "Hello world" in details, "the description is shown as plain text"
    assert "<script" not in details and "<img src=x" not in details and "<b>world" not in details
    assert 'href="http://127.0.0.1' in details and "/models/11?modelVersionId=111" in details
    card = ctl.query(Query(show_all_families=True, search="known")).html
    assert "pastel style" in card and "<script" not in card
    assert "lora-core-blur" not in card, "a PG preview under a PG13 threshold is not blurred"


def test_fetch_all_runs_in_background_with_progress(mock, tmp_path):
    lib, ctl, sync, (known, unknown) = _setup(tmp_path, mock.base_url)
    _publish(mock, known)
    assert "background" in ctl.fetch_all_civitai()
    assert sync.wait(60)
    st = sync.status()
    assert (st.phase, st.total, st.done, st.found, st.not_found, st.errors) == ("done", 2, 2, 1, 1, 0), st
    assert "1 found" in ctl.civitai_status()
    assert lib.entry(str(known)).civitai and not lib.entry(str(unknown)).civitai
    # Nothing left to do: a second run makes no lookups for the found file and reports it.
    before = mock.count("POST")
    assert sync.start_all() and sync.wait(30)
    assert sync.status().total <= 1 and mock.count("POST") - before <= 1


def test_offline_gives_messages_not_exceptions(tmp_path):
    lib, ctl, sync, (known, _u) = _setup(tmp_path, closed_port_url(), client_kwargs={"max_retries": 0})
    message = ctl.fetch_civitai(str(known))
    assert "failed" in message.lower() or "error" in message.lower(), message
    assert not known.with_name("known.civitai.info").exists()
    assert sync.start_all() and sync.wait(60)
    assert sync.status().errors == 2 and sync.status().phase == "done"
    assert "Search failed" not in ctl.query(Query(show_all_families=True)).html


def test_disabled_civitai_makes_no_request(mock, tmp_path):
    root = tmp_path / "Lora"
    path = write_lora(root / "a.safetensors")
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(base_url=mock.base_url, enabled=False))
    ctl = LoraTabController(lambda: lib, TabSettings(civitai=sync))
    assert "turned off" in ctl.fetch_civitai(str(path))
    assert "turned off" in ctl.fetch_all_civitai()
    assert mock.count() == 0
    assert "not set up" in LoraTabController(lambda: lib, TabSettings()).fetch_civitai(str(path))


def _info_with_preview_level(path, level):
    info = {"id": 5, "modelId": 6, "name": "v", "trainedWords": [], "model": {"name": "m"},
            "images": [{"url": "http://x/y.png", "nsfwLevel": level}],
            "extensions": {"lora_core": {"preview": {"file": path.stem + ".png", "nsfwLevel": level}}}}
    path.with_name(path.stem + ".civitai.info").write_text(json.dumps(info), encoding="utf-8")


@pytest.mark.parametrize("threshold, blurred", [("PG13", True), ("R", True), ("X", False), ("show all", False)])
def test_nsfw_preview_blurred_above_threshold(tmp_path, threshold, blurred):
    root = tmp_path / "Lora"
    nsfw = write_lora(root / "nsfw.safetensors")
    write_preview(nsfw)
    _info_with_preview_level(nsfw, 8)  # X
    plain = write_lora(root / "plain.safetensors")
    write_preview(plain)  # no Civitai info: the user's own preview, never blurred
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(nsfw_threshold=threshold))
    page = LoraTabController(lambda: lib, TabSettings(civitai=sync)).query(Query(show_all_families=True)).html
    cards = dict(re.findall(r'data-lora-key="[^"]*?(nsfw|plain)\.safetensors".*?<div (class="lora-core-thumb[^"]*")', page))
    assert ("lora-core-blur" in cards["nsfw"]) is blurred
    assert "lora-core-blur" not in cards["plain"]
    if blurred:
        assert 'data-nsfw="X"' in page


def test_description_sanitizer():
    from lora_core.ui.entry_view import plain_text, safe_link

    text = plain_text('<p>a &amp; b</p><script>alert(1)</script><style>x{}</style><ul><li>one</li></ul>')
    assert text == "a & b\none" and "alert" not in text
    assert safe_link("javascript:alert(1)") == "" and safe_link('https://x/"onmouseover=1') == ""
    assert safe_link("https://civitai.com/models/1") == "https://civitai.com/models/1"
    assert html.escape(plain_text("<b>&lt;script&gt;</b>")) == "&lt;script&gt;"


def test_a1111_settings_give_civitai_settings(monkeypatch):
    from types import SimpleNamespace

    from lora_core.a1111.settings import BY_KEY, Settings

    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    assert {"lora_core_civitai_url", "lora_core_civitai_key", "lora_core_nsfw_threshold"} <= set(BY_KEY)
    s = Settings(lambda: SimpleNamespace()).civitai()  # before the settings page exists: defaults
    assert (s.base_url, s.api_key, s.nsfw_threshold) == ("https://civitai.com", None, "PG13")
    opts = SimpleNamespace(lora_core_civitai_url=" http://127.0.0.1:1 ", lora_core_civitai_key="abc",
                           lora_core_nsfw_threshold="R")
    s = Settings(lambda: opts).civitai()
    assert (s.base_url, s.api_key, s.nsfw_threshold) == ("http://127.0.0.1:1", "abc", "R")
    monkeypatch.setenv("CIVITAI_API_KEY", "env-key")
    assert Settings(lambda: SimpleNamespace()).civitai().api_key == "env-key"
