"""Fake of Forge's built-in LoRA extension script (`extensions-builtin/sd_forge_lora/scripts/
lora_script.py`): callbacks named `sd_forge_lora/lora_script.py/...`, registered in its order."""
import builtin_lora_parts
from modules import script_callbacks

calls = []
builtin = builtin_lora_parts.BuiltinLora(calls)
before_ui = builtin.before_ui
infotext_pasted = builtin.infotext_pasted

script_callbacks.on_before_ui(builtin.before_ui)
script_callbacks.on_infotext_pasted(builtin.infotext_pasted)
script_callbacks.on_app_started(builtin.api)
script_callbacks.on_infotext_pasted(builtin.infotext_pasted_addnet)
