"""Builds lora_core's A1111 UI under gradio 3.41.2 without torch (run by .ci/gradio3_check.sh).

The extension is loaded into the A1111 stand-in (tests/a1111_standin) exactly as the webui loads
it, next to a fake built-in Lora extension; then the UI is built as the webui builds it: the
extension tabs, every lora_core setting as the settings page would create it, the Lora cards
page, the gradio config of the whole page; then every event of the tab runs once through gradio's
own processing, and the JSON routes answer. Exits non-zero on any problem.
"""
import importlib.util
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "a1111_standin"))


def lora_file(path, metadata):
    header = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]},
        "__metadata__": metadata,
    }
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))


def settings_components(gr, opts):
    """What the webui's settings page does for each option: its component, or one by type."""
    built = []
    with gr.Blocks():
        for key, info in opts.data_labels.items():
            if not key.startswith("lora_core_"):
                continue
            args = info.component_args() if callable(info.component_args) else (info.component_args or {})
            component = info.component
            if component is None:
                component = {bool: gr.Checkbox, int: gr.Number, float: gr.Number}.get(type(info.default), gr.Textbox)
            built.append(component(label=info.label, value=getattr(opts, key), elem_id="setting_" + key, **args))
    return built


def demo_events(demo):
    return len(demo.dependencies)


def run_events(demo):
    """Runs every event handler of the page once with the components' current values, through
    gradio's own pre/post-processing (what a click in the browser does). Returns failures."""
    import asyncio

    async def run():
        failures = []
        for index, dep in enumerate(demo.dependencies):
            inputs = [demo.blocks[cid].value for cid in dep["inputs"]]
            try:
                await demo.process_api(fn_index=index, inputs=inputs, state={})
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(f"event {index} ({dep.get('trigger')}): {type(exc).__name__}: {exc}")
        return failures

    return asyncio.run(run())


def main():
    start = time.perf_counter()
    import gradio as gr

    assert gr.__version__ == "3.41.2", f"expected gradio 3.41.2, got {gr.__version__}"
    assert importlib.util.find_spec("torch") is None, "torch must not be installed in this venv"
    import webui_harness

    with tempfile.TemporaryDirectory() as tmp:
        lora_dir = Path(tmp) / "models" / "Lora"
        lora_file(lora_dir / "style_a.safetensors", {"ss_base_model_version": "sd_v1", "ss_output_name": "styleA"})
        lora_file(lora_dir / "xl" / "detail.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
        w = webui_harness.launch(tmp, builtin=True, build_ui=True)
        assert not w.m.errors.recorded, w.m.errors.recorded
        assert [(label, elem_id) for _, label, elem_id in w.tabs] == [("LoRA", "lora_core_tab")], w.tabs
        assert isinstance(w.tabs[0][0], gr.Blocks)
        config = w.demo.get_config_file()
        assert len(config["components"]) > 10, "the page has too few components"
        assert len(settings_components(gr, w.m.shared.opts)) >= 6
        assert demo_events(w.demo) > 5, "the tab wires too few events"
        # The events include "Fetch missing from Civitai": point it at a closed loopback port so
        # the check never talks to the internet (the request is refused at once).
        w.m.shared.opts.lora_core_civitai_url = "http://127.0.0.1:9"
        failures = run_events(w.demo)
        assert not failures, failures

        page = next(p for p in w.m.ui_extra_networks.extra_pages if p.name == "lora")
        page.populate("txt2img")
        assert set(page.items) == {"style_a", "detail"}, sorted(page.items)

        from fastapi.testclient import TestClient

        client = TestClient(w.app)
        names = sorted(x["name"] for x in client.get("/sdapi/v1/loras").json())
        assert names == ["detail", "style_a"], names
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        w.close()
    assert "torch" not in sys.modules
    print(f"gradio {gr.__version__}: lora_core A1111 tab (events included), settings, cards page and routes OK "
          f"({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
