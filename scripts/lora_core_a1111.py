"""AUTOMATIC1111 entry point of lora_core.

The webui executes every file in an extension's `scripts/` folder at start-up (and again on
"Reload UI"), with the extension folder first on sys.path while the file runs, so `lora_core`
imports from this checkout. All the work is in `lora_core.a1111`; this file only hands it the
webui's modules. The host object it creates is the extension's one piece of state.
"""
import logging
import os

from lora_core.a1111 import Webui, setup

EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

lora_core_host = setup(Webui.from_modules(), EXTENSION_DIR)
logging.getLogger("lora_core").debug("lora_core extension loaded from %s", EXTENSION_DIR)
