"""javascript/lora_core.js in a gradio 3.41.2 page laid out like A1111's (the DOM the extension meets).

The page (tests/ui/g3_page.py) runs in the `.venv-g3` gradio 3.41.2 venv; the JS and CSS are injected
after load, as A1111 does with the extension's javascript/*.js and style.css. Checks: a card click
goes into the prompt box that last had focus (img2img here), gradio's own state sees the edit (a
server round trip echoes it), a second click removes it, the ☆/i buttons reach Python through
the hidden bridge, and hostile metadata stays inert.
"""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest

from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, wait_for_chromium
from tests.ui.library_fixture import XSS_SCRIPT, hostile_lora, write_lora, write_preview, write_user_metadata

playwright_api = pytest.importorskip("playwright.sync_api")
G3 = ROOT / ".venv-g3" / "bin" / "python"
pytestmark = pytest.mark.skipif(not G3.exists(), reason="needs the gradio 3.41.2 venv .venv-g3 (created by .ci/install)")


@pytest.fixture(scope="module")
def g3_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("g3")
    lora = base / "Lora"
    hero = write_lora(lora / "hero.safetensors", metadata={
        "ss_output_name": "HeroStyle", "ss_tag_frequency": '{"a": {"red cape": 3}}'})
    write_user_metadata(hero, {"activation text": "hero pose", "preferred weight": 0.6})
    write_preview(hero)
    write_lora(lora / "other.safetensors")
    hostile_lora(lora / "evil")
    port = free_port()
    log = open(base / "g3.log", "wb")
    proc = subprocess.Popen([str(G3), str(ROOT / "tests" / "ui" / "g3_page.py"), str(lora), str(base / "data"), str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (base / "g3.log").read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(url + "/sdapi/v1/loras", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "gradio 3 page did not start"
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def page(g3_server):
    assert wait_for_chromium(), f"{CHROMIUM} is not installed (apt-get install chromium)"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1300, "height": 900})
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(g3_server + "/", wait_until="load")
        pg.wait_for_selector("#img2img_prompt textarea", state="attached")
        pg.add_script_tag(path=str(ROOT / "javascript" / "lora_core.js"))
        pg.add_style_tag(path=str(ROOT / "style.css"))
        yield pg
        browser.close()


def _tab(pg, name):
    pg.locator("button", has_text=name).first.click()


def test_card_click_targets_last_focused_prompt_and_gradio_sees_it(page):
    pg = page
    _tab(pg, "img2img")
    pg.locator("#img2img_prompt textarea").fill("castle")
    pg.locator("#img2img_prompt textarea").focus()
    _tab(pg, "LoRA")
    card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="HeroStyle"]')
    card.click()
    _tab(pg, "img2img")
    assert pg.locator("#img2img_prompt textarea").input_value() == "castle, <lora:HeroStyle:0.6>, hero pose"
    assert pg.locator("#txt2img_prompt textarea").input_value() == ""
    pg.locator("#img2img_echo").click()
    pg.wait_for_function("document.querySelector('#img2img_echoed textarea').value.includes('HeroStyle')")
    _tab(pg, "LoRA")
    card.click()
    _tab(pg, "img2img")
    assert pg.locator("#img2img_prompt textarea").input_value() == "castle"
    assert not pg.errors, pg.errors


def test_bridge_buttons_and_training_tags(page):
    pg = page
    _tab(pg, "LoRA")
    assert not pg.locator("#lora_core_action").is_visible(), "the bridge textbox is hidden by style.css"
    card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="HeroStyle"]')
    card.locator(".lora-core-info-btn").click()
    pg.locator("#lora_core_details .lora-core-details-title", has_text="HeroStyle").wait_for(timeout=30_000)
    assert pg.locator("#lora_core_edit_activation textarea").input_value() == "hero pose"
    pg.locator(".lora-core-train-tag", has_text="red cape").click()
    assert pg.locator("#lora_core_edit_activation textarea").input_value() == "hero pose, red cape"
    card.locator(".lora-core-fav-btn").click()
    pg.locator('#lora_core_grid .lora-core-card-fav[data-lora-name="HeroStyle"]').wait_for(timeout=30_000)
    assert not pg.errors, pg.errors


def test_hostile_entry_is_inert_in_gradio3(page):
    pg = page
    _tab(pg, "LoRA")
    pg.locator("#lora_core_show_all input").check()
    evil = pg.locator("#lora_core_grid .lora-core-card", has_text="evil").first
    evil.wait_for(timeout=30_000)
    assert XSS_SCRIPT in evil.inner_text()
    evil.locator(".lora-core-info-btn").click()
    pg.locator("#lora_core_details .lora-core-details-title").wait_for(timeout=30_000)
    pg.wait_for_timeout(300)
    assert pg.evaluate("typeof window.__pwned") == "undefined"
    assert pg.evaluate("document.querySelectorAll('[onerror]').length") == 0
