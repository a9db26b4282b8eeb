"""A gradio 3.41 page shaped like A1111's, for the browser test of the JS in A1111's DOM.

Run with the gradio 3.41.2 venv: `python tests/ui/g3_page.py LORA_DIR DATA_DIR PORT`. It has the
txt2img/img2img prompt boxes with A1111's elem_ids, an "echo" button per tab that sends the prompt
to Python and back (proving gradio saw the JS edit), and the LoRA tab built by
`lora_core.ui.build_lora_tab` and rendered into a tab the way A1111 renders on_ui_tabs Blocks.
The JS and CSS are not loaded here: the test injects them like A1111 does.
"""
from __future__ import annotations

import sys
import time

import gradio as gr

from lora_core.ui.api import register_routes
from lora_core.library import Library
from lora_core.ui import TabSettings, build_lora_tab


def main(lora_dir: str, data_dir: str, port: int) -> None:
    library = Library([lora_dir], data_dir=data_dir)
    library.scan()
    lora_tab = build_lora_tab(lambda: library, TabSettings(current_family=lambda: "sd1"))
    with gr.Blocks(analytics_enabled=False) as demo:
        with gr.Tabs():
            for mode in ("txt2img", "img2img"):
                with gr.Tab(mode, elem_id=f"tab_{mode}"):
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{mode}_prompt")
                    echo = gr.Button("echo", elem_id=f"{mode}_echo")
                    echoed = gr.Textbox(label="seen by Python", elem_id=f"{mode}_echoed")
                    echo.click(lambda text: text, inputs=[prompt], outputs=[echoed])
            with gr.Tab("LoRA", elem_id="tab_lora_core_tab"):
                lora_tab.render()
    demo.queue()
    # A1111 adds its routes to the app launch() returns (script_callbacks.on_app_started).
    app, _local_url, _share_url = demo.launch(server_name="127.0.0.1", server_port=port,
                                              prevent_thread_lock=True, show_error=True)
    register_routes(app, lambda: library)
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
