"""Stand-in for `modules.shared_cmd_options`: the command line, after the extensions' preloads.

The webui's order (shared_cmd_options.py, 1.6-1.10 and Forge): the preload.py of every *user*
extension that is not disabled runs first (folders sorted by name), then the preload.py of *every*
folder in `extensions-builtin/`, disabled or not; then the arguments are parsed. So a user
extension that defines an option a built-in also defines makes the built-in's preload fail with
argparse's "conflicting option string" (reported; the webui starts anyway).
"""
import os

from modules import paths_internal, script_loading, shared


def preload_and_parse(args=(), user_extension_dirs=(), disabled=()):
    parser = shared.parser
    for path in sorted((str(d) for d in user_extension_dirs), key=os.path.basename):
        if os.path.basename(path) in disabled:
            continue
        script_loading.preload_extensions(os.path.dirname(path), parser, extension_list=[os.path.basename(path)])
    script_loading.preload_extensions(paths_internal.extensions_builtin_dir, parser)
    shared.cmd_opts = parser.parse_args(list(args))
    return shared.cmd_opts
