"""Prompt tags: `<lora:...>` / `<lyco:...>` parsing and LoRA Block Weight vectors. No torch."""
from lora_core.tags.block_weights import BLOCK_IDS_26, PRESET_NAMES, BlockWeightError
from lora_core.tags.parser import LoraRequest, ParsedPrompt, parse_prompt

__all__ = ["parse_prompt", "ParsedPrompt", "LoraRequest", "BLOCK_IDS_26", "PRESET_NAMES", "BlockWeightError"]
