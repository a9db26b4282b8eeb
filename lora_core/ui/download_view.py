"""The LoRA tab's Download box: static markup that javascript/lora_core_downloads.js brings to life
(it posts to `{prefix}/downloads` and draws the queue with a progress bar per file). No gradio
events: the same HTML works in every gradio the tab builds under (3.41, 4.x, 6.x)."""
from __future__ import annotations

ELEM_DOWNLOADS = "lora_core_downloads"


def downloads_html() -> str:
    return (
        '<div class="lora-core-downloads">'
        '<div class="lora-core-dl-title">Download</div>'
        '<div class="lora-core-dl-form">'
        '<input type="text" id="lora_core_dl_url" class="lora-core-dl-url" autocomplete="off" '
        'placeholder="civitai.com/models/… · urn:air:…:civitai:ID@VER · model id · huggingface.co/…/resolve/…" '
        'aria-label="Link to download">'
        '<input type="text" id="lora_core_dl_folder" class="lora-core-dl-folder" autocomplete="off" '
        'placeholder="sub-folder (optional)" aria-label="Sub-folder of the LoRA folder">'
        '<button type="button" id="lora_core_dl_add" class="lora-core-dl-add">Download</button>'
        '</div>'
        '<div id="lora_core_dl_message" class="lora-core-dl-message" role="status"></div>'
        '<div id="lora_core_dl_list" class="lora-core-dl-list"></div>'
        '</div>'
    )
