"""LyCORIS (KohakuBlueleaf) wrapping a diffusers model, as SimpleTuner and LyCORIS' own scripts
save it: `lycoris_` + the wrapped model's module path flattened (diffusers names for Flux/SD3:
`lycoris_transformer_blocks_0_attn_to_q.lokr_w1`), any LyCORIS algorithm (LoCon, LoHa, LoKr, ...)."""
from __future__ import annotations

from .base import Layout


class Lycoris(Layout):
    name = "lycoris"
    label = "LyCORIS / SimpleTuner (lycoris_)"

    def owns(self, key):
        return key.startswith("lycoris_")


LAYOUT = Lycoris()
