"""`python -m lora_core serve`: the standalone web UI (txt2img + the LoRA tab) and the REST API.

The page is a gradio app mounted on a FastAPI app that also carries `lora_core.ui.api`'s routes;
`javascript/lora_core.js` and `style.css` are the same files A1111 loads from the extension.
Binds 127.0.0.1 unless --host says otherwise. Heavy imports (torch, diffusers, gradio) happen in
`run()` / `build_*()` only, so `python -m lora_core --help` stays fast.
"""
from __future__ import annotations

import argparse
import html
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_core.app import placement

if TYPE_CHECKING:
    from lora_core.app.session import Session

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
API_PREFIX = "/lora_core/api"
PROMPT_ELEM_ID = "txt2img_prompt"        # same ids as A1111, so javascript/lora_core.js finds them
NEGATIVE_ELEM_ID = "txt2img_neg_prompt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    from lora_core.library.locations import add_location_arguments

    add_location_arguments(parser)
    parser.add_argument("--data-dir", default=None, help="index, thumbnails and caches (default: data)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to load first; one that cannot be loaded stops the server "
                             "(default: the first one, or the demo model)")
    parser.add_argument("--civitai-url", default="https://civitai.com", help="Civitai base URL (default https://civitai.com)")
    parser.add_argument("--civitai-key", default=None,
                        help="Civitai API key (default: the CIVITAI_API_KEY environment variable)")
    parser.add_argument("--nsfw-threshold", default="PG13", choices=["PG", "PG13", "R", "X", "XXX", "show all"],
                        help="previews rated above this are blurred and not downloaded (default PG13)")
    parser.add_argument("--no-civitai", action="store_true", help="never contact Civitai")
    placement.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lora_core.app.placement import PlacementError, from_args
    from lora_core.app.session import CheckpointLoadError, Session
    from lora_core.library.locations import lora_dirs

    models_dir = Path(args.models_dir)
    data_dir = Path(args.data_dir) if args.data_dir else Path("data")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        placement = from_args(args)
    except PlacementError as exc:
        log.error("%s", exc)
        return 2
    try:
        session = Session(models_dir, data_dir, checkpoint=args.checkpoint, lora_dirs=lora_dirs(args),
                          strict=args.checkpoint is not None, placement=placement)
    except CheckpointLoadError as exc:
        log.error("%s", exc)
        return 2
    app = build_app(session, civitai=civitai_settings_from_args(args))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the UI", args.host)
    print(f"lora_core: open http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=int(args.port), log_level="warning")
    return 0


# The UI reads a `Session` (lora_core.app.session) directly: .library, .pipeline (the loaded
# PipelineHandle), .family, .messages, .models_dir, .checkpoints(), .current_checkpoint(),
# .switch_checkpoint(name) -> notes, .rescan(), .engine.

def _is_demo(session: Session) -> bool:
    return session.pipeline is not None and session.pipeline.is_demo


def demo_banner_html(session: Session, models_dir: str | os.PathLike | None = None) -> str:
    """A plain statement that the demo model is loaded and where a real checkpoint goes ('' otherwise)."""
    if not _is_demo(session):
        return ""
    folder = Path(models_dir or session.models_dir) / "Stable-diffusion"
    return (
        '<div class="lora-core-demo-banner" id="lora_core_demo_notice"><b>Demo model loaded.</b> '
        "This is a tiny model built into lora_core for trying the app out; it makes small abstract "
        "pictures, not real Stable Diffusion images. To use a real model, put a checkpoint "
        "(<code>.safetensors</code>, SD1/SD2/SDXL, or a diffusers-format Flux/SD3 folder) in "
        f"<code>{html.escape(str(folder))}</code>, then "
        "press ↻ next to the Checkpoint list and pick it.</div>"
    )


def model_banner_html(session: Session, models_dir: str | os.PathLike | None = None) -> str:
    """The banner: the demo model's notice, or which model is loaded and, for Flux/SD3, how it reads
    the settings (flow samplers, what the CFG scale means, no prompt weights)."""
    if _is_demo(session):
        return demo_banner_html(session, models_dir)
    handle = session.pipeline
    if handle is None:
        return ""
    from lora_core.app.samplers import FLOW_FAMILIES, sampler_names

    text = f"<b>Model:</b> {html.escape(handle.label)}"
    if handle.family in FLOW_FAMILIES:
        name = "Flux" if handle.family == "flux" else "SD3"
        guidance = ("CFG scale is Flux's distilled guidance (default 3.5) and there is no negative prompt"
                    if handle.family == "flux" else "CFG scale and negative prompt as usual")
        text += (f". {name} model: samplers {', '.join(sampler_names(handle.family))}; {guidance}; "
                 "prompt weights (word:1.2) and BREAK are not applied.")
    return f'<div class="lora-core-model-banner" id="lora_core_model_notice">{text}</div>'


def civitai_settings_from_args(args: argparse.Namespace) -> Any:
    from lora_core.library.civitai_sync import settings_from_env

    return settings_from_env(getattr(args, "civitai_url", None), getattr(args, "civitai_key", None),
                             getattr(args, "nsfw_threshold", None), enabled=not getattr(args, "no_civitai", False))


def session_match_counts(session: Session, path: str) -> tuple[int, int] | None:
    """(matched, unmatched) modules of the LoRA at `path` against the loaded model (None: no model).
    The file is read through the engine's LoRA cache, so a later generation reuses it."""
    engine = session.engine
    if engine is None:
        return None
    lora = engine.cache.get(path)
    return engine.binding.match(lora)


# -- UI ------------------------------------------------------------------------------------------

def _default_size(session: Session) -> int:
    return int(session.pipeline.default_size)


def _sampler_names(session: Session | None = None) -> tuple[list[str], str]:
    """The loaded model's samplers and its default (SD's list for no session)."""
    from lora_core.app.samplers import default_sampler, sampler_names

    family = session.family if session is not None else None
    return sampler_names(family), default_sampler(family)


def _default_cfg(session: Session) -> float:
    return float(getattr(session.pipeline, "default_cfg", 7.0))


def _messages_html(messages: list[str], run_id: float | None = None) -> str:
    """Status lines under the image. data-run changes with every generation (scripts and tests can
    tell a finished run from the previous one even when the images are identical)."""
    if not messages and run_id is None:
        return ""
    items = "".join(f"<li>{html.escape(str(m))}</li>" for m in messages)
    run = f' data-run="{run_id!r}"' if run_id is not None else ""
    return f'<ul class="lora-core-messages"{run}>{items}</ul>'


# What the demo model can draw (a scene of its training captions) with a demo LoRA and its trigger
# word: the prompt box's placeholder while the demo model is loaded, and the README's example.
DEMO_EXAMPLE_PROMPT = "a large red circle on a white background, in the center, lcstripes <lora:demo_stripes:1>"
# Start-up notes about something done once ("Wrote 6 demo LoRAs to ..."): shown on the first page
# load only, not on every load for as long as the server runs.
_ONE_TIME_NOTE = re.compile(r"^Wrote \d+ demo LoRAs? ")
# Images up to this many pixels a side are drawn with nearest-neighbour scaling (crisp, not blurred).
SMALL_IMAGE_SIDE = 256


def prompt_placeholder(session: Session) -> str:
    if _is_demo(session):
        return f"{DEMO_EXAMPLE_PROMPT}   (the demo model draws coloured shapes; type <lora: for suggestions)"
    return "a photo of a cat <lora:name:0.8>   (type <lora: for suggestions)"


def gallery_columns(count: int) -> int:
    """As many columns as rows (1, 2x2, 3x3, ...): with square cells and style.css letting the
    gallery grow to its grid, every image of any batch is shown whole, none in a scrolled-off row."""
    return max(1, math.ceil(math.sqrt(max(1, int(count)))))


def gallery_classes(width: int, height: int) -> list[str]:
    """CSS classes of the result gallery: style.css shows images whole, small ones pixel-sharp."""
    small = max(int(width), int(height)) <= SMALL_IMAGE_SIDE
    return ["lora-core-gallery"] + (["lora-core-gallery-small"] if small else [])


def checkpoint_label(session: Session) -> str:
    """The picker's label says where the model runs (`--device`/`--precision`): `Checkpoint (cpu,
    float32)`, `Checkpoint (cuda:0, float16)`."""
    where = getattr(session.pipeline, "device_label", None)
    return f"Checkpoint ({where})" if where else "Checkpoint"


class SessionNotes:
    """The checkpoint status line's notes: the session's current notes (start-up, or the last
    checkpoint switch) without the model's own label, each one-time note shown once only."""

    def __init__(self, session: Session):
        self.session = session
        self._shown: set[str] = set()

    def once(self, notes: list[str]) -> list[str]:
        out = []
        for note in notes:
            if _ONE_TIME_NOTE.match(note):
                if note in self._shown:
                    continue
                self._shown.add(note)
            out.append(note)
        return out

    def current(self) -> list[str]:
        label = getattr(self.session.pipeline, "label", None)
        notes = [str(m) for m in self.session.messages if m != label]
        return self.once(notes)


PASTE_FIELDS = ["prompt", "negative", "steps", "cfg", "seed", "width", "height", "sampler"]


def apply_pasted(text: str, current: list, samplers: list[str], library: Any = None) -> tuple[list, list[str]]:
    """New values for PASTE_FIELDS from pasted A1111 parameters, and notes for the user.

    Fields the text does not mention keep their `current` value. `<lora:name:...>` tags whose
    `Lora hashes` entry matches a local file (by AutoV3/sha256 prefix) are renamed to that file.
    """
    from lora_core.app import infotext as infotext_mod
    from lora_core.ui.controller import resolve_tag_name

    if not text or not text.strip():
        return list(current), ["Nothing to paste."]
    parsed = infotext_mod.parse_infotext(text)
    fields = parsed.generation_fields()
    notes: list[str] = []
    prompt = fields.get("prompt", "")
    hashes = parsed.lora_hashes()
    if hashes and library is not None:
        def name_for_hash(short: str) -> str | None:
            try:
                found = library.by_hash(short)
            except Exception:  # noqa: BLE001 - unknown hash: keep the pasted name
                return None
            if isinstance(found, (list, tuple)):
                found = found[0] if len(found) == 1 else None
            return resolve_tag_name(library, found)[0] if found is not None else None

        prompt, notes = infotext_mod.relink_loras(prompt, hashes, name_for_hash)
    values = {**fields, "prompt": prompt}
    out = []
    for key, cur in zip(PASTE_FIELDS, current):
        value = values.get(key, cur)
        if key == "sampler" and value not in samplers:
            notes.append(f"unknown sampler {value!r}; kept {cur!r}")
            value = cur
        out.append(value)
    return out, notes


def build_blocks(session: Session, models_dir: str | os.PathLike | None = None, civitai: Any = None) -> Any:
    """The standalone page: checkpoint picker, demo banner, txt2img tab and the LoRA tab."""
    import gradio as gr

    from lora_core.library import base_models
    from lora_core.ui import TabSettings, create_lora_panel

    samplers, default_sampler = _sampler_names(session)
    size = _default_size(session)
    settings = TabSettings(current_family=lambda: session.family, api_prefix=API_PREFIX,
                           rescan=session.rescan, civitai=civitai,
                           match_counts=lambda path: session_match_counts(session, path),
                           current_base_model=lambda: base_models.from_name(session.current_checkpoint()))

    with gr.Blocks(title="lora_core", analytics_enabled=False) as demo:
        banner = gr.HTML(value=model_banner_html(session, models_dir), elem_id="lora_core_banner")
        with gr.Row():
            checkpoints = session.checkpoints()
            current = session.current_checkpoint()
            ckpt = gr.Dropdown(choices=checkpoints, value=current if current in checkpoints else None,
                               label=checkpoint_label(session), elem_id="lora_core_checkpoint", scale=4,
                               allow_custom_value=False)
            ckpt_refresh = gr.Button("↻", elem_id="lora_core_checkpoint_refresh", scale=0, min_width=50)
        # Its own full-width line (wraps, never clipped); filled by the page load below.
        ckpt_status = gr.HTML(value="", elem_id="lora_core_checkpoint_status")
        status_notes = SessionNotes(session)
        with gr.Tabs():
            # render_children: keep the hidden tab's prompt box in the page, so a card clicked in the
            # LoRA tab can insert its tag into it (javascript/lora_core.js looks it up by id).
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img", render_children=True):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=PROMPT_ELEM_ID,
                                            placeholder=prompt_placeholder(session))
                        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=NEGATIVE_ELEM_ID)
                    with gr.Column(scale=1, min_width=160):
                        generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                with gr.Row():
                    with gr.Column(scale=1):
                        sampler = gr.Dropdown(choices=samplers, value=default_sampler, label="Sampler",
                                              elem_id="txt2img_sampling")
                        steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="txt2img_steps")
                        cfg = gr.Slider(0.0, 30.0, value=_default_cfg(session), step=0.5, label="CFG scale", elem_id="txt2img_cfg_scale")
                        with gr.Row():
                            width = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id="txt2img_width")
                            height = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id="txt2img_height")
                        with gr.Row():
                            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="txt2img_seed")
                            batch = gr.Slider(1, 16, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                        paste = gr.Textbox(label="Paste parameters (A1111 infotext)", lines=3,
                                           elem_id="txt2img_paste_box")
                        paste_btn = gr.Button("Apply pasted parameters", elem_id="txt2img_paste")
                    with gr.Column(scale=1):
                        # contain: every image whole at any size and batch (style.css; small ones crisp)
                        gallery = gr.Gallery(label="Images", elem_id="txt2img_gallery", columns=1, format="png",
                                             object_fit="contain", height="auto",
                                             elem_classes=gallery_classes(size, size))
                        info = gr.Textbox(label="Generation info", lines=3, interactive=False, elem_id="txt2img_info")
                        messages = gr.HTML(value="", elem_id="txt2img_messages")
            with gr.Tab("LoRA", id="lora", elem_id="tab_lora", render_children=True):
                panel = create_lora_panel(lambda: session.library, settings)

        def on_generate(p, n, st, c, sd, w, h, sm, bc, progress=gr.Progress()):
            def cb(step, total):
                progress((int(step), int(total)), desc="Sampling")

            started = time.perf_counter()
            try:
                images, text, msgs = session.txt2img(
                    p or "", n or "", int(st), float(c), int(sd if sd is not None else -1),
                    int(w), int(h), sm, int(bc), progress=cb,
                )
            except Exception as exc:  # noqa: BLE001 - show the reason, keep the app alive
                log.exception("generation failed")
                return [], "", _messages_html([f"Generation failed: {exc}"], started)
            images = list(images)
            done = f"{len(images)} image(s) in {time.perf_counter() - started:.1f} s"
            shown = gr.update(value=images, columns=gallery_columns(len(images)),
                              elem_classes=gallery_classes(int(w), int(h)))
            return shown, text or "", _messages_html([done, *list(msgs or [])], started)

        generate.click(on_generate, inputs=[prompt, negative, steps, cfg, seed, width, height, sampler, batch],
                       outputs=[gallery, info, messages])
        prompt.submit(on_generate, inputs=[prompt, negative, steps, cfg, seed, width, height, sampler, batch],
                      outputs=[gallery, info, messages])

        def on_paste(text, *current):
            values, notes = apply_pasted(text, list(current), _sampler_names(session)[0], session.library)
            return [*values, _messages_html(notes)]

        paste_btn.click(on_paste, inputs=[paste, prompt, negative, steps, cfg, seed, width, height, sampler],
                        outputs=[prompt, negative, steps, cfg, seed, width, height, sampler, messages])

        def on_ckpt_refresh():
            names = session.checkpoints()
            cur = session.current_checkpoint()
            return gr.update(choices=names, value=cur if cur in names else None)

        ckpt_refresh.click(on_ckpt_refresh, outputs=[ckpt])

        def on_ckpt_change(name, current_sampler, current_cfg):
            """Switch models; the picker then shows what is really loaded (the old model on failure).
            The sampler list follows the model's family (the chosen one kept where it applies), and
            the CFG scale moves to the new model's default when that differs from the old one's."""
            if not name or name == session.current_checkpoint():
                return (gr.update(),) * 8
            cfg_before = _default_cfg(session)
            try:
                notes = session.switch_checkpoint(name)
            except Exception as exc:  # noqa: BLE001 - the session reports failures itself; belt and braces
                log.exception("switching checkpoint failed")
                notes = [f"Could not load {name}: {exc}"]
            loaded = session.current_checkpoint()
            label = session.pipeline.label
            notes = [f"Loaded: {loaded}."] + status_notes.once([n for n in notes if n != label])
            size = _default_size(session)
            names, default = _sampler_names(session)
            cfg_now = _default_cfg(session)
            return (model_banner_html(session, models_dir), _messages_html(notes), size, size,
                    gr.update(choices=session.checkpoints(), value=loaded, label=checkpoint_label(session)),
                    gr.update(placeholder=prompt_placeholder(session)),
                    gr.update(choices=names, value=current_sampler if current_sampler in names else default),
                    gr.update(value=cfg_now) if cfg_now != cfg_before else gr.update())

        # .input (user picks only): the picker's own reset to the loaded model must not re-trigger it
        ckpt.input(on_ckpt_change, inputs=[ckpt, sampler, cfg],
                   outputs=[banner, ckpt_status, width, height, ckpt, prompt, sampler, cfg])
        demo.load(lambda: _messages_html(status_notes.current()), outputs=[ckpt_status])
        panel.attach_load(demo)
    return demo


def page_head() -> str:
    """Loads the extension's own JS into the standalone page (A1111 injects it by itself)."""
    return '<script src="/lora_core/static/lora_core.js" defer></script>'


def read_css() -> str:
    return (ROOT / "style.css").read_text(encoding="utf-8")


def build_app(session: Session, models_dir: str | os.PathLike | None = None, civitai: Any = None) -> Any:
    """FastAPI app with the REST routes and the gradio page mounted at /.

    civitai: `CivitaiSettings` (default: civitai.com, key from CIVITAI_API_KEY, threshold PG13)."""
    from lora_core.library.civitai_sync import CivitaiSync, settings_from_env
    import gradio as gr
    from fastapi import FastAPI

    from lora_core.ui.api import register_routes

    app = FastAPI(title="lora_core")
    civitai_settings = civitai if civitai is not None else settings_from_env()
    sync = CivitaiSync(lambda: session.library, lambda: civitai_settings)
    register_routes(app, lambda: session.library, prefix=API_PREFIX, rescan=session.rescan, civitai=sync)
    blocks = build_blocks(session, models_dir or session.models_dir, civitai=sync)
    return gr.mount_gradio_app(app, blocks, path="/", css=read_css(), head=page_head(),
                               footer_links=[])


if __name__ == "__main__":  # `python -m lora_core.app.serve ...`: the same as `python -m lora_core serve ...`
    import sys

    _parser = argparse.ArgumentParser(prog="python -m lora_core.app.serve", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    sys.exit(run(_parser.parse_args()))
