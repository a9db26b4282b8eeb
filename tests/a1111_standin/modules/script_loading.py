"""Stand-in for `modules.script_loading`: scripts and preload.py files are executed from their path."""
import importlib.util
import os

from modules import errors

loaded_scripts = {}


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module


def preload_extensions(extensions_dir, parser, extension_list=None):
    """Runs `preload(parser)` of the extension folders in `extensions_dir` (those named in
    `extension_list`, else every folder there), sorted by name. A failing preload is reported and
    the next one runs, as in the webui (the user sees a traceback and the webui starts anyway)."""
    if not os.path.isdir(extensions_dir):
        return
    names = os.listdir(extensions_dir) if extension_list is None else list(extension_list)
    for name in sorted(names):
        path = os.path.join(extensions_dir, name, "preload.py")
        if not os.path.isfile(path):
            continue
        try:
            module = load_module(path)
            if hasattr(module, "preload"):
                module.preload(parser)
        except Exception:
            errors.report(f"Error running preload() for {path}", exc_info=True)
