"""Stand-in for `modules.paths_internal`: where the webui and its extensions live.

As in the webui, `script_path` is the folder above `modules/` and the built-in extensions are in
`<script_path>/extensions-builtin`; user extensions are in `<data_path>/extensions`. The harness
points `data_path` at a test folder (`configure`) and may point `extensions_builtin_dir` elsewhere
(Forge's built-ins, or a folder that does not exist: a webui without built-in extensions).
"""
import os

script_path = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")


def normalized_filepath(filepath):
    """argparse `type=` of the webui's path options (the built-in Lora preload imports it)."""
    return os.path.abspath(os.path.expanduser(filepath))


def configure(root, builtin_dir=None):
    global data_path, models_path, extensions_dir, extensions_builtin_dir
    data_path = str(root)
    models_path = os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    if builtin_dir is None:
        builtin_dir = os.path.join(script_path, "extensions-builtin")
    extensions_builtin_dir = str(builtin_dir)
