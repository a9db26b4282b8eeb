"""Stand-in for `modules.paths`: the webui re-exports the locations of `paths_internal` here."""
from modules import paths_internal
from modules.paths_internal import (  # noqa: F401
    data_path, extensions_builtin_dir, extensions_dir, models_path, script_path)


def configure(root, builtin_dir=None):
    """Points the webui at `root` (data and models) for a test; see paths_internal.configure."""
    global data_path, models_path, extensions_dir, extensions_builtin_dir
    paths_internal.configure(root, builtin_dir)
    data_path = paths_internal.data_path
    models_path = paths_internal.models_path
    extensions_dir = paths_internal.extensions_dir
    extensions_builtin_dir = paths_internal.extensions_builtin_dir
