"""Command line options of the lora_core A1111 extension (the webui calls `preload(parser)`
before parsing its arguments).

`--lora-dir` and `--lyco-dir-backcompat` are the built-in Lora extension's options, with the same
meaning; they are added only when the built-in has not added them already (argparse refuses a
second definition). As with the built-in, `--lyco-dir` works as an abbreviation of the latter.
"""
import os


def _has(parser, option):
    return option in getattr(parser, "_option_string_actions", {})


def preload(parser):
    try:
        from modules import paths

        models = paths.models_path
    except Exception:  # noqa: BLE001 - outside the webui (tests, tools): a relative default
        models = "models"
    if not _has(parser, "--lora-dir"):
        parser.add_argument("--lora-dir", type=str, default=os.path.join(models, "Lora"),
                            help="Path to directory with LoRA networks.")
    if not _has(parser, "--lyco-dir-backcompat"):
        parser.add_argument("--lyco-dir-backcompat", type=str, default=os.path.join(models, "LyCORIS"),
                            help="Path to directory with LyCORIS networks (also --lyco-dir).")
    if not _has(parser, "--lora-core-data-dir"):
        parser.add_argument("--lora-core-data-dir", type=str, default=None,
                            help="Where lora_core keeps its index, hashes and thumbnails "
                                 "(default: <webui data dir>/lora_core).")
