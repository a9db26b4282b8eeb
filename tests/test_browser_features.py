"""lora_core.js with the HTML the tab renders (render.py), in chromium without gradio: NSFW blur
reveal, saved-stack insert/save/delete, user-tag removal and tag search through the bridge."""
from __future__ import annotations

import json

import pytest

from lora_core.ui import render
from lora_core.ui.entry_view import EntryView
from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, wait_for_chromium
from tests.ui.library_fixture import XSS

playwright_api = pytest.importorskip("playwright.sync_api")


def _page_html() -> str:
    card = render.render_card(EntryView(key="/l/nsfw.safetensors", name="nsfw", alias="nsfw", tag_name="nsfw",
                                        preview_url="/x.png", blurred=True, nsfw_level="X", user_tags=["mood"]))
    details = render.render_details(EntryView(key="/l/nsfw.safetensors", name="nsfw", alias="nsfw", tag_name="nsfw",
                                              user_tags=["mood", XSS]))
    stacks = render.render_stacks({"mix": [("a", 0.8), ("b", 1.0)], XSS: [("c", 0.5)]})
    return f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<div id="txt2img_prompt"><textarea>cat, <lora:a:0.3></textarea></div>
<div id="lora_core_search"><textarea></textarea></div>
<div id="lora_core_search_btn"><button onclick="window.__searches++">s</button></div>
<div id="lora_core_grid">{card}</div><div id="lora_core_details">{details}</div>
<div id="lora_core_stack_name"><textarea>my stack</textarea></div>
<div id="lora_core_stack_save"><button onclick="window.__saveReachedGradio++">Save</button></div>
<div id="lora_core_stacks">{stacks}</div>
<div id="lora_core_action"><textarea></textarea></div>
<div id="lora_core_action_btn"><button onclick="window.__actions.push(document.querySelector('#lora_core_action textarea').value)">a</button></div>
<script>window.__actions = []; window.__searches = 0; window.__saveReachedGradio = 0;</script>
</body></html>"""


@pytest.fixture(scope="module")
def page():
    assert wait_for_chromium(), f"{CHROMIUM} is not installed (apt-get install chromium)"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page()
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.route("http://lora.test/", lambda route: route.fulfill(body=_page_html(), content_type="text/html"))
        pg.route("http://lora.test/x.png", lambda route: route.fulfill(status=404, body=""))
        pg.goto("http://lora.test/")
        pg.add_style_tag(path=str(ROOT / "style.css"))
        pg.add_script_tag(path=str(ROOT / "javascript" / "lora_core.js"))
        yield pg
        browser.close()


def _prompt(pg):
    return pg.eval_on_selector("#txt2img_prompt textarea", "t => t.value")


def _toast(pg):
    pg.wait_for_selector(".lora-core-toast.lora-core-toast-shown")
    return pg.eval_on_selector(".lora-core-toast", "t => t.textContent")


def _last_action(pg):
    pg.wait_for_function("window.__actions.length > 0")
    return json.loads(pg.evaluate("window.__actions.pop()"))


def test_blur_reveal_stacks_tags(page):
    pg = page
    thumb = pg.locator(".lora-core-thumb")
    assert "lora-core-blur" in thumb.get_attribute("class")
    assert pg.eval_on_selector(".lora-core-thumb-img", "i => getComputedStyle(i).filter").startswith("blur(")
    thumb.click()
    assert "lora-core-blur" not in thumb.get_attribute("class"), "first click reveals"
    assert _prompt(pg) == "cat, <lora:a:0.3>", "revealing does not insert the tag"
    assert pg.eval_on_selector(".lora-core-thumb-img", "i => getComputedStyle(i).filter") == "none"
    thumb.click()
    assert _prompt(pg) == "cat, <lora:a:0.3>, <lora:nsfw:1>"
    # Issue 14 #17: the click says what it did to which prompt box (often one on another tab).
    assert _toast(pg) == "Added <lora:nsfw:1> to the txt2img prompt."
    # Insert a stack: the LoRA already named keeps its weight, the others are added once.
    pg.locator('.lora-core-stack[data-stack-name="mix"] .lora-core-stack-insert').click()
    assert _prompt(pg) == "cat, <lora:a:0.3>, <lora:nsfw:1>, <lora:b:1>"
    assert _toast(pg) == "Added <lora:b:1> to the txt2img prompt."
    pg.locator('.lora-core-stack[data-stack-name="mix"] .lora-core-stack-insert').click()
    assert _prompt(pg).count("<lora:b:") == 1
    assert _toast(pg) == "The txt2img prompt already has these LoRAs."
    # the stack's buttons stay on one line beside its text, the same size
    boxes = pg.eval_on_selector_all('.lora-core-stack[data-stack-name="mix"] button',
                                    "bs => bs.map(b => { const r = b.getBoundingClientRect(); return [r.top, r.height]; })")
    assert len(boxes) == 2 and abs(boxes[0][0] - boxes[1][0]) < 1 and abs(boxes[0][1] - boxes[1][1]) < 1, boxes
    # Save: the JS reads the prompt and the name and goes through the bridge, not the button's own handler.
    pg.locator("#lora_core_stack_save button").click()
    msg = _last_action(pg)
    assert (msg["action"], msg["key"], msg["prompt"]) == ("stack_save", "my stack", _prompt(pg))
    assert pg.evaluate("window.__saveReachedGradio") == 0
    pg.locator('.lora-core-stack[data-stack-name="mix"] .lora-core-stack-delete').click()
    assert _last_action(pg)["action"] == "stack_delete"
    pg.locator('.lora-core-user-tag-remove[data-tag="mood"]').click()
    msg = _last_action(pg)
    assert (msg["action"], msg["key"], msg["tag"]) == ("tag_remove", "/l/nsfw.safetensors", "mood")
    pg.locator(".lora-core-card .lora-core-user-tag").click()
    pg.wait_for_function("window.__searches > 0")
    assert pg.eval_on_selector("#lora_core_search textarea", "t => t.value") == "mood"
    assert pg.evaluate("window.__pwned") is None and not pg.errors
