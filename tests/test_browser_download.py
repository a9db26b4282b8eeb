"""The LoRA tab's Download box in chromium: the tab (create_lora_panel, the app's gradio) with the
JSON routes and the page head the standalone app uses, served in-process on 127.0.0.1; Civitai is the
local stand-in. Paste a link, watch the progress bar reach done, see the new card in the grid."""
from __future__ import annotations

import threading
import time

import pytest

from tests.civitai_mock import CivitaiMock
from tests.download_fixture import lora_bytes
from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, free_port, wait_for_chromium

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from lora_core.app.serve import page_head, read_css
    from lora_core.library import Library
    from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync
    from lora_core.ui.api import register_routes
    from lora_core.ui.controller import TabSettings
    from lora_core.ui.tab import create_lora_panel

    base = tmp_path_factory.mktemp("dl_browser")
    lora_dir = base / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    mock = CivitaiMock().start()
    # ~400 KB in 4 KB pieces, 5 ms apart: about half a second of visible progress
    mock.add_download(5, 6, lora_bytes(60, rows=12800), "browser_style.safetensors", chunk=4096, chunk_delay=0.005,
                      trained_words=("bstyle",))
    lib = Library([str(lora_dir)], str(base / "data"))
    lib.scan()
    sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(base_url=mock.base_url, api_key=None))
    app = FastAPI()
    register_routes(app, lambda: lib, civitai=sync)
    with gr.Blocks() as blocks:
        panel = create_lora_panel(lambda: lib, TabSettings(civitai=sync))
        panel.attach_load(blocks)
    app = gr.mount_gradio_app(app, blocks, path="/", css=read_css(), head=page_head())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started
    yield f"http://127.0.0.1:{port}", lora_dir, mock
    server.should_exit = True
    thread.join(10)
    mock.stop()
    lib.close()


def test_download_box_progress_reaches_done_and_card_appears(served):
    url, lora_dir, mock = served
    assert wait_for_chromium(), f"{CHROMIUM} is not installed"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page()
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(url)
            pg.wait_for_selector("#lora_core_dl_url", timeout=60_000)
            assert pg.locator("#lora_core_grid .lora-core-card").count() == 0
            pg.fill("#lora_core_dl_url", f"{mock.base_url}/models/6")
            pg.fill("#lora_core_dl_folder", "web")
            pg.click("#lora_core_dl_add")
            # a progress bar per file while it runs, with a width between 0 and 100 %
            pg.wait_for_selector(".lora-core-dl-job[data-dl-state=downloading] .lora-core-dl-bar", timeout=20_000)
            pg.wait_for_selector(".lora-core-dl-job[data-dl-state=done]", timeout=30_000)
            row = pg.locator(".lora-core-dl-job[data-dl-state=done]")
            assert row.locator(".lora-core-dl-bar").get_attribute("aria-valuenow") == "100"
            assert row.locator(".lora-core-dl-fill").evaluate("e => e.style.width") == "100%"
            assert "browser_style.safetensors" in row.locator(".lora-core-dl-name").inner_text()
            assert "saved" in row.locator(".lora-core-dl-msg").inner_text()
            # the grid refreshes by itself and shows the new card (indexed without a rescan)
            card = pg.locator("#lora_core_grid .lora-core-card", has_text="browser_style")
            card.first.wait_for(timeout=20_000)
            assert (lora_dir / "web" / "browser_style.safetensors").is_file()
            assert not [e for e in errors if "lora_core" in e], errors
        finally:
            browser.close()
