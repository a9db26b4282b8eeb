"""Starts the A1111 stand-in the way webui.py starts the real webui, with lora_core installed as
a user extension (this repository) and optionally a fake built-in Lora extension.

Start-up order, as in the webui: preload.py of every extension -> parse the command line ->
load every extension's scripts (built-in first) -> load the checkpoint (model_loaded callbacks)
-> before_ui callbacks -> settings + tabs (when the UI is built) -> app_started(demo, app).

Every `launch` drops the previously imported `modules` package so each test sees a fresh webui.
No torch here: the gradio 3.41.2 check runs this in a venv without torch.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

STANDIN = Path(__file__).resolve().parent
REPO = STANDIN.parents[1]
FAKE_BUILTIN = STANDIN / "fake_builtin_lora"
MODULE_NAMES = ("extra_networks", "ui_extra_networks", "script_callbacks", "scripts", "script_loading",
                "shared", "sd_models", "paths", "errors", "processing", "infotext_utils")


def fresh_modules() -> SimpleNamespace:
    for name in list(sys.modules):
        if name in ("modules", "launch") or name.startswith("modules."):
            del sys.modules[name]
    if str(STANDIN) not in sys.path:
        sys.path.insert(0, str(STANDIN))
    return SimpleNamespace(**{n: importlib.import_module(f"modules.{n}") for n in MODULE_NAMES})


def launch(root, *, builtin: bool = False, args=(), checkpoints=None, build_ui: bool = False,
           extension_dir: Path = REPO) -> SimpleNamespace:
    """checkpoints: list of (title, arch, model_builder, state_dict_fn); the first one is loaded."""
    m = fresh_modules()
    root = Path(root)
    m.paths.configure(root)
    builtin_dirs = [str(FAKE_BUILTIN)] if builtin else []
    user_dirs = [str(extension_dir)]
    m.script_loading.preload_extensions(builtin_dirs + user_dirs, m.shared.parser)
    m.shared.cmd_opts = m.shared.parser.parse_args(list(args))
    m.scripts.load_scripts(builtin_dirs, user_dirs)
    for title, arch, builder, state_dict_fn in checkpoints or []:
        m.sd_models.model_builders.setdefault(arch, builder)
        m.sd_models.CheckpointInfo(title, state_dict_fn, arch)
    if checkpoints:
        m.sd_models.load_model()
    m.script_callbacks.before_ui_callback()
    tabs = []
    demo = None
    if build_ui:
        import gradio as gr

        # As ui.create_ui: extension tabs are built first, each its own Blocks, then rendered
        # as tabs of the page; the settings page asks extensions for their settings.
        tabs = m.script_callbacks.ui_tabs_callback()
        m.script_callbacks.ui_settings_callback()
        with gr.Blocks(analytics_enabled=False) as demo:
            with gr.Tabs():
                for interface, label, elem_id in tabs:
                    with gr.TabItem(label, id=elem_id, elem_id="tab_" + elem_id):
                        interface.render()
        m.shared.demo = demo
    from fastapi import FastAPI

    app = FastAPI()
    m.script_callbacks.app_started_callback(demo, app)
    scripts = {Path(mod.__file__).name: mod for mod in m.scripts.loaded_modules}
    host = getattr(scripts.get("lora_core_a1111.py"), "lora_core_host", None)

    def close():
        """Webui shutdown: the script_unloaded callbacks (lora_core closes its library there)."""
        m.script_callbacks.script_unloaded_callback()

    return SimpleNamespace(m=m, app=app, tabs=tabs, demo=demo, scripts=scripts, host=host, close=close)
