"""Stand-in for `modules.script_loading`: scripts and preload.py files are executed from their path."""
import importlib.util
import os

from modules import errors


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preload_extensions(extensions_dirs, parser):
    """Runs `preload(parser)` of every extension folder that has a preload.py."""
    for ext_dir in extensions_dirs:
        path = os.path.join(ext_dir, "preload.py")
        if not os.path.isfile(path):
            continue
        try:
            module = load_module(path)
            if hasattr(module, "preload"):
                module.preload(parser)
        except Exception:
            errors.report(f"Error running preload() for {path}", exc_info=True)
