"""lora_core loaded into the A1111 stand-in like the webui loads extensions: registration,
replacing the built-in Lora extension, settings, cards page, routes, install.py and preload.py.
No torch needed (no model is loaded here; see test_a1111_generation.py)."""
import logging
import runpy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "a1111_standin"))
import webui_harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _lora_file(path: Path, metadata=None):
    """A minimal valid safetensors LoRA (one kohya module) without torch."""
    import json
    import struct

    header = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]},
        "__metadata__": dict(metadata or {"ss_base_model_version": "sd_v1"}),
    }
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(range(16)))
    return path


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def root(tmp_path, monkeypatch):
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    started = []
    real_launch = webui_harness.launch

    def launch(*args, **kwargs):
        started.append(real_launch(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(webui_harness, "launch", launch)
    yield tmp_path
    for w in started:
        w.close()


def _ours(w):
    return w.m.extra_networks.extra_network_registry["lora"]


def test_loads_and_registers_lora_and_lyco_without_builtin(root):
    w = webui_harness.launch(root)
    assert w.m.errors.recorded == []
    assert w.host is not None
    net = _ours(w)
    assert type(net).__name__ == "LoraCoreNetwork" and net.host is w.host
    assert w.m.extra_networks.extra_network_aliases["lyco"] is net
    pages = [p for p in w.m.ui_extra_networks.extra_pages if p.name == "lora"]
    assert len(pages) == 1 and type(pages[0]).__name__ == "LoraCorePage"
    # preload gave the built-in's options, defaulting under the webui's models folder
    assert Path(w.m.shared.cmd_opts.lora_dir) == root / "models" / "Lora"
    assert w.m.shared.cmd_opts.lyco_dir_backcompat.endswith("LyCORIS")


def test_replaces_builtin_lora_handler_page_routes_and_logs_it(root, caplog):
    from fastapi.testclient import TestClient

    _lora_file(root / "models" / "Lora" / "mine.safetensors")
    with caplog.at_level(logging.INFO, logger="lora_core"):
        w = webui_harness.launch(root, builtin=True)
    assert w.m.errors.recorded == []  # no argparse conflict over --lora-dir, no callback errors
    builtin = w.scripts["lora_script.py"]
    net = _ours(w)
    assert type(net).__name__ == "LoraCoreNetwork"
    assert w.m.extra_networks.extra_network_aliases["lyco"] is net
    assert [type(p).__name__ for p in w.m.ui_extra_networks.extra_pages if p.name == "lora"] == ["LoraCorePage"]
    assert any("replacing the <lora:...> handler" in r.getMessage() for r in caplog.records)

    # A generation without a model: the built-in is never called, ours is (and does nothing).
    p = w.m.processing.StableDiffusionProcessing("a cat <lora:mine:0.5> <lyco:mine:0.2>")
    w.m.processing.process_images(p)
    assert [c for c in builtin.calls if c[0] in ("activate", "deactivate")] == []

    client = TestClient(w.app)
    listed = client.get("/sdapi/v1/loras").json()
    assert [x["name"] for x in listed] == ["mine"]
    assert set(listed[0]) >= {"name", "alias", "path", "metadata"}
    assert Path(listed[0]["path"]) == root / "models" / "Lora" / "mine.safetensors"
    _lora_file(root / "models" / "Lora" / "sub" / "second.safetensors")
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert sorted(x["name"] for x in client.get("/sdapi/v1/loras").json()) == ["mine", "second"]


def test_builtin_registering_late_still_loses(root):
    """Whatever order before_ui callbacks run in, app start leaves lora_core registered."""
    w = webui_harness.launch(root, builtin=True)
    builtin = w.scripts["lora_script.py"]
    builtin.before_ui()  # the built-in registers once more, after us
    assert type(_ours(w)).__name__ == "FakeBuiltinLora"
    from fastapi import FastAPI

    w.m.script_callbacks.app_started_callback(None, FastAPI())
    assert type(_ours(w)).__name__ == "LoraCoreNetwork"


def test_settings_registered_in_own_section_with_defaults(root):
    w = webui_harness.launch(root)
    w.m.script_callbacks.ui_settings_callback()
    labels = w.m.shared.opts.data_labels
    keys = [k for k in labels if k.startswith("lora_core_")]
    assert {"lora_core_default_multiplier", "lora_core_cache_count", "lora_core_cache_mb",
            "lora_core_show_all_families", "lora_core_add_hashes_to_infotext", "lora_core_keep_applied"} <= set(keys)
    assert {labels[k].section for k in keys} == {("lora_core", "LoRA (lora_core)")}
    assert w.m.shared.opts.lora_core_cache_count == 8
    w.m.shared.opts.lora_core_cache_count = "3"  # config.json values may come as text
    assert w.host.settings.get("lora_core_cache_count") == 3
    w.m.shared.opts.lora_core_cache_mb = "junk"
    assert w.host.settings.cache_limits() == (3, 2048)


def test_cards_page_items_have_the_webui_fields_and_filter_by_family(root):
    lora_dir = root / "models" / "Lora"
    _lora_file(lora_dir / "one.safetensors")
    _lora_file(lora_dir / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    (lora_dir / "one.json").write_text('{"activation text": "blue \\"hat\\"", "preferred weight": 0.6}')
    w = webui_harness.launch(root)
    page = next(p for p in w.m.ui_extra_networks.extra_pages if p.name == "lora")

    class Model:  # the flags A1111 puts on shared.sd_model
        is_sd1, is_sd2, is_sdxl = True, False, False

    w.m.shared.sd_model = Model()
    html = page.populate("txt2img")
    assert set(page.items) == {"one"}  # the SDXL LoRA is hidden on an SD1 model
    item = page.items["one"]
    assert item["sd_version"] == "SD1"
    assert item["prompt"] == '"<lora:one:0.6>" + " blue \\"hat\\""'
    assert "one" in html
    assert item["preview"] is None
    (lora_dir / "one.preview.png").write_bytes(_png())
    w.host.refresh()
    page.populate("txt2img")
    preview = page.items["one"]["preview"]
    assert preview.startswith("./lora_core/api/thumb?path=")
    from fastapi.testclient import TestClient

    response = TestClient(w.app).get(preview[1:])
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/")
    w.m.shared.opts.lora_core_show_all_families = True
    page.populate("txt2img")
    assert set(page.items) == {"one", "xl"}
    assert page.items["xl"]["prompt"] == '"<lora:xl:1>"'


def test_card_text_is_escaped(root):
    _lora_file(root / "models" / "Lora" / "evil.safetensors")
    (root / "models" / "Lora" / "evil.json").write_text('{"description": "<img src=x onerror=alert(1)>"}')
    w = webui_harness.launch(root)
    page = next(p for p in w.m.ui_extra_networks.extra_pages if p.name == "lora")
    html = page.populate("txt2img")
    assert "<img src=x" not in html and "&lt;img src=x" in html


def test_install_py_installs_only_what_is_missing(monkeypatch):
    webui_harness.fresh_modules()
    import launch

    monkeypatch.setattr(launch, "is_installed", lambda name: name != "safetensors")
    runpy.run_path(str(REPO / "install.py"))
    assert [cmd for cmd, _ in launch.pip_commands] == ["install safetensors>=0.4"]
    assert not any("torch" in cmd for cmd, _ in launch.pip_commands)


def test_preload_adds_options_once(root):
    """Without a built-in that defines them, our preload adds the built-in's options (once)."""
    import argparse

    m = webui_harness.fresh_modules()
    m.paths.configure(root, root / "no-extensions-builtin")
    parser = argparse.ArgumentParser()
    module = runpy.run_path(str(REPO / "preload.py"))
    module["preload"](parser)
    module["preload"](parser)  # a second definition would make argparse raise
    args = parser.parse_args(["--lora-dir", "/x", "--lyco-dir", "/y", "--lora-core-data-dir", "/z"])
    assert (args.lora_dir, args.lyco_dir_backcompat, args.lora_core_data_dir) == ("/x", "/y", "/z")


def test_script_unload_unwraps_sd_models(root):
    w = webui_harness.launch(root)
    sd_models = w.m.sd_models
    assert hasattr(sd_models.reload_model_weights, "__lora_core_guarded__")
    w.m.script_callbacks.script_unloaded_callback()
    for name in ("reload_model_weights", "load_model", "unload_model_weights"):
        assert not hasattr(getattr(sd_models, name), "__lora_core_guarded__")


def test_adapter_and_script_import_without_torch():
    import subprocess

    code = (
        "import sys; sys.path.insert(0, 'tests/a1111_standin')\n"
        "import webui_harness, tempfile\n"
        "w = webui_harness.launch(tempfile.mkdtemp())\n"
        "assert w.host is not None and not w.m.errors.recorded, w.m.errors.recorded\n"
        "import lora_core.a1111.page, lora_core.a1111.settings, lora_core.a1111.infotext\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH' if bad else 'CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("CLEAN")


def test_tab_and_settings_build_with_the_installed_gradio(root):
    import gradio as gr

    _lora_file(root / "models" / "Lora" / "one.safetensors")
    w = webui_harness.launch(root, builtin=True, build_ui=True)
    assert w.m.errors.recorded == []
    assert [(label, elem_id) for _, label, elem_id in w.tabs] == [("LoRA", "lora_core_tab")]
    assert isinstance(w.tabs[0][0], gr.Blocks)
    assert "lora_core_cache_mb" in w.m.shared.opts.data_labels


def _addnet_short(path: Path) -> str:
    """Independent oracle: A1111's Lora short hash is sha256 of the bytes after the header."""
    import hashlib
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()[:12]


def test_paste_runs_before_the_builtin_and_resolves_by_hash(root):
    path = _lora_file(root / "models" / "Lora" / "chars" / "local_name.safetensors")
    w = webui_harness.launch(root, builtin=True)
    assert w.host.library().wait_for_hashes(30)
    short = _addnet_short(path)
    text = f'1girl <lora:their_name:0.8>, <lora:unknown:1>\nSteps: 20, Lora hashes: "their_name: {short}, unknown: 0123456789ab"'
    params = w.m.infotext_utils.parse_generation_parameters(text)
    assert params["Prompt"] == "1girl <lora:local_name:0.8>, <lora:unknown:1>"
    builtin_saw = [c[1] for c in w.scripts["lora_script.py"].calls if c[0] == "infotext_pasted"]
    assert builtin_saw == [params["Prompt"]]  # ours ran first


def test_short_hash_of_a_file_not_hashed_yet(root):
    import dataclasses

    path = _lora_file(root / "models" / "Lora" / "fresh.safetensors")
    w = webui_harness.launch(root)
    entry = dataclasses.replace(w.host.library().find("fresh"), sha256=None, addnet_sha256=None)
    assert entry.autov3 is None
    assert w.host.short_hash(entry) == _addnet_short(path)


# ---------------------------------------------------------------- start-up order (issue 13 item 6)
BUILTIN_STATES = [True, False, None]  # enabled, installed but disabled, no built-in folder


def _option_owner(m, option):
    """'builtin' when the built-in's preload defined `option` (its type is the webui's
    normalized_filepath), 'lora_core' when ours did."""
    action = m.shared.parser._option_string_actions[option]
    return "builtin" if action.type is m.paths_internal.normalized_filepath else "lora_core"


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
@pytest.mark.parametrize("builtin", BUILTIN_STATES, ids=["enabled", "disabled", "absent"])
def test_preloads_run_user_first_then_every_builtin_without_error(root, builtin, forge):
    w = webui_harness.launch(root, builtin=builtin, forge=forge)
    m = w.m
    assert m.errors.recorded == []
    ran = [Path(p).parent.name for p in m.script_loading.loaded_scripts if p.endswith("preload.py")]
    builtin_folder = "sd_forge_lora" if forge else "Lora"
    if builtin is None:
        assert ran == [webui_harness.REPO.name]
        assert _option_owner(m, "--lora-dir") == _option_owner(m, "--lyco-dir-backcompat") == "lora_core"
    else:  # ours first, then the built-in's, even when it is disabled
        assert ran == [webui_harness.REPO.name, builtin_folder]
        assert _option_owner(m, "--lora-dir") == _option_owner(m, "--lyco-dir-backcompat") == "builtin"
    assert Path(m.shared.cmd_opts.lora_dir) == root / "models" / "Lora"
    assert Path(m.shared.cmd_opts.lyco_dir_backcompat) == root / "models" / "LyCORIS"
    assert m.shared.parser.parse_args(["--lyco-dir", "/y"]).lyco_dir_backcompat.endswith("y")
    # the built-in's scripts run only when it is enabled
    assert ("lora_script.py" in w.scripts) == (builtin is True)
    assert type(_ours(w)).__name__ == "LoraCoreNetwork"


_OLD_PRELOAD = '''
def preload(parser):
    # lora_core's preload before the fix: adds the built-in's options unless already there,
    # which never helps, because the webui runs the built-in's preload after this one.
    if "--lora-dir" not in parser._option_string_actions:
        parser.add_argument("--lora-dir", type=str, default="models/Lora")
    if "--lyco-dir-backcompat" not in parser._option_string_actions:
        parser.add_argument("--lyco-dir-backcompat", type=str, default="models/LyCORIS")
'''


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
@pytest.mark.parametrize("builtin", BUILTIN_STATES, ids=["enabled", "disabled", "absent"])
def test_standin_reports_the_old_preload_conflict(root, tmp_path_factory, builtin, forge):
    """The start-up traceback every user saw: the stand-in now records it as the webui does."""
    ext = tmp_path_factory.mktemp("extensions") / "old_lora_ext"
    ext.mkdir()
    (ext / "preload.py").write_text(_OLD_PRELOAD)
    w = webui_harness.launch(root, builtin=builtin, forge=forge, extension_dir=ext)
    if builtin is None:
        assert w.m.errors.recorded == []
        return
    folder = "sd_forge_lora" if forge else "Lora"
    assert len(w.m.errors.recorded) == 1, w.m.errors.recorded
    report = w.m.errors.recorded[0]
    assert report.startswith("Error running preload() for ") and f"{folder}/preload.py" in report
    assert "argument --lora-dir: conflicting option string" in report


def test_disabled_user_extension_is_not_preloaded(root, tmp_path_factory):
    ext = tmp_path_factory.mktemp("extensions") / "old_lora_ext"
    ext.mkdir()
    (ext / "preload.py").write_text(_OLD_PRELOAD)
    w = webui_harness.launch(root, builtin=True, user_extensions=[ext], disabled=["old_lora_ext"])
    assert w.m.errors.recorded == []
    assert not [p for p in w.m.script_loading.loaded_scripts if "old_lora_ext" in p]


# ---------------------------------------------------------------- callback order (issue 13 item 6)
def _names(callbacks):
    return [c.name for c in callbacks]


def _our_name(category, file="__init__.py"):
    return f"{webui_harness.REPO.name.lower()}/{file}/{category}"


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
def test_callback_order_is_declared_in_our_metadata(root, forge):
    w = webui_harness.launch(root, builtin=True, forge=forge)
    m = w.m
    assert m.errors.recorded == []  # no "referencing the wrong extension" report either
    b = "sd_forge_lora" if forge else "lora"
    before_ui = m.script_callbacks.callback_map["callbacks_before_ui"]
    pasted = m.script_callbacks.callback_map["callbacks_infotext_pasted"]
    # The lists keep the registration order (built-in scripts load first): nothing was moved...
    assert _names(before_ui) == [f"{b}/lora_script.py/before_ui", _our_name("before_ui")]
    assert _names(pasted) == [f"{b}/lora_script.py/infotext_pasted", f"{b}/lora_script.py/infotext_pasted-1",
                              _our_name("infotext_pasted")]
    # ...the order is declared in our extension's metadata, and the webui's sorting applies it.
    ours = m.extensions.find_extension(str(webui_harness.REPO / "lora_core" / "a1111" / "__init__.py"))
    assert ours is not None and not ours.is_builtin
    config = ours.metadata.config
    assert config.get(f"callbacks/{_our_name('before_ui')}", "Before").split() == [f"{b}/lora_script.py/before_ui"]
    assert config.get(f"callbacks/{_our_name('infotext_pasted')}", "Before").split() == _names(pasted)[:2]
    assert _names(m.script_callbacks.ordered_callbacks("before_ui"))[0] == _names(before_ui)[1]
    assert _names(m.script_callbacks.ordered_callbacks("infotext_pasted"))[0] == _names(pasted)[2]

    # before_ui runs in reverse: the built-in registers first, ours last and wins (no app_started).
    builtin = w.scripts["lora_script.py"]
    m.extra_networks.initialize()
    m.ui_extra_networks.initialize()
    builtin.calls.clear()
    m.script_callbacks.before_ui_callback()
    assert builtin.calls == [("before_ui",)]
    assert type(_ours(w)).__name__ == "LoraCoreNetwork"
    assert [type(p).__name__ for p in m.ui_extra_networks.extra_pages] == ["LoraCorePage"]


def test_paste_order_follows_the_declared_metadata(root):
    _lora_file(root / "models" / "Lora" / "local_name.safetensors")
    w = webui_harness.launch(root, builtin=True)
    assert w.host.library().wait_for_hashes(30)
    short = _addnet_short(root / "models" / "Lora" / "local_name.safetensors")
    seen = []
    original = w.host.infotext_pasted
    entry = next(c for c in w.m.script_callbacks.callback_map["callbacks_infotext_pasted"] if c.callback == original)
    entry.callback = lambda text, params: (seen.append("lora_core"), original(text, params))
    text = f'<lora:their:1>\nSteps: 2, Lora hashes: "their: {short}"'
    params = w.m.infotext_utils.parse_generation_parameters(text)
    builtin = w.scripts["lora_script.py"]
    assert seen == ["lora_core"]
    assert [c for c in builtin.calls if c[0].startswith("infotext")] == [
        ("infotext_pasted", "<lora:local_name:1>"), ("infotext_pasted_addnet", "<lora:local_name:1>")]
    assert params["Prompt"] == "<lora:local_name:1>"


def test_user_priority_setting_overrides_the_declared_order(root):
    """The stand-in honours Settings > "Callback order" (opts.prioritized_callbacks_<category>) as the
    webui does; app_started still leaves lora_core in charge of <lora:...>."""
    w = webui_harness.launch(root, builtin=True)
    m = w.m
    m.shared.opts.prioritized_callbacks_before_ui = ["lora/lora_script.py/before_ui"]
    m.script_callbacks.ordered_callbacks_map.clear()
    assert _names(m.script_callbacks.ordered_callbacks("before_ui"))[0] == "lora/lora_script.py/before_ui"
    m.extra_networks.initialize()
    m.script_callbacks.before_ui_callback()
    assert type(_ours(w)).__name__ == "FakeBuiltinLora"  # the user asked for it
    from fastapi import FastAPI

    m.script_callbacks.app_started_callback(None, FastAPI())
    assert type(_ours(w)).__name__ == "LoraCoreNetwork"


def test_webui_without_sort_callbacks_uses_the_list_fallback(root):
    w = webui_harness.launch(root, builtin=True, callback_sorting=False)
    m = w.m
    assert not hasattr(m.script_callbacks, "sort_callbacks") and not hasattr(m.script_callbacks, "ordered_callbacks")
    assert m.errors.recorded == []
    before_ui = m.script_callbacks.callback_map["callbacks_before_ui"]
    pasted = m.script_callbacks.callback_map["callbacks_infotext_pasted"]
    assert _names(before_ui)[0] == _our_name("before_ui")  # moved to the front of the list
    assert _names(pasted)[0] == _our_name("infotext_pasted")
    ours = m.extensions.find_extension(str(webui_harness.REPO / "preload.py"))
    assert not [s for s in ours.metadata.config.sections() if s.startswith("callbacks/")]
    m.extra_networks.initialize()
    m.script_callbacks.before_ui_callback()
    assert type(_ours(w)).__name__ == "LoraCoreNetwork"


def test_no_order_section_without_a_builtin_to_order_against(root):
    for builtin in (False, None):
        w = webui_harness.launch(root, builtin=builtin)
        ours = w.m.extensions.find_extension(str(webui_harness.REPO / "preload.py"))
        assert not [s for s in ours.metadata.config.sections() if s.startswith("callbacks/")]
        assert w.m.errors.recorded == []
