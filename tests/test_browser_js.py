"""javascript/lora_core.js on its own, in chromium, on a minimal page served through Playwright routes
(no gradio): prompt editing rules, event dispatch and the `<lora:` autocomplete (with hostile names)."""
from __future__ import annotations

import json

import pytest

from tests.ui.browser import ROOT, launched_chromium
from tests.ui.library_fixture import XSS

playwright_api = pytest.importorskip("playwright.sync_api")

PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<div id="txt2img_prompt"><textarea></textarea></div>
<div id="img2img_prompt"><textarea></textarea></div>
<div id="lora_core_grid">
  <div class="lora-core-card" data-lora-key="/l/a+b(c).safetensors" data-lora-name="a+b(c)"
       data-lora-tag="&lt;lora:a+b(c):0.7&gt;" data-lora-triggers="shiny, gold"><span class="n">a</span></div>
  <div class="lora-core-card lora-core-card-error" data-lora-key="/l/bad.safetensors" data-lora-name="bad">bad</div>
</div>
<script>window.__inputs = 0; document.addEventListener('input', () => window.__inputs++, true);</script>
</body></html>"""

SUGGEST = {"items": [
    {"name": "hero", "alias": "HeroStyle", "tag_name": "HeroStyle", "family": "sd1", "preferred_weight": 0.6,
     "thumbnail": None},
    {"name": "evil", "alias": "evil" + XSS, "tag_name": "evil", "family": XSS, "preferred_weight": 0,
     "thumbnail": "x\" onerror=\"window.__pwned=3"},
]}


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as b:
        yield b


@pytest.fixture()
def page(browser):
    pg = browser.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.route("http://lora.test/", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
    pg.route("http://lora.test/lora_core/api/suggest*",
             lambda route: route.fulfill(body=json.dumps(SUGGEST), content_type="application/json"))
    pg.route("http://lora.test/x*", lambda route: route.fulfill(status=404, body=""))
    pg.goto("http://lora.test/")
    pg.add_script_tag(path=str(ROOT / "javascript" / "lora_core.js"))
    yield pg
    pg.close()


@pytest.mark.parametrize("before, name, tag, triggers, after", [
    ("", "x", "<lora:x:1>", "", "<lora:x:1>"),
    ("cat", "x", "<lora:x:1>", "t1, t2", "cat, <lora:x:1>, t1, t2"),
    ("cat, ", "x", "<lora:x:1>", "", "cat, <lora:x:1>"),
    # removal: any weight the user typed, any case, trigger words too, no dangling commas
    ("cat, <lora:x:0.35>, t1, t2, dog", "x", "<lora:x:1>", "t1, t2", "cat, dog"),
    ("<LORA:x:1:0.5>, cat", "x", "<lora:x:1>", "", "cat"),
    ("cat <lyco:x>", "x", "<lora:x:1>", "", "cat"),
    # another LoRA whose name starts the same is left alone
    ("cat, <lora:xy:1>", "x", "<lora:x:1>", "", "cat, <lora:xy:1>, <lora:x:1>"),
    ("<lora:a+b(c):1>", "a+b(c)", "<lora:a+b(c):1>", "", ""),
])
def test_toggle_rules(page, before, name, tag, triggers, after):
    got = page.evaluate("([t, n, g, w]) => window.loraCoreToggleLora(t, n, g, w)", [before, name, tag, triggers])
    assert got == after


def test_card_click_edits_focused_prompt_and_fires_input(page):
    ta = page.locator("#img2img_prompt textarea")
    ta.fill("dog")
    ta.focus()
    start = page.evaluate("window.__inputs")
    page.locator(".lora-core-card .n").click()  # a click on a child of the card counts
    assert ta.input_value() == "dog, <lora:a+b(c):0.7>, shiny, gold"
    assert page.evaluate("window.__inputs") > start, "gradio listens for input events"
    assert page.locator("#txt2img_prompt textarea").input_value() == ""
    page.locator(".lora-core-card-error").click()  # error entries carry no tag: nothing happens
    assert ta.input_value() == "dog, <lora:a+b(c):0.7>, shiny, gold"
    page.locator(".lora-core-card .n").click()
    assert ta.input_value() == "dog"
    assert not page.errors, page.errors


def test_without_focus_the_first_visible_prompt_is_used(page):
    page.locator(".lora-core-card .n").click()
    assert page.locator("#txt2img_prompt textarea").input_value() == "<lora:a+b(c):0.7>, shiny, gold"


def test_autocomplete_keyboard_and_hostile_names(page):
    ta = page.locator("#txt2img_prompt textarea")
    ta.click()
    ta.press_sequentially("a cat <lora:e", delay=20)
    items = page.locator(".lora-core-suggest-item")
    items.nth(1).wait_for()
    assert items.count() == 2
    assert XSS in items.nth(1).inner_text(), "hostile alias shown as text"
    ta.press("ArrowDown")
    ta.press("Enter")
    assert ta.input_value() == "a cat <lora:evil:1>", "weight 0 means unset: 1"
    assert page.locator(".lora-core-suggest").count() == 0
    ta.press_sequentially(", <lora:H", delay=20)
    items.first.wait_for()
    items.first.click()
    assert ta.input_value() == "a cat <lora:evil:1>, <lora:HeroStyle:0.6>"
    ta.press_sequentially(" <lora:", delay=20)
    items.first.wait_for()
    ta.press("Escape")
    assert page.locator(".lora-core-suggest").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    assert not page.errors, page.errors


@pytest.mark.parametrize("page_url, root, served_at", [
    # A1111 --subpath: the page itself lives under the prefix
    ("http://lora.test/sub/", None, "http://lora.test/sub/lora_core/api/suggest"),
    # gradio says where the app's root is (no trailing slash); the page URL says less
    ("http://lora.test/", "http://lora.test/proxy/app", "http://lora.test/proxy/app/lora_core/api/suggest"),
])
def test_suggestions_are_fetched_under_the_app_root(browser, page_url, root, served_at):
    pg = browser.new_page()
    asked = []

    def answer(route):
        asked.append(route.request.url.split("?")[0])
        route.fulfill(body=json.dumps(SUGGEST), content_type="application/json")

    try:
        pg.route("http://lora.test/**/lora_core/api/suggest*", answer)
        pg.route("http://lora.test/lora_core/api/suggest*", answer)
        pg.route(page_url, lambda route: route.fulfill(body=PAGE, content_type="text/html"))
        pg.goto(page_url)
        if root:
            pg.evaluate("r => { window.gradio_config = {root: r}; }", root)
        pg.add_script_tag(path=str(ROOT / "javascript" / "lora_core.js"))
        ta = pg.locator("#txt2img_prompt textarea")
        ta.click()
        ta.press_sequentially("<lora:H", delay=20)
        pg.locator(".lora-core-suggest-item").first.wait_for()
        assert asked and set(asked) == {served_at}
    finally:
        pg.close()
