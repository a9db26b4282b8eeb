"""What the patcher is asked to apply: one LoRA file with its multipliers.

Kept free of tensor code so hosts can build stacks cheaply.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# LoRA Block Weight layout (hako-mikan/sd-webui-lora-block-weight): BASE is the text encoder(s),
# then LDM input_blocks 0..11, middle_block, output_blocks 0..11. `lora_core.tags` resolves an
# `lbw=` value to a 26-tuple in exactly this order.
from lora_core.tags.block_weights import BLOCK_IDS_26  # noqa: E402  (torch-free, the one table)


def normalize_block_weights(block_weights: Any) -> tuple[tuple[str, float], ...] | None:
    """Block weights as a hashable, sorted ((block_id, weight), ...) or None.

    Accepts None, a mapping block id -> weight, or a sequence of floats: 26 values in
    BLOCK_IDS_26 order, or a 12/17/20-value lbw vector (spread by `lora_core.tags`, unlisted
    blocks 0 like the lbw extension).
    """
    if block_weights is None:
        return None
    if isinstance(block_weights, Mapping):
        items = {str(k): float(v) for k, v in block_weights.items()}
    elif isinstance(block_weights, Sequence) and not isinstance(block_weights, (str, bytes)):
        values = [float(v) for v in block_weights]
        from lora_core.tags.block_weights import layout_ids, spread  # torch-free

        ids = layout_ids(len(values))  # Flux / SD3 vectors keep their own block ids
        if ids is None and len(values) != len(BLOCK_IDS_26):
            values = list(spread(values))
        items = dict(zip(ids or BLOCK_IDS_26, values))
    else:
        raise TypeError(f"block_weights must be a mapping or a sequence of floats, not {type(block_weights).__name__}")
    return tuple(sorted(items.items()))


@dataclass(frozen=True, eq=False)
class ActiveLora:
    """One entry of a stack: a parsed LoraFile and how strongly to apply it.

    `te` multiplies text-encoder slots, `unet` UNet slots; `block_weights` (lbw) further
    multiplies each slot by the weight of its block (BASE for text encoders). `dyn` limits the
    rank (A1111 `dyn=`). Equality/hash go by the LoraFile's identity plus the numbers, which is
    what lets the patcher see "same stack again" in O(stack length).
    """

    lora: Any
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    block_weights: Any = None
    _bw: tuple[tuple[str, float], ...] | None = field(init=False, repr=False, default=None)
    _bw_map: dict[str, float] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "te", float(self.te))
        object.__setattr__(self, "unet", float(self.unet))
        object.__setattr__(self, "dyn", None if self.dyn is None else int(self.dyn))
        bw = normalize_block_weights(self.block_weights)
        object.__setattr__(self, "_bw", bw)
        object.__setattr__(self, "_bw_map", None if bw is None else dict(bw))

    @property
    def identity(self) -> tuple:
        return (id(self.lora), self.te, self.unet, self.dyn, self._bw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActiveLora) and other.lora is self.lora and other.identity == self.identity

    def __hash__(self) -> int:
        return hash(self.identity)

    def multiplier(self, component: str, block: str | None) -> float:
        """The factor for a slot of `component` ("unet"/"te1"/"te2") in lbw block `block`."""
        base = self.unet if component == "unet" else self.te
        if self._bw_map is None:
            return base
        key = block if component == "unet" else (block if block in self._bw_map else "BASE")  # DiTs: CLIP / T5
        return base * self._bw_map.get(key, 1.0) if key is not None else base

    @property
    def name(self) -> str:
        return str(getattr(self.lora, "name", None) or getattr(self.lora, "path", "?"))
