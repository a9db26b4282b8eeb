"""The REST routes (A1111-compatible list/refresh, autocomplete, paging, thumbnails) on a real Library."""
from __future__ import annotations


import pytest

from lora_core.library import Library
from tests.ui.library_fixture import XSS, hostile_lora, plain_library, write_preview, write_user_metadata

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lora_core.ui.api import register_routes  # noqa: E402


@pytest.fixture()
def setup(tmp_path):
    root = tmp_path / "Lora"
    paths = plain_library(root, 5)
    write_preview(paths[1])
    write_user_metadata(paths[1], {"preferred weight": 0.7})
    hostile_lora(root / "evil")
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    app = fastapi.FastAPI()
    register_routes(app, lambda: lib)
    return TestClient(app), lib, root, paths


def test_sdapi_list_and_refresh(setup):
    client, lib, root, paths = setup
    r = client.get("/sdapi/v1/loras")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    items = r.json()
    assert len(items) == 8
    one = next(i for i in items if i["name"] == "lora_0001")
    assert one["alias"] == "alias_0001" and one["path"] == str(paths[1])
    assert one["metadata"]["family"] == "sd1"
    (root / "new.safetensors").write_bytes((paths[0]).read_bytes())
    assert client.post("/sdapi/v1/refresh-loras").json()["total"] == 9
    assert len(client.get("/sdapi/v1/loras").json()) == 9


def test_suggest_gives_tag_names_weights_and_thumbnails(setup):
    client, *_ = setup
    items = client.get("/lora_core/api/suggest", params={"q": "alias_0001"}).json()["items"]
    assert [i["tag_name"] for i in items] == ["alias_0001"]
    assert items[0]["preferred_weight"] == 0.7
    thumb = client.get(items[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
    evil = client.get("/lora_core/api/suggest", params={"q": "evil"}).json()["items"]
    assert evil and XSS in evil[0]["alias"]  # JSON carries it as data; the page inserts it as text


def test_paging_route(setup):
    client, *_ = setup
    body = client.get("/lora_core/api/loras", params={"page": 2, "page_size": 3, "sort": "name"}).json()
    assert body["total"] == 8 and len(body["items"]) == 3 and body["page"] == 2
    body = client.get("/lora_core/api/loras", params={"family": "sdxl"}).json()
    assert body["total"] == 2


def test_one_lora_has_full_metadata(setup):
    client, lib, root, paths = setup
    body = client.get("/lora_core/api/lora", params={"path": str(paths[0])}).json()
    assert body["metadata"]["ss_output_name"] == "alias_0000"
    assert client.get("/lora_core/api/lora", params={"path": "/etc/passwd"}).status_code == 404


def test_thumb_serves_only_library_previews(setup, tmp_path):
    client, lib, root, paths = setup
    assert client.get("/lora_core/api/thumb", params={"path": str(paths[1])}).status_code == 200
    assert client.get("/lora_core/api/thumb", params={"path": str(paths[0])}).status_code == 404  # no preview
    secret = tmp_path / "secret.png"
    write_preview(secret)
    assert client.get("/lora_core/api/thumb", params={"path": str(secret)}).status_code == 404
    assert client.get("/lora_core/api/thumb", params={"path": "/etc/passwd"}).status_code == 404


def test_static_serves_only_the_extension_files(setup):
    client, *_ = setup
    js = client.get("/lora_core/static/lora_core.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "loraCore" in js.text
    assert client.get("/lora_core/static/style.css").status_code == 200
    assert client.get("/lora_core/static/..%2Fpyproject.toml").status_code == 404
    assert client.get("/lora_core/static/serve.py").status_code == 404
