"""Starts the A1111 stand-in the way webui.py starts the real webui (or Forge), with lora_core
installed as a user extension (this repository) and the fake built-in LoRA extension.

Start-up order, as in the webui:
1. preload.py of every user extension that is not disabled (sorted by folder name), then the
   preload.py of *every* built-in folder, disabled or not (`shared_cmd_options`) -> parse the
   command line. A preload that fails is reported in `modules.errors.recorded`.
2. list the extensions (built-ins, then user extensions; disabled ones stay listed but inactive)
   -> load every active extension's scripts, built-ins first.
3. load the checkpoint (model_loaded callbacks) -> before_ui callbacks -> settings + tabs (when the
   UI is built) -> app_started(demo, app).

`builtin`: True = the built-in LoRA extension is enabled; False = installed but disabled (its
preload still runs, as in the webui); None = no built-in folder at all. `forge=True` starts as
Forge: Forge's built-in folder (`sd_forge_lora`), `sd_models` with Forge's stub loaders and
`forge_model_reload`, and checkpoints whose builders make Forge engine objects (tiny_forge.py).
`callback_sorting=False` makes `script_callbacks` a webui before 1.8 (no sort_callbacks).

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
A1111_BUILTIN_DIR = STANDIN / "extensions-builtin"          # holds Lora/ (canonical name "lora")
FORGE_BUILTIN_DIR = STANDIN / "forge" / "extensions-builtin"  # holds sd_forge_lora/
BUILTIN_NAMES = {False: "Lora", True: "sd_forge_lora"}      # folder name by `forge`
MODULE_NAMES = ("extra_networks", "ui_extra_networks", "script_callbacks", "scripts", "script_loading",
                "shared", "shared_cmd_options", "sd_models", "paths", "paths_internal", "extensions", "errors",
                "processing", "infotext_utils", "util")


def fresh_modules() -> SimpleNamespace:
    for name in list(sys.modules):
        if name in ("modules", "launch", "builtin_lora_parts") or name.startswith("modules."):
            del sys.modules[name]
    if str(STANDIN) not in sys.path:
        sys.path.insert(0, str(STANDIN))
    return SimpleNamespace(**{n: importlib.import_module(f"modules.{n}") for n in MODULE_NAMES})


def _builtin_state(builtin) -> str:
    states = {True: "enabled", False: "disabled", None: "absent"}
    state = states.get(builtin, builtin)
    if state not in states.values():
        raise ValueError(f"builtin must be True, False, None or one of {sorted(states.values())}")
    return state


def launch(root, *, builtin=False, args=(), checkpoints=None, build_ui: bool = False,
           extension_dir: Path = REPO, user_extensions=(), disabled=(), forge: bool = False,
           callback_sorting: bool = True) -> SimpleNamespace:
    """checkpoints: list of (title, arch, model_builder, state_dict_fn); the first one is loaded.
    `user_extensions`: more user extension folders besides `extension_dir`; `disabled`: folder
    names to disable (as the Extensions tab does)."""
    m = fresh_modules()
    root = Path(root)
    state = _builtin_state(builtin)
    builtin_dir = FORGE_BUILTIN_DIR if forge else A1111_BUILTIN_DIR
    if state == "absent":
        builtin_dir = root / "extensions-builtin"  # a folder that does not exist
    m.paths.configure(root, builtin_dir)
    if not callback_sorting:
        m.script_callbacks.without_sorting()
    if forge:
        m.sd_models.become_forge()
    disabled = list(disabled) + ([BUILTIN_NAMES[forge]] if state == "disabled" else [])
    m.shared.opts.disabled_extensions = disabled
    user_dirs = [str(extension_dir)] + [str(d) for d in user_extensions]
    m.shared_cmd_options.preload_and_parse(args, user_dirs, disabled)
    m.extensions.list_extensions(user_dirs)
    m.scripts.load_scripts()
    for title, arch, builder, state_dict_fn in checkpoints or []:
        m.sd_models.model_builders.setdefault(arch, builder)
        m.sd_models.CheckpointInfo(title, state_dict_fn, arch)
    if checkpoints:
        if forge:  # Forge loads at the first generation; the webui's warm-up loads it now
            first = next(iter(m.sd_models.checkpoints_list.values()))
            m.sd_models.model_data.forge_loading_parameters = {"checkpoint_info": first}
            m.sd_models.forge_model_reload()
        else:
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

    return SimpleNamespace(m=m, app=app, tabs=tabs, demo=demo, scripts=scripts, host=host, close=close,
                           builtin=state)
