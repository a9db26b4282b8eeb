"""Fake of Forge's built-in sd_forge_lora preload: the same two options, defined unconditionally
(the webui runs it after the user extensions' preloads, even when the extension is disabled)."""
import os

from modules import paths
from modules.paths_internal import normalized_filepath


def preload(parser):
    parser.add_argument("--lora-dir", type=normalized_filepath, default=os.path.join(paths.models_path, "Lora"),
                        help="Path to directory with Lora networks.")
    parser.add_argument("--lyco-dir-backcompat", type=normalized_filepath,
                        default=os.path.join(paths.models_path, "LyCORIS"),
                        help="Path to directory with LyCORIS networks (also --lyco-dir).")
