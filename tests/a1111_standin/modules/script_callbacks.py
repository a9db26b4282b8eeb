"""Stand-in for `modules.script_callbacks`: the hooks extensions register at import time.

As in the webui (1.8+):
* `add_callback` names each entry `{extension canonical name}/{file name}/{category}[/{name}]`,
  the file being the first stack frame outside this module and the extension the one whose folder
  holds it (`extensions.find_extension`; `base` outside any extension); a repeated name gets
  `-1`, `-2`, ... appended.
* Callbacks run in `ordered_callbacks(category)` order: registration order, rearranged by the
  `[callbacks/<name>]` Before/After sections of every extension's metadata config (topological
  sort), then the user's `opts.prioritized_callbacks_<category>` moved to the front. The sorted list
  is cached per category until the number of callbacks changes (as in the webui).
* `before_ui` and `script_unloaded` callbacks run in reverse of that order; a failing callback is
  reported and skipped.
`without_sorting()` turns this into a webui before 1.8 (no sort_callbacks/ordered_callbacks: plain
registration order), for testing extensions' fallbacks.
"""
import dataclasses
import inspect
import os

from modules import errors, extensions, shared, util


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


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

ordered_callbacks_map = {}


def _caller_file():
    # The webui scans inspect.stack() for the first frame outside this file; walking the frames
    # directly finds the same file without inspect's (slow) source lookups.
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "unknown file"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    filename = filename or _caller_file()
    extension = extensions.find_extension(filename)
    base = f"{extension.canonical_name if extension else 'base'}/{os.path.basename(filename)}/{category}"
    if name is not None:
        base += f"/{name}"
    taken = {c.name for c in callbacks}
    unique = base
    n = 0
    while unique in taken and n < 1000:
        n += 1
        unique = f"{base}-{n}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    callbacks = list(unordered_callbacks)
    by_name = {c.name: c for c in callbacks}
    instructions = [i for ext in extensions.extensions for i in ext.metadata.list_callback_order_instructions()
                    if i.name in by_name]
    if instructions:
        needs = {c.name: [] for c in callbacks}  # name -> names that must run before it
        for i in instructions:
            needs[i.name] += [a for a in i.after if a in by_name]
            for b in i.before:
                if b in by_name:
                    needs[b].append(i.name)
        callbacks = [by_name[n] for n in util.topological_sort(needs)]
    if enable_user_sort:
        for wanted in reversed(getattr(shared.opts, "prioritized_callbacks_" + category, None) or []):
            for i, c in enumerate(callbacks):
                if c.name == wanted:
                    callbacks.insert(0, callbacks.pop(i))
                    break
    return callbacks


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])
    if not enable_user_sort:
        return sort_callbacks(category, unordered_callbacks, enable_user_sort=False)
    cached = ordered_callbacks_map.get(category)
    if cached is not None and len(cached) == len(unordered_callbacks):
        return cached
    ordered_callbacks_map[category] = sort_callbacks(category, unordered_callbacks)
    return ordered_callbacks_map[category]


def without_sorting():
    """Makes this module a webui before 1.8: no `sort_callbacks` / `ordered_callbacks`."""
    module = globals()
    module.pop("sort_callbacks", None)
    module.pop("ordered_callbacks", None)


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()
    ordered_callbacks_map.clear()


def _in_order(category):
    ordered = globals().get("ordered_callbacks")
    return list(ordered(category)) if ordered is not None else list(callback_map["callbacks_" + category])


def _run(category, *args, reverse=False):
    results = []
    callbacks = _in_order(category)
    for c in (reversed(callbacks) if reverse else callbacks):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {category} for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def app_reload_callback():
    _run("on_reload")


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_tabs_callback():
    tabs = []
    for r in _run("ui_tabs"):
        tabs += r or []
    return tabs


def ui_settings_callback():
    _run("ui_settings")


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("script_unloaded", reverse=True)


def before_ui_callback():
    _run("before_ui", reverse=True)


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
