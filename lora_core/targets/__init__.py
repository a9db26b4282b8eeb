"""Bind canonical module keys (``unet:…``, ``te1:…``, ``te2:…``) to the tensors of a loaded model.

``naming`` (pure strings, no torch) holds the diffusers <-> LDM and HF CLIP <-> OpenCLIP name maps
and the lbw block ids; ``Binding`` resolves a key to a ``Slot`` holding the live tensor.
"""
from .binding import Binding, Slot

__all__ = ["Binding", "Slot"]
