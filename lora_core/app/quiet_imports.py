"""Quiet imports of diffusers' pipeline classes (shared by pipeline.py and diffusers_folders.py)."""
from __future__ import annotations

import logging
from contextlib import contextmanager


class _NoImageProcessorFallbackNotice(logging.Filter):
    """Drops transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back
    to `CLIPImageProcessorPil`" notices (one for CLIP, one for SigLIP), which importing diffusers'
    pipeline classes triggers when torchvision is absent. lora_core uses no image processor (no
    safety checker, no feature extractor, no IP-Adapter), and torchvision is left out on purpose
    (it would pull a CUDA torch), so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("requires torchvision" in message and "ImageProcessor" in message)


@contextmanager
def quiet_image_processor_fallback():
    """Only around the import that triggers the notice: transformers warns once per process
    (warning_once), so a notice filtered here is not printed later either."""
    target = logging.getLogger("transformers.utils.import_utils")
    notice_filter = _NoImageProcessorFallbackNotice()
    target.addFilter(notice_filter)
    try:
        yield
    finally:
        target.removeFilter(notice_filter)
