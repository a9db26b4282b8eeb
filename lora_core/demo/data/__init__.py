"""Synthetic captioned scenes for the demo model and demo LoRAs, and pixel measurements to check
pictures against captions. numpy + Pillow only (no torch).

    from lora_core.demo.data import BASE, STYLE, CONCEPT, LOCON, held_out_prompts, describe
    for image, caption, truth in BASE.items(seed=0, n=100): ...
    BASE.write("data/", seed=0, n=2000, repeats=1)      # data/1_scenes/0000.png + 0000.txt
    check_scene(generated_image, scene)                  # {"background": True, "shape": False, ...}
"""
from .datasets import (BASE, CONCEPT, COOL, DEMO_LORA_DATASETS, GREEN, HELD_OUT_PAIRS, LOCON, STYLE, WARM, combined,
                       DemoDataset, graded, held_out_prompts, held_out_scenes, is_held_out, write_kohya_folder)
from .measure import (Measured, background_colour, check_scene, components, describe, dominant_colour,
                      fill_ratio, nearest_colour, object_mask, object_mask_by_colour, position_of, shape_of,
                      size_of, stripe_score, texture_score)
from .scenes import COLOURS, POSITIONS, SHAPES, SIZES, Rendered, Scene, render, render_many, scenes

__all__ = [
    "BASE", "CONCEPT", "COLOURS", "COOL", "GREEN", "WARM", "combined", "graded", "DEMO_LORA_DATASETS", "DemoDataset", "HELD_OUT_PAIRS", "LOCON", "Measured", "check_scene", "shape_of",
    "POSITIONS", "Rendered", "SHAPES", "SIZES", "STYLE", "Scene", "background_colour", "components", "describe",
    "dominant_colour", "fill_ratio", "held_out_prompts", "held_out_scenes", "is_held_out", "nearest_colour",
    "object_mask", "object_mask_by_colour", "position_of", "render", "render_many", "scenes", "size_of",
    "stripe_score", "texture_score", "write_kohya_folder",
]
