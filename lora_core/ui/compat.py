"""The few places where gradio 3.41 (A1111) and gradio 4+/6 (standalone) differ, in one spot.

Everything else in `lora_core.ui` uses only APIs present in both: Blocks, Row, Column, Textbox,
Button, HTML, Dropdown, Checkbox, Number, Slider and `gr.update`.
"""
from __future__ import annotations

from typing import Any


def gradio_major(gr: Any) -> int:
    """Major version of the imported gradio module (3 under A1111 1.x, 6 in the standalone)."""
    try:
        return int(str(gr.__version__).split(".", 1)[0])
    except (AttributeError, ValueError):
        return 0


def update(gr: Any, **kwargs: Any) -> Any:
    """A property update for any component; `gr.update` exists in 3.41 and 6.x alike."""
    return gr.update(**kwargs)


def hidden_classes() -> list[str]:
    """CSS classes for a component JS must reach but users must not see.

    gradio 4+ does not put `visible=False` components into the DOM at all, so the bridge textbox
    and button stay "visible" and are hidden by style.css instead (works in 3.41 as well).
    """
    return ["lora-core-hidden"]


def image_gallery_kwargs(gr: Any) -> dict[str, Any]:
    """Gallery kwargs that keep output images lossless (PNG) where the version supports it."""
    if gradio_major(gr) >= 4:
        return {"format": "png"}
    return {}
