"""Merge stacks of LoRAs into a bound model's weights and take them out again.

    Patcher(binding).apply([ActiveLora(lora, te=1.0, unet=0.8), ...]) -> PatchReport
    Patcher.restore()                       # original weights, bit for bit
    LoraCache(max_count, max_mb).get(path)  # parsed LoraFiles, LRU

See patcher.py for the incremental/rollback design and slot_math.py for the formula.
"""
from lora_core.patcher.active import BLOCK_IDS_26, ActiveLora
from lora_core.patcher.cache import LoraCache
from lora_core.patcher.errors import PatchError
from lora_core.patcher.patcher import Patcher
from lora_core.patcher.report import LoraReport, PatchReport

__all__ = ["ActiveLora", "BLOCK_IDS_26", "LoraCache", "LoraReport", "PatchError", "PatchReport", "Patcher"]
