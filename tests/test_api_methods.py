"""Issue 14 item 14: a route called with a method it does not take answers 405 (with Allow), not
404, even with a catch-all app mounted at "/" as the standalone server (gradio) and A1111 have."""
from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from lora_core.ui.api import register_routes  # noqa: E402


class FakeLibrary:
    roots: list = []

    def all(self):
        return []

    def scan(self):
        return None

    def search(self, *args, **kwargs):
        from lora_core.library.entry import Page

        return Page(0, [], 0, 50)


class FakeCivitai:
    def fetch_one(self, path):
        return "ok"

    def start_all(self):
        return False

    def status(self):
        raise AssertionError("not called here")


async def page_at_root(scope, receive, send):  # stands in for the gradio page mounted at "/"
    await PlainTextResponse("page not found", status_code=404)(scope, receive, send)


@pytest.fixture()
def client():
    app = fastapi.FastAPI()
    register_routes(app, lambda: FakeLibrary(), civitai=FakeCivitai())
    app.mount("/", page_at_root)
    return TestClient(app)


@pytest.mark.parametrize("path", ["/sdapi/v1/refresh-loras", "/lora_core/api/civitai/fetch_all",
                                  "/lora_core/api/civitai/fetch?path=x"])
def test_get_on_a_post_route_is_405(client, path):
    r = client.get(path)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"detail": "Method Not Allowed"}


def test_post_on_a_get_route_is_405(client):
    r = client.post("/sdapi/v1/loras")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.delete("/lora_core/api/loras").status_code == 405


def test_right_methods_and_unknown_paths_unchanged(client):
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.post("/sdapi/v1/refresh-loras").json() == {"ok": True, "total": None}
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/lora_core/static/nope.js").status_code == 404


def test_registering_twice_on_one_app_still_works():
    app = fastapi.FastAPI()
    register_routes(app, lambda: FakeLibrary(), prefix="/a")
    register_routes(app, lambda: FakeLibrary(), prefix="/b", sdapi=False)
    app.mount("/", page_at_root)
    c = TestClient(app)
    assert c.get("/sdapi/v1/refresh-loras").status_code == 405
    assert c.post("/b/loras").status_code == 405 and c.get("/b/loras").status_code == 200
