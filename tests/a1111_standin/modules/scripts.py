"""Stand-in for `modules.scripts`: how the webui loads an extension's `scripts/*.py`.

Order: built-in extensions first, then user extensions, each extension's files sorted by name.
While a file runs, its extension folder is first on sys.path (and only then), exactly as the
webui does it, so an extension can import its own packages at import time only.
"""
import os
import sys
from collections import namedtuple

from modules import errors, extensions, script_callbacks, script_loading

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

AlwaysVisible = object()
scripts_data = []
loaded_modules = []


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass


def list_scripts(extension_dirs):
    found = []
    for ext_dir in extension_dirs:
        scripts_dir = os.path.join(ext_dir, "scripts")
        if not os.path.isdir(scripts_dir):
            continue
        for filename in sorted(os.listdir(scripts_dir)):
            path = os.path.join(scripts_dir, filename)
            if filename.endswith(".py") and os.path.isfile(path):
                found.append(ScriptFile(ext_dir, filename, path))
    return found


def load_scripts(builtin_extension_dirs=None, extension_dirs=None):
    """Clears the callbacks and executes every script of the active extensions (built-in first, as
    `extensions.active()` lists them). Passing folders loads those instead (older tests)."""
    script_callbacks.clear_callbacks()
    scripts_data.clear()
    loaded_modules.clear()
    if builtin_extension_dirs is None and extension_dirs is None:
        dirs = [ext.path for ext in extensions.active()]
    else:
        dirs = list(builtin_extension_dirs or ()) + list(extension_dirs or ())
    syspath = sys.path
    for scriptfile in list_scripts(dirs):
        try:
            sys.path = [scriptfile.basedir] + sys.path
            module = script_loading.load_module(scriptfile.path)
            loaded_modules.append(module)
            for value in list(module.__dict__.values()):
                if isinstance(value, type) and issubclass(value, Script) and value is not Script:
                    scripts_data.append(ScriptClassData(value, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
