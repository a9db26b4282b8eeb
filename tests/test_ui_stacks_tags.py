"""Saved stacks, user tags, matched-module counts and the folder tree in the LoRA tab (no browser)."""
from __future__ import annotations

import html
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lora_core.ui.api import register_routes
from lora_core.library import Library
from lora_core.ui.controller import (ALL_FOLDERS, LoraTabController, Query, TabSettings, folder_label,
                                     folder_value)
from tests.ui.library_fixture import XSS, write_lora


def _lib(tmp_path):
    root = tmp_path / "Lora"
    a = write_lora(root / "style" / "anime" / "deep" / "a.safetensors")
    b = write_lora(root / "style" / "b.safetensors")
    c = write_lora(root / "chars" / "c.safetensors")
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    return lib, a, b, c


def _keys(page_html):
    return sorted(html.unescape(k).rsplit("/", 1)[-1] for k in re.findall(r'data-lora-key="([^"]*)"', page_html))


def test_stacks_save_list_insert_delete(tmp_path):
    lib, *_ = _lib(tmp_path)
    ctl = LoraTabController(lambda: lib, TabSettings())
    assert "No saved stacks" in ctl.stacks_html()
    msg = ctl.save_stack("my mix", "a cat, <lora:a:0.8>, <lora:b:1.2:0.5> red")
    assert "2 LoRA(s)" in msg and "text-encoder weight for b" in msg
    assert lib.stacks() == {"my mix": [("a", 0.8), ("b", 1.2)]}
    page = ctl.stacks_html()
    assert html.unescape(re.search(r'data-stack-tags="([^"]*)"', page).group(1)) == "<lora:a:0.8>, <lora:b:1.2>"
    assert "no <lora" in ctl.save_stack("empty", "just words")
    assert "name" in ctl.save_stack("  ", "<lora:a:1>")
    ctl.save_stack(XSS, "<lora:a:1>")
    assert "<script" not in ctl.stacks_html()
    assert "Deleted" in ctl.delete_stack("my mix") and "my mix" not in lib.stacks()
    assert "No stack" in ctl.delete_stack("my mix")


def test_user_tags_add_remove_search_and_escape(tmp_path):
    lib, a, b, c = _lib(tmp_path)
    ctl = LoraTabController(lambda: lib, TabSettings())
    assert ctl.add_user_tags(str(a), "favourite look, " + XSS) == "Tags saved."
    ctl.add_user_tags(str(c), "favourite look")
    found = ctl.query(Query(search="favourite", show_all_families=True))
    assert _keys(found.html) == ["a.safetensors", "c.safetensors"]
    details, fields = ctl.details(str(a))
    assert "favourite look" in fields["user tags"]
    assert 'class="lora-core-user-tag-remove" data-tag="favourite look"' in details
    assert "<script" not in details and "<script" not in found.html
    assert ctl.remove_user_tag(str(a), "favourite look") == "Tags saved."
    assert _keys(ctl.query(Query(search="favourite", show_all_families=True)).html) == ["c.safetensors"]
    assert "favourite look" not in ctl.details(str(a))[1]["user tags"]


def test_match_counts_only_when_details_open(tmp_path):
    lib, a, b, _ = _lib(tmp_path)
    calls = []

    def counts(path):
        calls.append(path)
        return (7, 2) if path == str(a) else None

    ctl = LoraTabController(lambda: lib, TabSettings(match_counts=counts))
    ctl.query(Query(show_all_families=True))
    assert calls == [], "cards never compute matches"
    assert "7 module(s) matched, 2 unmatched" in ctl.details(str(a))[0]
    assert "no checkpoint loaded" in ctl.details(str(b))[0]

    def broken(path):
        raise ValueError("bad file")

    assert "cannot check: bad file" in LoraTabController(lambda: lib, TabSettings(match_counts=broken)).details(str(a))[0]
    assert "loaded checkpoint" not in LoraTabController(lambda: lib, TabSettings()).details(str(a))[0]


def test_folder_choices_show_nesting_and_filter(tmp_path):
    lib, *_ = _lib(tmp_path)
    ctl = LoraTabController(lambda: lib, TabSettings())
    choices = ctl.folders()
    assert choices[0] == ALL_FOLDERS
    assert [folder_value(c) for c in choices[1:]] == ["chars", "style", "style/anime", "style/anime/deep"]
    deep = choices[-1]
    assert deep.startswith("\u2003\u2003└ ") and choices[2] == "style"
    assert _keys(ctl.query(Query(folder=deep, show_all_families=True)).html) == ["a.safetensors"]
    assert _keys(ctl.query(Query(folder=folder_label("style"), show_all_families=True)).html) == [
        "a.safetensors", "b.safetensors"]
    assert folder_value("style/anime") == "style/anime"


def test_stack_and_civitai_routes(tmp_path):
    from lora_core.library.civitai_sync import CivitaiSettings, CivitaiSync

    lib, *_ = _lib(tmp_path)
    lib.save_stack("s", [("a", 0.5)])
    sync = CivitaiSync(lambda: lib, lambda: CivitaiSettings(enabled=False))
    app = FastAPI()
    register_routes(app, lambda: lib, civitai=sync)
    client = TestClient(app)
    assert client.get("/lora_core/api/stacks").json() == [
        {"name": "s", "items": [{"name": "a", "weight": 0.5}], "tags": "<lora:a:0.5>"}]
    st = client.get("/lora_core/api/civitai/status").json()
    assert st["running"] is False and st["phase"] == "idle"
    assert client.post("/lora_core/api/civitai/fetch_all").json()["accepted"] is False
    assert client.post("/lora_core/api/civitai/fetch", params={"path": "/nope.safetensors"}).status_code == 404


def test_tab_events_wire_stacks_tags_and_civitai(tmp_path):
    """The gradio tab's own handlers (installed gradio): bridge actions and buttons give one value per output."""
    import json as _json

    __import__("pytest").importorskip("gradio")
    from lora_core.ui import build_lora_tab

    lib, a, *_ = _lib(tmp_path)
    tab = build_lora_tab(lambda: lib, TabSettings(match_counts=lambda p: (3, 0)))
    fns = {f.fn.__name__: f for f in tab.fns.values()}
    query = ["", "name", ALL_FOLDERS, "(loaded checkpoint)", True, False, 1]

    def call(name, *args):
        f = fns[name]
        out = f.fn(*args)
        assert len(out) == len(f.outputs), name
        return out

    out = call("on_action", _json.dumps({"action": "stack_save", "key": "duo", "prompt": "<lora:a:0.7>, <lora:b:1>"}),
               *query)
    assert "Saved stack" in out[-2] and "duo" in out[-1] and lib.stacks()["duo"] == [("a", 0.7), ("b", 1.0)]
    out = call("on_action", _json.dumps({"action": "details", "key": str(a)}), *query)
    assert "3 module(s) matched" in out[3]
    out = call("on_save", str(a), "", "", 1.0, "", "", "red, blue", *query)
    assert "Saved." in out[-1] and lib.entry(str(a)).user_tags == ("blue", "red")
    out = call("on_action", _json.dumps({"action": "tag_remove", "key": str(a), "tag": "red"}), *query)
    assert lib.entry(str(a)).user_tags == ("blue",) and out[9] == "blue"
    out = call("on_civitai_one", str(a), *query)
    assert "not set up" in out[-1]
    out = call("on_action", _json.dumps({"action": "stack_delete", "key": "duo"}), *query)
    assert "Deleted" in out[-2] and "duo" not in lib.stacks()
    assert "not set up" in fns["on_civitai_all"].fn()
