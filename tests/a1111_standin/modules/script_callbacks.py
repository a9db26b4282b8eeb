"""Stand-in for `modules.script_callbacks`: the hooks extensions register at import time.

As in the webui, `before_ui` and `script_unloaded` callbacks run in reverse registration order,
and a failing callback is reported and skipped.
"""
import dataclasses
import inspect
import os

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = None


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_settings=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
)


def _caller_file():
    # The webui scans inspect.stack() for the first frame outside this file; walking the frames
    # directly finds the same file without inspect's (slow) source lookups.
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "unknown file"


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    filename = _caller_file()
    callback_name = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name else "")
    callbacks.append(ScriptCallback(filename, fun, callback_name))


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def _run(key, *args, reverse=False):
    results = []
    callbacks = callback_map[key]
    for c in (reversed(callbacks) if reverse else list(callbacks)):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {key} for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("callbacks_app_started", demo, app)


def app_reload_callback():
    _run("callbacks_on_reload")


def model_loaded_callback(sd_model):
    _run("callbacks_model_loaded", sd_model)


def ui_tabs_callback():
    tabs = []
    for r in _run("callbacks_ui_tabs"):
        tabs += r or []
    return tabs


def ui_settings_callback():
    _run("callbacks_ui_settings")


def infotext_pasted_callback(infotext, params):
    _run("callbacks_infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("callbacks_script_unloaded", reverse=True)


def before_ui_callback():
    _run("callbacks_before_ui", reverse=True)


def on_app_started(callback, *, name=None):
    """callback(demo: gr.Blocks | None, app: FastAPI) once the server runs."""
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload")


def on_model_loaded(callback, *, name=None):
    """callback(sd_model) after a checkpoint is loaded (also after an in-place weight reload)."""
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    """callback() -> list of (gradio component, title, elem_id) or None."""
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    """callback() adds settings with shared.opts.add_option(key, shared.OptionInfo(...))."""
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_infotext_pasted(callback, *, name=None):
    """callback(infotext: str, params: dict) may edit params in place."""
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")
