"""Fake of A1111's built-in Lora extension script (`extensions-builtin/Lora/scripts/lora_script.py`):
registers from this file, in the real one's order, so its callbacks carry the real names
(`lora/lora_script.py/before_ui`, `lora/lora_script.py/infotext_pasted` and `...-1`, ...)."""
import builtin_lora_parts
from modules import script_callbacks

calls = []
builtin = builtin_lora_parts.BuiltinLora(calls)
before_ui = builtin.before_ui
infotext_pasted = builtin.infotext_pasted

script_callbacks.on_script_unloaded(builtin.unload)
script_callbacks.on_before_ui(builtin.before_ui)
script_callbacks.on_infotext_pasted(builtin.infotext_pasted)
script_callbacks.on_app_started(builtin.api)
script_callbacks.on_infotext_pasted(builtin.infotext_pasted_addnet)
