"""Command line options of the lora_core extension (AUTOMATIC1111 and Forge call `preload(parser)`
before parsing their arguments).

`--lora-dir` and `--lyco-dir-backcompat` are the built-in Lora extension's options, with the same
meaning, so they must exist exactly once. Both webuis run the preload of every user extension
first and then the preload of *every* folder in `extensions-builtin/`, disabled or not
(`modules/shared_cmd_options.py`), and argparse refuses a second definition. So the options are
added here only when no built-in preload will add them: when one is there, we use its option.
As with the built-in, `--lyco-dir` works as an abbreviation of the latter.
"""
import os

SHARED_OPTIONS = ("--lora-dir", "--lyco-dir-backcompat")


def _has(parser, option):
    return option in getattr(parser, "_option_string_actions", {})


# The built-in LoRA extensions whose preload defines both options: AUTOMATIC1111, Forge.
BUILTIN_LORA_FOLDERS = ("Lora", "sd_forge_lora")


def _builtin_preloads():
    """(folder name, text) of each built-in extension's preload.py (the webui runs them after ours)."""
    try:
        from modules import paths_internal

        root = paths_internal.extensions_builtin_dir
        names = sorted(os.listdir(root))
    except Exception:  # noqa: BLE001 - outside the webui (tests, tools), or no built-in folder
        return []
    found = []
    for name in names:
        try:
            with open(os.path.join(root, name, "preload.py"), encoding="utf-8") as f:
                found.append((name, f.read()))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def _defined_later(option, preloads):
    """A built-in LoRA extension's preload is there (it defines both options), or another
    built-in's preload names the option."""
    return any(name in BUILTIN_LORA_FOLDERS or f'"{option}"' in text or f"'{option}'" in text
               for name, text in preloads)


def preload(parser):
    try:
        from modules import paths

        models = paths.models_path
    except Exception:  # noqa: BLE001 - outside the webui (tests, tools): a relative default
        models = "models"
    later = _builtin_preloads()
    defaults = {"--lora-dir": ("Lora", "Path to directory with LoRA networks."),
                "--lyco-dir-backcompat": ("LyCORIS", "Path to directory with LyCORIS networks (also --lyco-dir).")}
    for option in SHARED_OPTIONS:
        if _has(parser, option) or _defined_later(option, later):
            continue
        folder, help_text = defaults[option]
        parser.add_argument(option, type=str, default=os.path.join(models, folder), help=help_text)
    if not _has(parser, "--lora-core-data-dir"):
        parser.add_argument("--lora-core-data-dir", type=str, default=None,
                            help="Where lora_core keeps its index, hashes and thumbnails "
                                 "(default: <webui data dir>/lora_core).")
