"""`python -m lora_core download` and the JSON routes of the queue, against the local stand-in."""
from __future__ import annotations

import json
import time

import pytest

from tests.civitai_mock import Reply
from tests.download_fixture import env, lora_bytes, mock  # noqa: F401 - fixtures
from lora_core import cli
from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync

CONTENT = lora_bytes(50)


def test_cli_downloads_into_the_folder_and_indexes(mock, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    mock.add_download(5, 6, CONTENT, "cli_lora.safetensors", trained_words=("clitrigger",))
    lora = tmp_path / "Lora"
    rc = cli.main(["download", f"{mock.base_url}/models/6", "--folder", "got", "--lora-dir", str(lora),
                   "--data-dir", str(tmp_path / "data"), "--civitai-url", mock.base_url, "--timeout", "5"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "cli_lora.safetensors: saved cli_lora.safetensors" in out.out
    assert (lora / "got" / "cli_lora.safetensors").read_bytes() == CONTENT
    assert json.loads((lora / "got" / "cli_lora.json").read_text())["activation text"] == "clitrigger"
    rc = cli.main(["list", "--lora-dir", str(lora), "--data-dir", str(tmp_path / "data"), "--json"])
    assert rc == 0 and "got/cli_lora" in capsys.readouterr().out


def test_cli_failures_exit_1_with_the_message(mock, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    mock.add_download(5, 6, CONTENT, "locked.safetensors")
    mock.script("GET", "/api/download/models/5", [Reply(403, {"error": "Unauthorized"})])
    args = ["--lora-dir", str(tmp_path / "Lora"), "--data-dir", str(tmp_path / "d"), "--civitai-url", mock.base_url]
    assert cli.main(["download", "civitai:6@5", *args]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "--civitai-key" in err
    assert cli.main(["download", "https://example.com/x", *args]) == 2
    assert "unsupported site" in capsys.readouterr().err
    assert list((tmp_path / "Lora").glob("*.safetensors")) == []


@pytest.fixture
def client(env):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lora_core.ui.api import register_routes

    app = FastAPI()
    sync = CivitaiSync(lambda: env.library, lambda: CivitaiSettings(base_url=env.mock.base_url, api_key=None))
    register_routes(app, lambda: env.library, civitai=sync)
    with TestClient(app) as c:
        yield c


def _wait(client, job_id, states=("done", "error", "cancelled", "paused"), timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get("/lora_core/api/downloads").json()["items"]
        job = next(j for j in items if j["id"] == job_id)
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def test_routes_enqueue_list_pause_resume_cancel(client, env):
    m = env.mock
    m.add_download(5, 6, lora_bytes(51, rows=6400), "api.safetensors", chunk=4096, chunk_delay=0.01)
    r = client.post("/lora_core/api/downloads", json={"url": "civitai:6@5", "folder": "web"})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    time.sleep(0.3)
    assert client.post(f"/lora_core/api/downloads/{job_id}/pause").json()["id"] == job_id
    assert _wait(client, job_id)["state"] == "paused"
    m.files["api.safetensors"].chunk_delay = 0
    client.post(f"/lora_core/api/downloads/{job_id}/resume")
    done = _wait(client, job_id)
    assert done["state"] == "done" and done["fraction"] == 1.0 and done["path"].endswith("web/api.safetensors")
    # the card's data is served at once (no rescan): the page route finds it
    page = client.get("/lora_core/api/loras", params={"q": "api"}).json()
    assert [i["name"] for i in page["items"]] == ["api"]
    assert client.post("/lora_core/api/downloads/clear").json() == {"removed": 1}

    m.add_download(7, 8, lora_bytes(52, rows=6400), "c.safetensors", chunk=4096, chunk_delay=0.01)
    job_id = client.post("/lora_core/api/downloads", json={"url": "civitai:8@7"}).json()["id"]
    time.sleep(0.2)
    client.post(f"/lora_core/api/downloads/{job_id}/cancel")
    assert _wait(client, job_id)["state"] == "cancelled"
    assert env.lora_files() == ["web/api.safetensors"] and env.parts() == []


def test_routes_refuse_bad_input(client):
    r = client.post("/lora_core/api/downloads", json={"url": "https://example.com/x.safetensors"})
    assert r.status_code == 400 and "unsupported site" in r.json()["detail"]
    r = client.post("/lora_core/api/downloads", json={"url": "civitai:1", "folder": "../x"})
    assert r.status_code == 400 and "sub-folder" in r.json()["detail"]
    assert client.post("/lora_core/api/downloads/999/pause").status_code == 404
    assert client.get("/lora_core/api/downloads/999/pause").status_code == 405
    assert client.delete("/lora_core/api/downloads").status_code == 405
    assert client.get("/lora_core/api/downloads").json() == {"items": []}
