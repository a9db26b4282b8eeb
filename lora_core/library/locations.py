"""Options every command shares, with one meaning everywhere (torch-free).

    --models-dir DIR   folder with Stable-diffusion/ (checkpoints) and Lora/ (default: models)
    --lora-dir DIR     a LoRA folder (repeatable); given, these are the LoRA folders, as with A1111's
                       --lora-dir; not given: MODELS_DIR/Lora

Older spellings stay accepted: `list --dir DIR` is `--lora-dir DIR`.
"""
from __future__ import annotations

import argparse
import os

DEFAULT_MODELS_DIR = "models"


def add_location_arguments(parser: argparse.ArgumentParser, *, lora_aliases: tuple[str, ...] = ()) -> None:
    """Add --models-dir and --lora-dir (plus any old spellings of --lora-dir) to a command."""
    parser.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, metavar="DIR",
                        help="folder with Stable-diffusion/ (checkpoints) and Lora/ (default: models)")
    parser.add_argument("--lora-dir", *lora_aliases, dest="lora_dir", action="append", default=[], metavar="DIR",
                        help="LoRA folder (repeatable; default: MODELS_DIR/Lora)")


def models_dir(args: argparse.Namespace) -> str:
    return str(getattr(args, "models_dir", None) or DEFAULT_MODELS_DIR)


def lora_dirs(args: argparse.Namespace) -> list[str]:
    """The LoRA folders a command uses: every --lora-dir, else MODELS_DIR/Lora."""
    given = [str(d) for d in (getattr(args, "lora_dir", None) or [])]
    return given or [os.path.join(models_dir(args), "Lora")]


def checkpoint_dir(args: argparse.Namespace) -> str:
    return os.path.join(models_dir(args), "Stable-diffusion")


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="where the LoRA index lives (default: $LORA_CORE_DATA_DIR or ~/.cache/lora_core)")


def looks_like_path(spec: str) -> bool:
    """A LoRA argument that names a file rather than a library name."""
    return (os.path.isfile(spec) or os.path.isabs(spec) or spec.startswith(("./", "../", "~"))
            or "\\" in spec or (len(spec) > 2 and spec[1] == ":" and spec[0].isalpha()))


def resolve_lora(spec: str, args: argparse.Namespace, library=None) -> str:
    """The file a LoRA argument means: an existing file path as given, else a name resolved in the
    LoRA folders exactly as a prompt tag is (folder/name, file stem, training alias).

    Raises LookupError (the library's NotFound / AmbiguousName, whose message says what is wrong
    and suggests close names)."""
    if looks_like_path(spec):
        return spec
    if library is None:
        from lora_core.library import Library

        with Library(lora_dirs(args), getattr(args, "data_dir", None)) as lib:
            lib.scan()
            return lib.find(spec).path
    return library.find(spec).path
