"""The library-tool routes (ui/library_routes.py) on a real Library: recipe upload (size cap, bad
pictures, Civitai through the loopback mock), duplicates keep/undo, updates, and the tab's
base-model choices and badges."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lora_core.library import Library
from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync
from lora_core.ui import library_routes
from lora_core.ui.controller import BASE_MODEL_CHOICES, CHECKPOINT_FAMILY, LoraTabController, Query, TabSettings
from tests.civitai_mock import CivitaiMock, make_model, make_version
from tests.library.libtest_files import kohya_lora, kohya_metadata, write_lora
from tests.test_recipes_resolve import png

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lora_core.ui.api import register_routes  # noqa: E402

API = "/lora_core/api"


@pytest.fixture()
def setup(tmp_path):
    root = tmp_path / "Lora"
    first = write_lora(root / "style.safetensors", kohya_lora(rank=4), kohya_metadata(name="style"))
    os.makedirs(root / "copies")
    shutil.copy2(first, root / "copies" / "style.safetensors")
    write_lora(root / "pony" / "ponychar.safetensors", kohya_lora(context_dim=2048, te2=True),
               kohya_metadata(base="sdxl_base_v1-0", name="ponychar"))
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    lib.request_hashes()
    assert lib.wait_for_hashes(60)
    yield lib, root
    lib.close()


def _client(lib, civitai=None):
    app = fastapi.FastAPI()
    register_routes(app, lambda: lib, civitai=civitai)
    return TestClient(app)


def test_recipe_route(setup, tmp_path, monkeypatch):
    lib, root = setup
    style = lib.entry(str(root / "style.safetensors"))
    v = make_version(90, 9, b"remote", model_name="Remote")
    text = (f'a cat <lora:theirs:0.7> <lora:remote:1>\nNegative prompt: dog\nSteps: 20, Sampler: Euler, '
            f'Lora hashes: "theirs: {style.autov3}, remote: {v["files"][0]["hashes"]["AutoV3"].lower()}"')
    with CivitaiMock() as mock:
        mock.add_version(v)
        sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(base_url=mock.base_url, api_key=""))
        client = _client(lib, sync)
        r = client.post(API + "/recipe", content=png(text), headers={"Content-Type": "image/png",
                                                                      "X-File-Name": "cat%20pic.png"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert data["error"] == "" and data["negative"] == "dog" and data["missing"] == 1
    assert data["prompt"].startswith("a cat <lora:")
    found, missing = data["loras"]
    assert (found["found"], found["match"], found["path"]) == (True, "hash", style.path)
    # the tag uses the name the cards use (two files share the stem "style": folder/name picks one)
    assert found["tag"] in data["prompt"] and found["tag"] != "<lora:theirs:0.7>"
    assert (missing["civitai"], missing["download"]) == ("yes", "civitai:9@90")
    # bad pictures: a JSON message naming the file, not a 500
    bad = _client(lib).post(API + "/recipe", content=b"<html>", headers={"X-File-Name": "x.png"}).json()
    assert bad["error"].startswith("x.png: not a PNG")
    # size cap, declared and streamed
    monkeypatch.setattr(library_routes, "MAX_RECIPE_BYTES", 1000)
    capped = _client(lib)
    assert capped.post(API + "/recipe", content=b"\0" * 2000).status_code == 413
    assert capped.post(API + "/recipe", content=iter([b"\0" * 600, b"\0" * 600])).status_code == 413
    assert capped.get(API + "/recipe").status_code == 405


def test_duplicates_routes(setup):
    lib, root = setup
    client = _client(lib)
    data = client.get(API + "/duplicates").json()
    (group,) = data["groups"]
    assert sorted(i["path"] for i in group["items"]) == sorted([str(root / "style.safetensors"),
                                                              str(root / "copies" / "style.safetensors")])
    r = client.post(API + "/duplicates/keep", params={"path": str(root / "copies" / "style.safetensors")}).json()
    assert r["ok"] and r["batch"]
    assert not (root / "style.safetensors").exists()
    assert (root / ".trash" / "style.safetensors.trashed").exists()
    data = client.get(API + "/duplicates").json()
    assert data["groups"] == [] and data["batches"][0]["id"] == r["batch"] and data["batches"][0]["files"] == 1
    assert client.post(API + "/duplicates/undo", params={"batch": r["batch"]}).json()["ok"]
    assert (root / "style.safetensors").exists()
    assert not client.post(API + "/duplicates/keep", params={"path": "/etc/passwd"}).json()["ok"]


def test_updates_routes_and_badge(setup, tmp_path):
    lib, root = setup
    v2, v1 = make_version(12, 1, b"new"), make_version(11, 1, b"old")
    (root / "pony" / "ponychar.civitai.info").write_text(json.dumps(v1))
    lib.scan()
    with CivitaiMock() as mock:
        mock.add_model(make_model(1, [v2, v1]))
        sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(base_url=mock.base_url, api_key=""))
        client = _client(lib, sync)
        assert client.get(API + "/updates").json()["items"] == []
        assert client.post(API + "/updates/check").json()["accepted"]
        for _ in range(100):
            st = client.get(API + "/updates").json()
            if not st["status"]["running"] and st["items"]:
                break
            import time
            time.sleep(0.1)
    (item,) = st["items"]
    assert (item["path"], item["download"]) == (str(root / "pony" / "ponychar.safetensors"), "civitai:1@12")
    # offline now: the card still shows the cached badge, with the download source
    html = LoraTabController(lambda: lib).query(Query(family="(all)", show_all_families=True)).html
    assert 'data-lora-download="civitai:1@12"' in html and ">Pony<" in html
    # the grid filter "(newer version on Civitai)": only that card, from the cache (offline)
    from lora_core.ui.controller import UPDATES

    filtered = LoraTabController(lambda: lib).query(Query(family=UPDATES))
    assert [v.name for v in filtered.views] == ["ponychar"] and filtered.total == 1
    assert LoraTabController(lambda: lib).query(Query(family=UPDATES, search="nomatch")).total == 0
    # Civitai switched off: the check says so instead of failing
    off = CivitaiSync(lambda: lib, lambda: CivitaiSettings(enabled=False))
    assert _client(lib, off).post(API + "/updates/check").json()["accepted"] is False


def test_family_list_and_checkpoint_base_model(setup):
    lib, root = setup
    pony_choice = next(k for k, v in BASE_MODEL_CHOICES.items() if v == "pony")
    ctl = LoraTabController(lambda: lib)
    assert [v.name for v in ctl.query(Query(family=pony_choice)).views] == ["ponychar"]
    # a Pony checkpoint loaded: its LoRAs and plain SDXL ones, not the SD1 files
    ctl = LoraTabController(lambda: lib, TabSettings(current_family=lambda: "sdxl", current_base_model=lambda: "pony"))
    result = ctl.query(Query(family=CHECKPOINT_FAMILY))
    assert [v.name for v in result.views] == ["ponychar"] and "Pony, SDXL" in result.html
    ctl = LoraTabController(lambda: lib, TabSettings(current_family=lambda: "sd1", current_base_model=lambda: "sd1"))
    assert sorted(v.name for v in ctl.query(Query(family=CHECKPOINT_FAMILY)).views) == ["style", "style"]
