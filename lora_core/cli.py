"""lora_core: apply, browse and bake LoRA files for Stable Diffusion (`python -m lora_core <command>`).

Subcommands live in their own modules and are imported only when chosen, so `--help` and the
catalog commands never pay for torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> (module implementing add_arguments/run, one-line help)
COMMANDS = {
    "info": ("lora_core.commands.info", "describe a LoRA file: algorithms, family, rank, metadata, hashes"),
    "merge": ("lora_core.commands.merge", "bake LoRAs into a single-file checkpoint"),
    "list": ("lora_core.commands.list_loras", "list the LoRA library"),
    "serve": ("lora_core.app.serve", "start the standalone web UI"),
    "generate": ("lora_core.app.generate", "generate an image from a prompt with <lora:...> tags"),
    "train": ("lora_core.commands.train", "train a LoRA on a folder of captioned images"),
    "download": ("lora_core.commands.download", "download LoRAs from Civitai or Hugging Face into the LoRA folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        # Each command module is imported lazily: its add_arguments is looked up only when the
        # command is parsed. argparse needs the arguments up front, so import the (torch-free)
        # module header here; command modules must keep heavy imports inside run().
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ImportError as exc:  # one broken command must not take the others down
            logging.getLogger(__name__).debug("command %s unavailable: %s", name, exc)
            p.set_defaults(_unavailable=f"{name}: {exc}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "_unavailable", None):
        logging.getLogger(__name__).error("command not available: %s", args._unavailable)
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)
