"""The T5-XXL text encoder (Flux, SD3): one namespace only, HF ``T5EncoderModel``'s
(``encoder.block.0.layer.0.SelfAttention.q``), which diffusers, single-file checkpoints
(``text_encoders.t5xxl.transformer.``) and Forge (``t5xxl.transformer.``) all use. Its canonical
component is ``te3``. Pure strings.
"""
from __future__ import annotations

T5_COMPONENT = "te3"
T5_NAMESPACE = "t5"
# A parameter name that only a T5 encoder has (tells a T5 apart from a CLIP in a list of encoders).
T5_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight")


def is_t5(names) -> bool:
    names = set(names)
    return any(m in names for m in T5_MARKERS) or any(n.startswith("encoder.block.") for n in names)
