"""Static markup of the tab's "Recipe from a picture" drop zone and "Duplicates and updates" box.

Both are plain HTML with no data in it: javascript/lora_core_library_tools.js fills them from the JSON
routes in `lora_core.ui.library_routes` (as text, never as markup).
"""
from __future__ import annotations

ELEM_RECIPE = "lora_core_recipe"
ELEM_TOOLS = "lora_core_library_tools"


def recipe_html() -> str:
    return (
        '<div class="lora-core-recipe">'
        '<div class="lora-core-recipe-zone" tabindex="0" role="button" '
        'aria-label="Drop a picture to read its prompt and LoRAs">'
        "<b>Recipe from a picture:</b> drop a PNG, JPEG or WebP here (or click to pick one). "
        "Its prompt and LoRAs come back (A1111/Forge, Civitai and ComfyUI pictures); "
        "LoRAs you do not have are listed with a download when Civitai knows them."
        '<input type="file" class="lora-core-recipe-file" accept="image/png,image/jpeg,image/webp" hidden>'
        "</div>"
        '<div class="lora-core-recipe-result" aria-live="polite"></div>'
        "</div>"
    )


def tools_html() -> str:
    return (
        '<details class="lora-core-tools"><summary>Duplicates and updates</summary>'
        '<div class="lora-core-tools-buttons">'
        '<button type="button" class="lora-core-dupes-find">Find duplicates</button>'
        '<button type="button" class="lora-core-updates-check">Check Civitai for newer versions</button>'
        '<button type="button" class="lora-core-updates-show">Show LoRAs with a newer version</button>'
        "</div>"
        '<div class="lora-core-tools-status" aria-live="polite"></div>'
        '<div class="lora-core-dupes-list"></div>'
        '<div class="lora-core-updates-list"></div>'
        "</details>"
    )
