"""The recipe drop zone and the duplicates box in chromium, against the real routes (uvicorn on
127.0.0.1, a real Library in a temp folder, the Civitai loopback mock): drop a PNG -> the prompt
with local tag names appears and fills txt2img; "Download" reaches the download queue; "Keep this
one" moves the other copy to the trash and "Undo" brings it back; hostile metadata stays text."""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_core.library import Library
from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync
from lora_core.ui import library_tools_view, render
from lora_core.ui.entry_view import EntryView
from tests.civitai_mock import CivitaiMock, make_version
from tests.library.libtest_files import kohya_lora, kohya_metadata, write_lora
from tests.ui.browser import free_port, launched_chromium

playwright_api = pytest.importorskip("playwright.sync_api")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from lora_core.ui.api import register_routes  # noqa: E402

XSS = '<img src=x onerror="window.__pwned=1">'


class FakeQueue:
    """Stands in for the download queue: records what the page asks for."""

    def __init__(self):
        self.asked = []

    def jobs(self):
        return []

    def enqueue(self, url, folder=""):
        self.asked.append(url)
        return {"id": len(self.asked), "state": "queued", "label": url, "text": url}

    def clear_finished(self):
        return 0

    def pause(self, job_id):
        raise KeyError(job_id)

    resume = cancel = pause


def _page() -> str:
    card = render.render_card(EntryView(key="/l/old.safetensors", name="old", alias="old", tag_name="old",
                                        family="sdxl", base_model="pony", update_name="v2",
                                        update_download="civitai:1@12"))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/lora_core/static/style.css"></head><body>
<div id="txt2img_prompt"><textarea></textarea></div><div id="txt2img_neg_prompt"><textarea></textarea></div>
<div id="lora_core_grid">{card}</div>
<div id="{library_tools_view.ELEM_RECIPE}">{library_tools_view.recipe_html()}</div>
<div id="{library_tools_view.ELEM_TOOLS}">{library_tools_view.tools_html()}</div>
<script src="/lora_core/static/lora_core.js"></script></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    root = tmp / "Lora"
    first = write_lora(root / "style.safetensors", kohya_lora(rank=4), kohya_metadata(name="style"))
    os.makedirs(root / "copies")
    shutil.copy2(first, root / "copies" / "style.safetensors")
    write_lora(root / "ink.safetensors", kohya_lora(rank=2), kohya_metadata(name="ink"))
    lib = Library([root], data_dir=tmp / "data")
    lib.scan()
    lib.request_hashes()
    assert lib.wait_for_hashes(60)
    mock = CivitaiMock().start()
    remote = make_version(90, 9, b"remote bytes", model_name="Remote", name="v1")
    mock.add_version(remote)
    queue = FakeQueue()
    app = fastapi.FastAPI()
    sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(base_url=mock.base_url, api_key=""))
    register_routes(app, lambda: lib, civitai=sync, downloads=queue)
    from fastapi.responses import HTMLResponse

    app.add_api_route("/", lambda: HTMLResponse(_page()), methods=["GET"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield {"url": f"http://127.0.0.1:{port}/", "lib": lib, "root": root, "queue": queue, "remote": remote}
    server.should_exit = True
    thread.join(10)
    mock.stop()
    lib.close()


@pytest.fixture(scope="module")
def page(site):
    with launched_chromium() as browser:
        pg = browser.new_page()
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(site["url"])
        pg.wait_for_function("window.__loraCoreLibraryToolsLoaded === true")
        yield pg


def _png(text: str) -> bytes:
    info = PngInfo()
    info.add_itxt("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _drop(pg, data: bytes, name: str, target: str = ".lora-core-recipe-zone") -> None:
    pg.evaluate("""([b64, name, target]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "image/png"}));
        const zone = document.querySelector(target);
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(data).decode(), name, target])


def test_recipe_drop_fills_prompt(site, page):
    pg = page
    ink = site["lib"].find("ink")
    remote_hash = site["remote"]["files"][0]["hashes"]["AutoV2"].lower()
    text = (f"a harbour at night {XSS} <lora:theirInk:0.6> <lora:remote:1>\nNegative prompt: blurry\n"
            f'Steps: 20, Sampler: Euler, Lora hashes: "theirInk: {ink.autov3}, remote: {remote_hash}"')
    _drop(pg, _png(text), "harbour.png")
    pg.wait_for_selector(".lora-core-recipe-prompt")
    expected = f"a harbour at night {XSS} <lora:ink:0.6> <lora:remote:1>"
    assert pg.inner_text(".lora-core-recipe-prompt") == expected
    assert pg.locator(".lora-core-recipe-found").count() == 1
    missing = pg.locator(".lora-core-recipe-missing")
    assert "Remote / v1" in missing.inner_text()
    pg.locator(".lora-core-recipe-use").click()
    assert pg.eval_on_selector("#txt2img_prompt textarea", "t => t.value") == expected
    assert pg.eval_on_selector("#txt2img_neg_prompt textarea", "t => t.value") == "blurry"
    missing.locator(".lora-core-recipe-download").click()
    pg.wait_for_function("document.querySelector('.lora-core-dl-note') && "
                         "document.querySelector('.lora-core-dl-note').textContent.includes('Downloads')")
    assert site["queue"].asked == ["civitai:9@90"]
    # a picture without metadata: a message, and the metadata above never ran as markup
    _drop(pg, _png(""), "plain.png")
    pg.wait_for_selector(".lora-core-recipe-error")
    assert "plain.png" in pg.inner_text(".lora-core-recipe-error")
    assert pg.evaluate("window.__pwned") is None and not pg.errors


def test_picture_dropped_on_txt2img_prompt(site, page):
    pg = page
    pg.fill("#txt2img_prompt textarea", "old text")
    text = 'a red boat <lora:ink:0.4>\nNegative prompt: fog\nSteps: 20, Sampler: Euler, Size: 512x512'
    _drop(pg, _png(text), "boat.png", "#txt2img_prompt textarea")
    pg.wait_for_function("document.querySelector('#txt2img_prompt textarea').value !== 'old text'")
    assert pg.eval_on_selector("#txt2img_prompt textarea", "t => t.value") == "a red boat <lora:ink:0.4>"
    assert pg.eval_on_selector("#txt2img_neg_prompt textarea", "t => t.value") == "fog"
    assert pg.inner_text(".lora-core-recipe-prompt") == "a red boat <lora:ink:0.4>"  # the tab shows the LoRAs


def test_update_badge_downloads_without_inserting(site, page):
    pg = page
    site["queue"].asked.clear()
    pg.locator(".lora-core-update").click()
    pg.wait_for_function("document.querySelector('.lora-core-card .lora-core-dl-note') !== null")
    assert site["queue"].asked == ["civitai:1@12"]
    assert "<lora:old" not in pg.eval_on_selector("#txt2img_prompt textarea", "t => t.value")


def test_duplicates_keep_one_and_undo(site, page):
    pg = page
    root = site["root"]
    pg.locator(".lora-core-tools summary").click()
    pg.locator(".lora-core-dupes-find").click()
    pg.wait_for_selector(".lora-core-dupes-keep")
    paths = pg.eval_on_selector_all(".lora-core-dupes-path", "els => els.map(e => e.textContent)")
    assert sorted(paths) == sorted([str(root / "style.safetensors"), str(root / "copies" / "style.safetensors")])
    pg.locator(f'.lora-core-dupes-keep[data-path="{root / "copies" / "style.safetensors"}"]').click()
    pg.wait_for_selector(".lora-core-dupes-undo")
    assert "moved 1 other copy" in pg.inner_text(".lora-core-tools-status")
    assert not (root / "style.safetensors").exists() and (root / ".trash" / "style.safetensors.trashed").exists()
    assert pg.inner_text(".lora-core-dupes-head") == "No duplicates found."
    pg.locator(".lora-core-dupes-undo").click()
    pg.wait_for_function("document.querySelector('.lora-core-tools-status').textContent.startsWith('Restored')")
    assert (root / "style.safetensors").exists()
    pg.wait_for_selector(".lora-core-dupes-keep")
    assert not pg.errors
