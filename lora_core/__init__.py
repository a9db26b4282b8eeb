"""lora_core: a LoRA engine for Stable Diffusion WebUIs (A1111 extension and standalone app).

Importing the package must stay cheap: no torch here (the catalog/UI path never imports it).
"""

__version__ = "0.1.0"
