"""The LoRA tab's logic and HTML against a real Library on real files (no browser)."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lora_core.library import Library
from lora_core.ui import render
from lora_core.ui.controller import ALL_FOLDERS, CHECKPOINT_FAMILY, LoraTabController, Query, TabSettings
from lora_core.ui.entry_view import EntryView, format_weight, parse_training_tags
from tests.ui.library_fixture import (
    XSS,
    XSS_IMG,
    XSS_SCRIPT,
    hostile_lora,
    plain_library,
    write_lora,
    write_preview,
    write_user_metadata,
)

ROOT = Path(__file__).resolve().parents[1]


def _library(tmp_path, build):
    root = tmp_path / "Lora"
    build(root)
    lib = Library([root], data_dir=str(tmp_path / "data"))
    lib.scan()
    return lib


def _controller(lib, family=None, page_size=48):
    return LoraTabController(lambda: lib, TabSettings(page_size=page_size, current_family=lambda: family))


def _cards(html_text):
    return re.findall(r'<div class="lora-core-card(?: lora-core-card-(?:error|fav))*" ', html_text)


def _attr(html_text, name):
    return [html.unescape(v) for v in re.findall(name + r'="([^"]*)"', html_text)]


def test_paging_is_server_side_and_clamped(tmp_path):
    lib = _library(tmp_path, lambda r: plain_library(r, 100))
    ctl = _controller(lib, page_size=48)
    first = ctl.query(Query(show_all_families=True))
    assert first.total == 102 and len(_cards(first.html)) == 48
    third = ctl.query(Query(show_all_families=True, page=3))
    assert third.page == 3 and len(_cards(third.html)) == 102 - 96
    beyond = ctl.query(Query(show_all_families=True, page=40))
    assert beyond.page == 3, "a page past the end shows the last page"
    assert "97–102 of 102" in beyond.label
    names_p1 = set(_attr(first.html, "data-lora-key"))
    names_p2 = set(_attr(ctl.query(Query(show_all_families=True, page=2)).html, "data-lora-key"))
    assert names_p1.isdisjoint(names_p2)


def test_family_defaults_to_checkpoint_and_show_all(tmp_path):
    lib = _library(tmp_path, lambda r: plain_library(r, 4))
    sdxl = _controller(lib, family="sdxl").query(Query())
    assert sdxl.total == 2 and all("/xl/" in k for k in _attr(sdxl.html, "data-lora-key"))
    assert "sdxl LoRAs" in sdxl.html
    everything = _controller(lib, family="sdxl").query(Query(show_all_families=True))
    assert everything.total == 6
    picked = _controller(lib, family="sdxl").query(Query(family="sd1"))
    assert picked.total == 4
    no_model = _controller(lib, family=None).query(Query(family=CHECKPOINT_FAMILY))
    assert no_model.total == 6, "no checkpoint family known: nothing is filtered"


def test_search_sort_and_folder(tmp_path):
    lib = _library(tmp_path, lambda r: plain_library(r, 12))
    ctl = _controller(lib)
    by_tag = ctl.query(Query(search="tag7", show_all_families=True))
    assert [Path(k).stem for k in _attr(by_tag.html, "data-lora-key")] == ["lora_0007"]
    by_alias = ctl.query(Query(search="alias_0003", show_all_families=True))
    assert by_alias.total == 1
    folder = ctl.query(Query(folder="style", show_all_families=True))
    assert folder.total == 6 and all("/style/" in k for k in _attr(folder.html, "data-lora-key"))
    assert ctl.folders()[0] == ALL_FOLDERS and {"chars", "style", "xl"} <= set(ctl.folders())
    big = tmp_path / "Lora" / "chars" / "lora_0000.safetensors"
    write_lora(big, rank=64, metadata={"ss_output_name": "alias_0000"})
    lib.scan()
    by_size = ctl.query(Query(sort="size", show_all_families=True))
    assert Path(_attr(by_size.html, "data-lora-key")[0]).stem == "lora_0000"


def test_card_carries_tag_weight_triggers_and_thumbnail(tmp_path):
    def build(root):
        p = write_lora(root / "hero.safetensors", metadata={"ss_output_name": "HeroStyle"})
        write_user_metadata(p, {"activation text": "hero pose, red cape", "preferred weight": 0.65})
        write_preview(p)

    lib = _library(tmp_path, build)
    out = _controller(lib).query(Query())
    assert _attr(out.html, "data-lora-tag") == ["<lora:HeroStyle:0.65>"]
    assert _attr(out.html, "data-lora-triggers") == ["hero pose, red cape"]
    src = _attr(out.html, "src")
    assert len(src) == 1 and src[0].startswith("/lora_core/api/thumb?path=")
    assert "sd1" in out.html


def test_ambiguous_names_flagged_and_tag_picks_the_file(tmp_path):
    def build(root):
        write_lora(root / "a" / "same.safetensors")
        write_lora(root / "b" / "same.safetensors")
        write_lora(root / "unique.safetensors")

    lib = _library(tmp_path, build)
    out = _controller(lib).query(Query())
    cards = re.findall(r"<div class=\"lora-core-card.*?</div></div></div>", out.html)
    flagged = [c for c in cards if "lora-core-ambiguous" in c]
    assert len(flagged) == 2
    tags = sorted(_attr(" ".join(flagged), "data-lora-tag"))
    assert tags == ["<lora:a/same:1>", "<lora:b/same:1>"]
    for tag in tags:  # each tag resolves to its own file through the library's resolver
        name = tag[len("<lora:"):-len(":1>")]
        assert lib.find(name).folder == name.split("/")[0]
    assert _attr(out.html, "data-lora-tag").count("<lora:unique:1>") == 1


def test_error_entries_show_reason_and_have_no_tag(tmp_path):
    def build(root):
        root.mkdir(parents=True)
        (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        write_lora(root / "fine.safetensors")

    lib = _library(tmp_path, build)
    out = _controller(lib).query(Query(show_all_families=True))
    broken = re.search(r'<div class="lora-core-card lora-core-card-error".*?lora-core-error-text">(.*?)</div>', out.html)
    assert broken, out.html
    assert broken.group(1).strip()
    assert _attr(out.html, "data-lora-tag") == ["<lora:fine:1>"]


def test_favorites_toggle_and_filter(tmp_path):
    lib = _library(tmp_path, lambda r: plain_library(r, 3))
    ctl = _controller(lib)
    key = str(tmp_path / "Lora" / "style" / "lora_0001.safetensors")
    assert ctl.toggle_favorite(key) is True
    favs = ctl.query(Query(favorites_only=True, show_all_families=True))
    assert _attr(favs.html, "data-lora-key") == [key] and "lora-core-card-fav" in favs.html
    assert ctl.toggle_favorite(key) is False
    assert ctl.query(Query(favorites_only=True, show_all_families=True)).total == 0


def test_details_and_user_metadata_editor_writes_sidecar(tmp_path):
    def build(root):
        write_lora(root / "x.safetensors", metadata={
            "ss_output_name": "xx", "ss_network_dim": "2",
            "ss_tag_frequency": json.dumps({"a": {"blue sky": 7, "tree": 2}, "b": {"blue sky": 1}}),
        })

    lib = _library(tmp_path, build)
    ctl = _controller(lib)
    key = str(tmp_path / "Lora" / "x.safetensors")
    details, fields = ctl.details(key)
    assert 'data-tag="blue sky"' in details and "ss_network_dim" in details
    assert fields["activation text"] == "" and fields["preferred weight"] == 1.0
    msg = ctl.save_user_metadata(key, {"description": "d", "activation text": "blue sky", "preferred weight": 0.8,
                                       "negative text": "", "notes": "n"})
    assert msg == "Saved."
    sidecar = json.loads((tmp_path / "Lora" / "x.json").read_text())
    assert sidecar["activation text"] == "blue sky" and sidecar["preferred weight"] == 0.8
    assert sidecar["notes"] == "n"
    out = ctl.query(Query())
    assert _attr(out.html, "data-lora-tag") == ["<lora:xx:0.8>"]
    assert _attr(out.html, "data-lora-triggers") == ["blue sky"]
    assert "must be a number" in ctl.save_user_metadata(key, {"preferred weight": "heavy"})


def test_details_of_missing_entry_is_a_message(tmp_path):
    lib = _library(tmp_path, lambda r: plain_library(r, 1))
    details, fields = _controller(lib).details(str(tmp_path / "Lora" / "gone.safetensors"))
    assert "no longer" in details and fields["notes"] == ""


def test_hostile_metadata_is_escaped_everywhere(tmp_path):
    lib = _library(tmp_path, lambda r: hostile_lora(r))
    ctl = _controller(lib)
    out = ctl.query(Query(show_all_families=True))
    assert out.total == 1
    key = _attr(out.html, "data-lora-key")[0]
    details, _ = ctl.details(key)
    for page in (out.html, details):
        assert "<script" not in page.lower()
        assert "<img src=x" not in page.lower()
        assert "onerror=\"window" not in page
    assert html.escape(XSS_SCRIPT) in details  # shown, as text
    assert html.escape(XSS_IMG) in details
    # the tag and trigger attributes round-trip to the literal text (for JS to insert as text)
    assert "trigger" + XSS in _attr(out.html, "data-lora-triggers")[0]


def test_render_escapes_every_field():
    from lora_core.ui.entry_view import EntryView

    v = EntryView(key=XSS, name=XSS, alias=XSS, tag_name=XSS, folder=XSS, family=XSS, algorithm=XSS,
                  triggers=XSS, error=XSS, ambiguous=True, training_tags=[(XSS, 1)], metadata={XSS: XSS},
                  summary={XSS: XSS}, hashes={XSS: XSS}, civitai={XSS: XSS}, preview_url="x\" onerror=\"a")
    for page in (render.render_card(v), render.render_details(v), render.render_grid([v], 1, 1, 10, XSS)):
        assert "<script" not in page and "<img src=x" not in page and 'onerror="a' not in page


def test_small_helpers():
    assert format_weight(1.0) == "1" and format_weight(0.75) == "0.75" and format_weight(float("nan")) == "1"
    assert parse_training_tags('{"a": {"x": 2, "y": 5}, "b": {"x": 4}}') == [("x", 6), ("y", 5)]
    assert parse_training_tags("not json") == [] and parse_training_tags('{"a": [1]}') == []
    assert render.page_label(0, 1, 48) == "0 LoRAs"
    assert render.css_token("SDXL 1.0<") == "sdxl-1-0"


def test_tab_builds_under_installed_gradio(tmp_path):
    gr = pytest.importorskip("gradio")
    from lora_core.ui import build_lora_tab

    lib = _library(tmp_path, lambda r: plain_library(r, 3))
    tab = build_lora_tab(lambda: lib, TabSettings(current_family=lambda: "sd1"))
    assert isinstance(tab, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in tab.blocks.values()}
    assert {"lora_core_grid", "lora_core_action", "lora_core_action_btn", "lora_core_search"} <= ids


G3 = ROOT / ".venv-g3" / "bin" / "python"


@pytest.mark.skipif(not G3.exists(), reason="needs the gradio 3.41.2 venv .venv-g3 (created by .ci/install)")
def test_tab_builds_under_gradio_3_41(tmp_path):
    """A1111 runs gradio 3.41.2 without torch in this check: build the tab there with a fake library."""
    code = r"""
import sys, gradio as gr
from types import SimpleNamespace as NS
from lora_core.ui import build_lora_tab, TabSettings
assert gr.__version__ == "3.41.2", gr.__version__
class Lib:
    def search(self, q, page=0, page_size=50, sort="name", family=None, folder=None, favorites_only=False):
        e = NS(path="/l/a.safetensors", name="a", alias="<b>", folder="", family="sd1", size=1, mtime=0,
               error=None, preview=None, summary={}, user_metadata={}, civitai=None)
        return NS(total=1, items=[e])
    def folders(self): return [("", 1), ("sub", 1)]
tab = build_lora_tab(lambda: Lib(), TabSettings())
assert isinstance(tab, gr.Blocks)
html = [b.value for b in tab.blocks.values() if getattr(b, "elem_id", None) == "lora_core_grid"][0]
assert "&lt;b&gt;" in html and "<b>" not in html
print("torch" in sys.modules)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([str(G3), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("False"), "the tab pulled in torch"


def test_problem_files_show_in_the_default_view_with_their_message(tmp_path):
    """Issue 14 #15: a broken file is not hidden by the checkpoint-family filter."""
    from lora_core.ui.controller import PROBLEMS

    def build(root):
        root.mkdir(parents=True)
        (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        write_lora(root / "fine.safetensors")
        write_lora(root / "big.safetensors", family="sdxl")

    lib = _library(tmp_path, build)
    out = _controller(lib, family="sd1").query(Query())
    keys = [os.path.basename(k) for k in _attr(out.html, "data-lora-key")]
    assert keys == ["broken.safetensors", "fine.safetensors"], keys
    assert re.search(r'lora-core-card-error.*?lora-core-error-text">[^<]+</div>', out.html)
    assert "files with problems" in out.html
    only = _controller(lib, family="sd1").query(Query(family=PROBLEMS))
    assert [os.path.basename(k) for k in _attr(only.html, "data-lora-key")] == ["broken.safetensors"]
    assert _controller(lib, family="sd1").query(Query(family=PROBLEMS, show_all_families=True)).total == 3
    assert _controller(lib, family="sd1").query(Query(search="fine")).total == 1


def test_details_show_unix_times_as_dates():
    """Issue 14 #17: training_started_at 1795715988.7 reads as a date (the raw value in the title)."""
    import datetime

    view = EntryView(key="/l/a.safetensors", name="a", alias="a", tag_name="a",
                     summary={"training_started_at": "1795715988.7", "network_dim": "4"},
                     metadata={"ss_training_finished_at": "1795716072.31", "ss_num_epochs": "1795715988"})
    out = render.render_details(view)
    day = datetime.datetime.fromtimestamp(1795715988.7).strftime("%Y-%m-%d %H:%M")
    assert f'<td title="1795715988.7">{day}</td>' in out
    assert datetime.datetime.fromtimestamp(1795716072.31).strftime("%Y-%m-%d %H:%M") in out
    assert "<td>1795715988</td>" in out, "a number under a key that is not a time stays a number"
    assert "<td>4</td>" in out
    assert render.timestamp_text("x_at", "12") == "" and render.timestamp_text("x_at", "soon") == ""


def test_stack_buttons_sit_together_and_editor_waits_for_a_card(tmp_path):
    """Issue 14 #17: Insert/Delete in one unwrapped group; the metadata editor starts hidden."""
    html_text = render.render_stacks({"mix": [("a", 0.8)]})
    assert re.search(r'<div class="lora-core-stack-buttons"><button[^>]*lora-core-stack-insert.*?</button>'
                     r'<button[^>]*lora-core-stack-delete.*?</button></div>', html_text)
    css = (ROOT / "style.css").read_text()
    assert re.search(r"\.lora-core-stack-buttons \{[^}]*white-space: nowrap", css)
    pytest.importorskip("gradio")
    from lora_core.ui import build_lora_tab

    lib = _library(tmp_path, lambda r: plain_library(r, 2))
    tab = build_lora_tab(lambda: lib, TabSettings(current_family=lambda: "sd1"))
    editor = [b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "lora_core_editor"]
    assert len(editor) == 1 and editor[0].visible is False

    def ids(block):
        for child in getattr(block, "children", []) or []:
            yield getattr(child, "elem_id", None)
            yield from ids(child)

    assert {"lora_core_edit_description", "lora_core_edit_activation", "lora_core_save"} <= set(ids(editor[0]))
