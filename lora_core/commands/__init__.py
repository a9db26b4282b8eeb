"""Subcommands of `python -m lora_core`. Each module defines `add_arguments(parser)` and `run(args) -> int`."""
