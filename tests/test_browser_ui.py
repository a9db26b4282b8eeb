"""The standalone web UI in a real browser (Playwright + Debian chromium, headless).

One `python -m lora_core serve` subprocess (demo model, its demo LoRAs, plus a LoRA whose name and
metadata carry XSS payloads) serves every test here. The flow test clicks a LoRA card into the
prompt, generates, and checks pixels: the LoRA changes the image and removing the tag gives the
original image back bit for bit. Screenshots of both tabs are taken on every run; they go to
docs/screenshots/ (the README's pictures) only when LORA_CORE_SCREENSHOTS names that folder, so a
test run leaves the checkout clean.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_core.tags import parse_prompt
from tests.ui.browser import ROOT, Server, launched_chromium
from tests.ui.library_fixture import XSS_IMG, XSS_SCRIPT, hostile_lora

# a scene the demo model can draw (it knows shapes, colours and positions, nothing else)
SCENE = "a large red circle on a white background, in the center"

playwright_api = pytest.importorskip("playwright.sync_api")

PROMPT = "#txt2img_prompt textarea"
STEPS = 20  # the demo model is tiny: 20 steps (as its quality is measured) take ~0.5 s an image


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    models = base / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    hostile_lora(models / "Lora" / "evil")
    srv = Server(base, base / "server.log")
    try:
        srv.wait_ready(timeout=900)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as b:
        yield b


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)  # CI machines are small: gradio round trips can take seconds
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(server.url + "/", wait_until="load")
    pg.wait_for_function("window.__loraCoreLoaded === true")
    yield pg
    context.close()


def _open_tab(pg, name):
    pg.get_by_role("tab", name=name, exact=True).click()


def _search(pg, text, show_all=False):
    _open_tab(pg, "LoRA")
    if show_all:
        box = pg.locator("#lora_core_show_all input[type=checkbox]")
        if not box.is_checked():
            box.check()
    field = pg.locator("#lora_core_search textarea, #lora_core_search input").first
    field.fill(text)
    field.press("Enter")
    # data-query echoes the search the grid shows: wait for this search's page, not the previous one
    pg.wait_for_function(
        "t => { const p = document.querySelector('#lora_core_grid .lora-core-page');"
        " return p && p.getAttribute('data-query') === t"
        " && p.querySelectorAll('.lora-core-card').length > 0; }",
        arg=text, timeout=90_000,
    )


def _set_number(pg, elem_id, value):
    field = pg.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Tab")


def _generate(pg):
    """Click Generate, wait for this run's status line, return the first image's pixels."""
    before = pg.evaluate("() => { const m = document.querySelector('#txt2img_messages [data-run]');"
                         " return m ? m.getAttribute('data-run') : null; }")
    pg.locator("#txt2img_generate").click()
    pg.wait_for_function(
        "b => { const m = document.querySelector('#txt2img_messages [data-run]');"
        " return m && m.getAttribute('data-run') !== b; }",
        arg=before, timeout=180_000,
    )
    img = pg.locator("#txt2img_gallery img").first
    img.wait_for(timeout=90_000)
    src = img.get_attribute("src")
    response = pg.request.get(src if src.startswith("http") else pg.url.rstrip("/") + "/" + src.lstrip("/"))
    assert response.ok, src
    with Image.open(io.BytesIO(response.body())) as im:
        return np.asarray(im.convert("RGB")).copy()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    chosen = os.environ.get("LORA_CORE_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


def test_click_card_generate_and_restore(page, server, screenshots):
    pg = page
    _open_tab(pg, "txt2img")
    banner = pg.locator("#lora_core_banner")
    assert "Demo model loaded" in banner.inner_text() and "Stable-diffusion" in banner.inner_text()
    pg.locator(PROMPT).fill(SCENE)
    pg.locator(PROMPT).focus()
    _set_number(pg, "txt2img_seed", 1234)
    _set_number(pg, "txt2img_steps", STEPS)
    plain = _generate(pg)

    # the trained style LoRA: its card adds "<lora:demo_stripes:1>, lcstripes" (trigger last, as trained)
    _search(pg, "demo_stripes")
    card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="demo_stripes"]')
    tag = card.get_attribute("data-lora-tag")
    assert tag.startswith("<lora:demo_stripes:")
    screenshots.mkdir(parents=True, exist_ok=True)
    _search(pg, "demo")
    card.locator(".lora-core-info-btn").click()  # details panel of the card, for the screenshot too
    pg.locator("#lora_core_details .lora-core-details-title", has_text="demo_stripes").wait_for(timeout=90_000)
    assert "lcstripes" in pg.locator("#lora_core_edit_activation textarea").input_value()
    pg.screenshot(path=str(screenshots / "lora_tab.png"), full_page=True)
    card.click()
    _open_tab(pg, "txt2img")
    prompt = pg.locator(PROMPT).input_value()
    assert tag in prompt and prompt.startswith(SCENE)
    with_lora = _generate(pg)
    assert with_lora.shape == plain.shape
    assert np.abs(with_lora.astype(int) - plain.astype(int)).mean() > 1.0, "the LoRA changed nothing"
    pg.screenshot(path=str(screenshots / "txt2img.png"), full_page=True)
    # the trigger words alone (no tag) do not give that image: the LoRA's weights did it
    triggers = card.get_attribute("data-lora-triggers")
    pg.locator(PROMPT).fill(parse_prompt(prompt).clean_text)  # exactly the text the model sees
    assert triggers in pg.locator(PROMPT).input_value() and "<lora:" not in pg.locator(PROMPT).input_value()
    words_only = _generate(pg)
    assert np.abs(with_lora.astype(int) - words_only.astype(int)).mean() > 1.0, "the LoRA had no effect"
    pg.locator(PROMPT).fill(prompt)

    _open_tab(pg, "LoRA")
    card.click()  # second click removes the tag and its trigger words
    _open_tab(pg, "txt2img")
    assert pg.locator(PROMPT).input_value() == SCENE
    restored = _generate(pg)
    assert np.array_equal(restored, plain), "removing the LoRA did not restore the original image"
    assert not pg.errors, pg.errors


def test_autocomplete_inserts_preferred_weight(page):
    pg = page
    _open_tab(pg, "txt2img")
    box = pg.locator(PROMPT)
    box.fill("")
    box.click()
    # demo_checker's sidecar asks for 0.6 (not the default 1), so the weight must come from it
    box.press_sequentially("a cat <lora:demo_ch", delay=30)
    item = pg.locator(".lora-core-suggest .lora-core-suggest-item").first
    item.wait_for(timeout=15_000)
    assert "demo_checker" in item.inner_text()
    assert pg.locator(".lora-core-suggest img").count() >= 1, "suggestions show thumbnails"
    box.press("Enter")
    assert box.input_value() == "a cat <lora:demo_checker:0.6>"
    assert not pg.errors, pg.errors


def test_hostile_metadata_never_runs(page):
    pg = page
    _search(pg, "evil", show_all=True)
    card = pg.locator("#lora_core_grid .lora-core-card").first
    text = card.inner_text()
    assert XSS_SCRIPT in text, "the payload is shown as text"
    card.locator(".lora-core-info-btn").click()
    details = pg.locator("#lora_core_details .lora-core-details-title")
    details.wait_for(timeout=90_000)
    body = pg.locator("#lora_core_details").inner_text()
    assert XSS_IMG in body and XSS_SCRIPT in body
    # the training tags (one is the payload) are clickable chips that fill the activation text
    pg.locator("#lora_core_details .lora-core-train-tag", has_text="red hat").click()
    assert "red hat" in pg.locator("#lora_core_edit_activation textarea").input_value()
    # the autocomplete list shows the hostile alias as text too
    _open_tab(pg, "txt2img")
    box = pg.locator(PROMPT)
    box.fill("")
    box.click()
    box.press_sequentially("<lora:evil", delay=30)
    pg.locator(".lora-core-suggest-item").first.wait_for(timeout=15_000)
    assert XSS_SCRIPT in pg.locator(".lora-core-suggest-item").first.inner_text()
    pg.wait_for_timeout(500)
    assert pg.evaluate("typeof window.__pwned") == "undefined"
    assert pg.locator("#lora_core_grid script, #lora_core_details script").count() == 0
    # the markup never became elements: no handler attributes, no payload images anywhere
    assert pg.evaluate("document.querySelectorAll('[onerror]').length") == 0
    assert pg.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert not pg.errors, pg.errors


def test_rest_api(server, page):
    resp = page.request.get(server.url + "/sdapi/v1/loras")
    assert resp.ok
    items = resp.json()
    names = {i["name"] for i in items}
    assert {"demo_warm", "demo_cool"} <= names
    assert all({"name", "alias", "path", "metadata"} <= set(i) for i in items)
    assert page.request.post(server.url + "/sdapi/v1/refresh-loras").ok
    thumb = next(i for i in items if i["name"] == "demo_warm")
    t = page.request.get(server.url + "/lora_core/api/thumb", params={"path": thumb["path"]})
    assert t.ok and t.headers["content-type"].startswith("image/")
    # only previews of library entries are served: no reading arbitrary files
    assert page.request.get(server.url + "/lora_core/api/thumb", params={"path": "/etc/passwd"}).status == 404
    assert page.request.get(server.url + "/lora_core/static/..%2Fsetup.py").status == 404


def test_favorite_details_and_paste(page):
    pg = page
    _search(pg, "demo_cool")
    card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="demo_cool"]')
    card.locator(".lora-core-fav-btn").click()
    pg.locator('#lora_core_grid .lora-core-card-fav[data-lora-name="demo_cool"]').wait_for(timeout=90_000)
    pg.locator("#lora_core_search textarea, #lora_core_search input").first.fill("")
    pg.locator("#lora_core_favorites_only input[type=checkbox]").check()
    pg.wait_for_function("document.querySelectorAll('#lora_core_grid .lora-core-card').length === 1")
    assert "1–1 of 1" in pg.locator("#lora_core_page_label").inner_text()
    card.locator(".lora-core-fav-btn").click()  # un-favorite: the favorites-only grid empties
    pg.wait_for_function("document.querySelectorAll('#lora_core_grid .lora-core-card').length === 0")
    pg.locator("#lora_core_favorites_only input[type=checkbox]").uncheck()

    _open_tab(pg, "txt2img")
    pg.locator("#txt2img_paste_box textarea").fill(
        "a boat <lora:demo_green:0.5>\nNegative prompt: fog\nSteps: 9, Sampler: DDIM, CFG scale: 4, Seed: 77, Size: 64x64")
    pg.locator("#txt2img_paste").click()
    pg.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.startsWith('a boat')")
    assert pg.locator(PROMPT).input_value() == "a boat <lora:demo_green:0.5>"
    assert pg.locator("#txt2img_neg_prompt textarea").input_value() == "fog"
    assert pg.locator("#txt2img_seed input").first.input_value() == "77"
    assert pg.locator("#txt2img_steps input[type=number]").first.input_value() == "9"
    assert not pg.errors, pg.errors


def test_checkpoint_refresh_and_unloadable_checkpoint(page, server):
    pg = page
    (server.workdir / "models" / "Stable-diffusion" / "broken.safetensors").write_bytes(b"not a checkpoint")
    pg.locator("#lora_core_checkpoint_refresh").click()
    dropdown = pg.locator("#lora_core_checkpoint input").first
    dropdown.click()
    option = pg.get_by_role("option", name="broken.safetensors")
    option.click()
    status = pg.locator("#lora_core_checkpoint_status")
    pg.wait_for_function("document.querySelector('#lora_core_checkpoint_status').innerText.includes('broken')")
    assert "Could not load checkpoint broken.safetensors" in status.inner_text()
    # issue 14 #17: the status has its own full-width line under the picker and wraps, never clipped
    box = pg.evaluate("""() => { const s = document.querySelector('#lora_core_checkpoint_status');
        const a = s.getBoundingClientRect(), b = document.querySelector('#lora_core_checkpoint').getBoundingClientRect();
        return {top: a.top, below: b.bottom, width: a.width, pick: b.width, sw: s.scrollWidth, cw: s.clientWidth}; }""")
    assert box["top"] >= box["below"] - 1 and box["width"] >= box["pick"] and box["sw"] <= box["cw"] + 1, box
    # the demo model stays loaded, says so, and the picker shows it again
    assert "Demo model loaded" in pg.locator("#lora_core_banner").inner_text()
    pg.wait_for_function("document.querySelector('#lora_core_checkpoint input').value.startsWith('Demo model')")
    # the picker says where the model runs (the demo on this CPU: fp32)
    assert "Checkpoint (cpu, float32)" in pg.locator("#lora_core_checkpoint").inner_text()
    assert not pg.errors, pg.errors


def test_saved_stack_roundtrip_and_matched_modules(page):
    pg = page
    _open_tab(pg, "txt2img")
    pg.locator(PROMPT).fill("a hill, <lora:demo_warm:0.4>")
    _search(pg, "demo_warm")
    pg.locator("#lora_core_stack_name textarea, #lora_core_stack_name input").first.fill("warmth")
    pg.locator("#lora_core_stack_save").click()
    stack = pg.locator('#lora_core_stacks .lora-core-stack[data-stack-name="warmth"]')
    stack.wait_for(timeout=90_000)
    assert stack.locator(".lora-core-stack-insert").get_attribute("data-stack-tags") == "<lora:demo_warm:0.4>"
    _open_tab(pg, "txt2img")
    pg.locator(PROMPT).fill("a lake")
    _open_tab(pg, "LoRA")
    stack.locator(".lora-core-stack-insert").click()
    assert pg.locator(PROMPT).input_value() == "a lake, <lora:demo_warm:0.4>"
    # Details compute matched modules against the loaded (demo) checkpoint on demand.
    card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="demo_warm"]')
    card.locator(".lora-core-info-btn").click()
    pg.wait_for_function("(document.querySelector('#lora_core_details') || {}).innerText"
                         " && document.querySelector('#lora_core_details').innerText.includes('module(s) matched')",
                         timeout=90_000)
    assert ", 0 unmatched" in pg.locator("#lora_core_details").inner_text()
    stack.locator(".lora-core-stack-delete").click()
    stack.wait_for(state="detached", timeout=90_000)
    assert not pg.errors, pg.errors


_IMAGE_GEOMETRY = """() => [...document.querySelectorAll('#txt2img_gallery img')].map(img => {
  const r = img.getBoundingClientRect();
  let clipped = false;
  for (let e = img.parentElement; e; e = e.parentElement) {
    const cs = getComputedStyle(e);
    if (e.id === 'txt2img_gallery' || /hidden|scroll|auto|clip/.test(cs.overflowX + cs.overflowY)) {
      const a = e.getBoundingClientRect();
      if (r.top < a.top - 0.5 || r.bottom > a.bottom + 0.5 || r.left < a.left - 0.5 || r.right > a.right + 0.5) {
        clipped = true;
      }
    }
    if (e.id === 'txt2img_gallery') { break; }
  }
  const cs = getComputedStyle(img);
  return {clipped, fit: cs.objectFit, rendering: cs.imageRendering, w: r.width, h: r.height,
          nw: img.naturalWidth, nh: img.naturalHeight};
})"""


def test_example_prompt_draws_whole_crisp_images(page):
    """Issue 14 #3/#4: the placeholder is a prompt the demo can draw with a real LoRA tag; every image
    of every batch is shown whole (no box around it cuts it), small ones scaled up pixel-sharp."""
    pg = page
    _open_tab(pg, "txt2img")
    box = pg.locator(PROMPT)
    example = box.get_attribute("placeholder").split("   (")[0]
    assert "<lora:demo_stripes:1>" in example and "lcstripes" in example and "cat" not in example
    box.fill(example)
    _set_number(pg, "txt2img_seed", 7)
    _set_number(pg, "txt2img_steps", STEPS)
    for batch, width, height in ((1, 64, 64), (3, 64, 128), (5, 128, 64)):
        _set_number(pg, "txt2img_batch_count", batch)
        _set_number(pg, "txt2img_width", width)
        _set_number(pg, "txt2img_height", height)
        _generate(pg)
        lines = pg.locator("#txt2img_messages").inner_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{batch} image(s)"), lines  # no warning: the tag works
        assert "demo_stripes" in pg.locator("#txt2img_info textarea").input_value()
        pg.wait_for_function("n => { const i = [...document.querySelectorAll('#txt2img_gallery img')];"
                             " return i.length === n && i.every(x => x.complete && x.naturalWidth > 0); }", arg=batch)
        shown = pg.evaluate(_IMAGE_GEOMETRY)
        assert len(shown) == batch
        for img in shown:
            assert (img["nw"], img["nh"]) == (width, height)
            assert not img["clipped"], shown
            assert img["fit"] == "contain" and img["rendering"] == "pixelated", img
            assert max(img["w"], img["h"]) > max(width, height), img  # scaled up, not a thumbnail
    assert not pg.errors, pg.errors


def test_lora_tab_problems_search_layout_and_feedback(page, server):
    """Issue 14 #15/#16/#17 in the page: problems in the default view, phrase and path search, the
    layout fixes, dates in the details, the editor only with a card, and what a card click did."""
    pg = page
    broken = server.workdir / "models" / "Lora" / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    try:
        try:  # the first load of this server shows the start-up note; let it land before reloading
            pg.wait_for_function("((document.querySelector('#lora_core_checkpoint_status') || {}).innerText || '')"
                                 ".includes('Wrote')", timeout=15_000)
        except playwright_api.Error:
            pass  # an earlier test's page load showed it already
        pg.reload(wait_until="load")  # the start-up note "Wrote 6 demo LoRAs" is not repeated on every load
        pg.wait_for_function("window.__loraCoreLoaded === true")
        pg.wait_for_timeout(1000)
        assert "Wrote" not in pg.locator("#lora_core_checkpoint_status").inner_text()
        _open_tab(pg, "LoRA")
        assert not pg.locator("#lora_core_edit_description").is_visible(), "editor before any card"
        pg.locator("#lora_core_refresh").click()
        error_card = pg.locator("#lora_core_grid .lora-core-card-error").first
        error_card.wait_for(timeout=90_000)
        assert not pg.locator("#lora_core_show_all input[type=checkbox]").is_checked()
        assert error_card.get_attribute("data-lora-key").endswith("broken.safetensors")
        assert error_card.locator(".lora-core-error-text").inner_text().strip()
        assert pg.locator('#lora_core_grid .lora-core-card[data-lora-name="demo_warm"]').count() == 1

        geo = pg.evaluate("""() => { const r = s => document.querySelector(s).getBoundingClientRect();
            const mid = b => (b.top + b.bottom) / 2;
            return {gap: r('#lora_core_sort').top - r('#lora_core_search').bottom,
                    prev: mid(r('#lora_core_prev')), page: mid(r('#lora_core_page input')),
                    next: mid(r('#lora_core_next')), label: mid(r('#lora_core_page_label .lora-core-page-label'))}; }""")
        assert geo["gap"] < 40, geo  # no empty band under the search row
        assert max(geo["prev"], geo["page"], geo["next"], geo["label"]) - min(
            geo["prev"], geo["page"], geo["next"], geo["label"]) < 3, geo

        demo_names = ["demo_checker", "demo_cool", "demo_green", "demo_lcshape", "demo_stripes", "demo_warm"]
        shown = "cs => cs.map(c => c.getAttribute('data-lora-name'))"
        _search(pg, "models/Lora/demo")
        assert pg.eval_on_selector_all("#lora_core_grid .lora-core-card", shown) == demo_names
        _search(pg, '"on the left"')  # a phrase of the demo LoRAs' training captions
        found = pg.eval_on_selector_all("#lora_core_grid .lora-core-card", shown)
        assert "demo_lcshape" in found, found
        field = pg.locator("#lora_core_search textarea, #lora_core_search input").first
        field.fill('"left the on"')  # the same words, not as a phrase: nothing
        field.press("Enter")
        pg.wait_for_function("t => { const p = document.querySelector('#lora_core_grid .lora-core-page');"
                             " return p && p.getAttribute('data-query') === t; }", arg='"left the on"', timeout=90_000)
        assert pg.eval_on_selector_all("#lora_core_grid .lora-core-card", shown) == []
        _search(pg, "on the left")
        assert "demo_lcshape" in pg.eval_on_selector_all("#lora_core_grid .lora-core-card", shown)

        _search(pg, "demo_stripes")
        card = pg.locator('#lora_core_grid .lora-core-card[data-lora-name="demo_stripes"]')
        card.locator(".lora-core-info-btn").click()
        pg.locator("#lora_core_details .lora-core-details-title", has_text="demo_stripes").wait_for(timeout=90_000)
        pg.locator("#lora_core_edit_description").wait_for(state="visible", timeout=30_000)
        started = pg.locator("#lora_core_details tr", has_text="training_started_at").first.inner_text()
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", started) and "17957" not in started, started

        card.click()
        toast = pg.locator(".lora-core-toast")
        toast.wait_for(state="visible")
        assert toast.inner_text() == "Added <lora:demo_stripes:1>, lcstripes to the txt2img prompt."
        card.click()
        assert toast.inner_text() == "Removed <lora:demo_stripes> from the txt2img prompt."

        pg.locator("#lora_core_search textarea, #lora_core_search input").first.fill("")
        pg.locator("#lora_core_family input").first.click()
        pg.get_by_role("option", name="(problems)").click()
        pg.wait_for_function("() => { const c = document.querySelectorAll('#lora_core_grid .lora-core-card');"
                             " return c.length === 1 && c[0].classList.contains('lora-core-card-error'); }",
                             timeout=90_000)
        assert not pg.errors, pg.errors
    finally:
        broken.unlink()
        assert page.request.post(server.url + "/sdapi/v1/refresh-loras").ok
