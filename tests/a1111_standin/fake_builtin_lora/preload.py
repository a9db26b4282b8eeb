"""Fake of the built-in Lora extension's preload: the same two options."""
import os

from modules import paths


def preload(parser):
    parser.add_argument("--lora-dir", type=str, default=os.path.join(paths.models_path, "Lora"))
    parser.add_argument("--lyco-dir-backcompat", type=str, default=os.path.join(paths.models_path, "LyCORIS"))
