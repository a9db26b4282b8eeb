"""Fake of Forge's built-in sd_forge_lora preload (see builtin_lora_parts.add_builtin_options).
A preload runs before the scripts put the extension folder on sys.path: the stand-in folder is
found through the webui harness, which keeps it on sys.path."""
import builtin_lora_parts


def preload(parser):
    builtin_lora_parts.add_builtin_options(parser)
