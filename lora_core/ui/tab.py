"""The LoRA browsing tab as gradio components. Builds under gradio 3.41.2 (A1111) and 6.x.

Hosts call one of:

* `build_lora_tab(library_provider, settings) -> gr.Blocks`: a self-contained Blocks, for
  A1111's `script_callbacks.on_ui_tabs` (return `[(build_lora_tab(...), "LoRA", "lora_core_tab")]`).
* `create_lora_panel(library_provider, settings) -> LoraPanel`: the same components created inside
  the caller's current Blocks/Tab context (the standalone app nests it in its own tab).

`library_provider` is a zero-argument callable returning the `lora_core.library.Library` to browse;
it is called on every event, so a host may replace the library (e.g. after changing folders).
`settings` is a `TabSettings` (page size, a callable giving the loaded checkpoint's family for the
default family filter, and the URL prefix where `lora_core.ui.api.register_routes` put the JSON
routes that serve thumbnails). The page also needs `javascript/lora_core.js` (A1111 injects it;
the standalone adds it to the page head) and `style.css` (A1111 loads it; the standalone passes it
as css): the JS inserts tags into the prompt on card clicks and relays the card's ☆/ⓘ buttons to
the hidden bridge components below.

Only APIs shared by gradio 3.41 and 6.x are used; version differences live in `lora_core.ui.compat`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from lora_core.ui import compat
from lora_core.ui.controller import (
    ALL_FOLDERS,
    CHECKPOINT_FAMILY,
    EDITABLE_KEYS,
    FAMILIES,
    SORTS,
    LoraTabController,
    Query,
    TabSettings,
)
from lora_core.ui import download_view, library_tools_view, render

log = logging.getLogger(__name__)

# Element ids the JS relies on (javascript/lora_core.js); keep both in sync.
ELEM_GRID = "lora_core_grid"
ELEM_ACTION = "lora_core_action"
ELEM_ACTION_BUTTON = "lora_core_action_btn"
ELEM_ACTIVATION = "lora_core_edit_activation"
ELEM_CIVITAI_ALL = "lora_core_civitai_all"
ELEM_STACK_NAME = "lora_core_stack_name"
ELEM_STACK_SAVE = "lora_core_stack_save"


@dataclass
class LoraPanel:
    """Handles to the tab's components, for hosts that want to hook more events."""

    controller: LoraTabController
    search: Any
    grid: Any
    details: Any
    page: Any
    page_label: Any
    refresh_button: Any
    query_inputs: list
    load_fn: Callable[..., Any]
    load_outputs: list

    def attach_load(self, blocks: Any) -> None:
        """Re-run the query whenever the page loads, so a reload shows the current library.
        Call it inside the `with blocks:` context."""
        blocks.load(self.load_fn, inputs=self.query_inputs, outputs=self.load_outputs)


def build_lora_tab(library_provider: Callable[[], Any], settings: TabSettings | None = None) -> Any:
    """A gr.Blocks holding the whole LoRA tab (for A1111's on_ui_tabs). See the module docstring."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        panel = create_lora_panel(library_provider, settings)
        try:
            panel.attach_load(tab)
        except Exception:  # noqa: BLE001 - a host whose Blocks cannot take load events still works
            log.warning("could not attach a load event to the LoRA tab", exc_info=True)
    return tab


def create_lora_panel(library_provider: Callable[[], Any], settings: TabSettings | None = None) -> LoraPanel:
    """Create the tab's components in the current gradio context and wire their events."""
    import gradio as gr

    ctl = LoraTabController(library_provider, settings)
    hidden = compat.hidden_classes()
    first = ctl.query(Query())
    try:
        folder_choices = ctl.folders()
    except Exception:  # noqa: BLE001 - library not ready at build time: the refresh fills it
        folder_choices = [ALL_FOLDERS]

    with gr.Column(elem_id="lora_core_panel", elem_classes=["lora-core-panel"]):
        with gr.Row():
            search = gr.Textbox(
                label="Search",
                placeholder='name, alias, path, trigger words, training tags, "a phrase"',
                elem_id="lora_core_search", scale=4,
            )
            search_btn = gr.Button("Search", elem_id="lora_core_search_btn", scale=1, size="sm", variant="primary")
            refresh_btn = gr.Button("Rescan folders", elem_id="lora_core_refresh", scale=1, size="sm")
            civitai_all_btn = gr.Button("Fetch missing from Civitai", elem_id=ELEM_CIVITAI_ALL, scale=1, size="sm")
        civitai_progress = gr.HTML(value=_civitai_html(ctl.civitai_status()), elem_id="lora_core_civitai_progress")
        with gr.Row():
            sort = gr.Dropdown(choices=SORTS, value="name", label="Sort by", elem_id="lora_core_sort")
            folder = gr.Dropdown(choices=folder_choices, value=ALL_FOLDERS, label="Folder", elem_id="lora_core_folder")
            family = gr.Dropdown(choices=FAMILIES, value=CHECKPOINT_FAMILY, label="Family", elem_id="lora_core_family")
            show_all = gr.Checkbox(value=False, label="Show all families", elem_id="lora_core_show_all")
            favorites_only = gr.Checkbox(value=False, label="Favorites only", elem_id="lora_core_favorites_only")
        # One line: ◀ Prev [page] Next ▶ "1–48 of 120 LoRAs · page 1/3" (style.css centres it).
        with gr.Row(elem_id="lora_core_pager"):
            prev_btn = gr.Button("◀ Prev", elem_id="lora_core_prev", scale=0, min_width=90, size="sm")
            page = gr.Number(value=1, precision=0, label="Page", show_label=False, container=False,
                             elem_id="lora_core_page", scale=0, min_width=80)
            next_btn = gr.Button("Next ▶", elem_id="lora_core_next", scale=0, min_width=90, size="sm")
            page_label = gr.HTML(value=_label_html(first.label), elem_id="lora_core_page_label")
        with gr.Row():
            with gr.Column(scale=3):
                grid = gr.HTML(value=first.html, elem_id=ELEM_GRID)
            with gr.Column(scale=2, elem_id="lora_core_details_column"):
                details = gr.HTML(value=render.render_details(None), elem_id="lora_core_details")
                # The editor appears once a card's details are open: before that it would edit nothing.
                with gr.Column(visible=False, elem_id="lora_core_editor") as editor_box:
                    ed_description = gr.Textbox(label="Description", lines=2, elem_id="lora_core_edit_description")
                    ed_activation = gr.Textbox(label="Activation text (trigger words)", lines=2, elem_id=ELEM_ACTIVATION)
                    ed_weight = gr.Slider(minimum=0.0, maximum=2.0, step=0.05, value=1.0,
                                          label="Preferred weight", elem_id="lora_core_edit_weight")
                    ed_negative = gr.Textbox(label="Negative text", lines=1, elem_id="lora_core_edit_negative")
                    ed_notes = gr.Textbox(label="Notes", lines=2, elem_id="lora_core_edit_notes")
                    ed_tags = gr.Textbox(label="Your tags (comma-separated; search finds them)", lines=1,
                                         elem_id="lora_core_edit_tags")
                    with gr.Row():
                        save_btn = gr.Button("Save user metadata", elem_id="lora_core_save", size="sm", variant="primary")
                        civitai_btn = gr.Button("Fetch from Civitai", elem_id="lora_core_civitai_fetch", size="sm")
                status = gr.HTML(value="", elem_id="lora_core_status")
                gr.HTML(value='<h4 class="lora-core-stacks-title">Saved stacks</h4>', elem_id="lora_core_stacks_title")
                with gr.Row():
                    gr.Textbox(label="Stack name", lines=1, elem_id=ELEM_STACK_NAME, scale=3)
                    # No Python event: lora_core.js catches the click, reads the prompt box and sends
                    # {"action": "stack_save", "key": name, "prompt": text} through the bridge.
                    gr.Button("Save prompt's LoRAs", elem_id=ELEM_STACK_SAVE, size="sm", scale=1)
                stacks = gr.HTML(value=ctl.stacks_html(), elem_id="lora_core_stacks")
        # Below the cards, so the grid stays right under the search and filters.
        # Download box: plain markup, driven by javascript/lora_core_downloads.js over {prefix}/downloads
        gr.HTML(value=download_view.downloads_html(), elem_id=download_view.ELEM_DOWNLOADS)
        # Recipe drop zone + duplicates/updates box: plain markup, driven by
        # javascript/lora_core_library_tools.js over the routes of lora_core/ui/library_routes.py
        gr.HTML(value=library_tools_view.recipe_html(), elem_id=library_tools_view.ELEM_RECIPE)
        gr.HTML(value=library_tools_view.tools_html(), elem_id=library_tools_view.ELEM_TOOLS)
        # Bridge for the card buttons: JS writes {"action", "key"} JSON and clicks the button.
        action = gr.Textbox(value="", elem_id=ELEM_ACTION, elem_classes=hidden, show_label=False)
        action_btn = gr.Button("action", elem_id=ELEM_ACTION_BUTTON, elem_classes=hidden)
        selected = gr.State("")

    query_inputs = [search, sort, folder, family, show_all, favorites_only, page]
    editor = [ed_description, ed_activation, ed_weight, ed_negative, ed_notes, ed_tags]
    editor_keys = [*EDITABLE_KEYS, "user tags"]

    def _run(search_v, sort_v, folder_v, family_v, show_all_v, fav_v, page_v):
        result = ctl.query(Query(
            search=search_v or "", sort=sort_v or "name", folder=folder_v or ALL_FOLDERS,
            family=family_v or CHECKPOINT_FAMILY, show_all_families=bool(show_all_v),
            favorites_only=bool(fav_v), page=_int(page_v),
        ))
        return result.html, _label_html(result.label), result.page

    grid_outputs = [grid, page_label, page]

    def on_filter(*values):  # a new search/filter starts at page 1
        return _run(*values[:-1], 1)

    def on_prev(*values):
        return _run(*values[:-1], max(1, _int(values[-1]) - 1))

    def on_next(*values):
        return _run(*values[:-1], _int(values[-1]) + 1)

    def on_refresh(*values):
        message = ctl.refresh()
        html, label, page_v = _run(*values)
        return html, label, page_v, compat.update(gr, choices=ctl.folders()), _status_html(message)

    def on_action(raw, *values):
        try:
            msg = json.loads(raw or "{}")
            kind, key = str(msg.get("action", "")), str(msg.get("key", ""))
        except (ValueError, AttributeError):
            msg, kind, key = {}, "", ""
        status_text = ""
        stacks_html = compat.update(gr)
        if kind == "stack_save":
            status_text = ctl.save_stack(key, str(msg.get("prompt", "")))
            stacks_html = ctl.stacks_html()
        elif kind == "stack_delete" and key:
            status_text = ctl.delete_stack(key)
            stacks_html = ctl.stacks_html()
        elif kind == "tag_remove" and key:
            status_text = ctl.remove_user_tag(key, str(msg.get("tag", "")))
        elif kind == "fav" and key:
            try:
                now = ctl.toggle_favorite(key)
                status_text = "Added to favorites." if now else "Removed from favorites."
            except Exception as exc:  # noqa: BLE001
                log.exception("toggling favorite failed")
                status_text = f"Could not change favorites: {exc}"
        html, label, page_v = _run(*values)
        if kind in ("details", "fav", "tag_remove") and key:
            details_html, fields = ctl.details(key)
            editor_values = [fields[k] for k in editor_keys]
            shown = compat.update(gr, visible=render.DETAILS_EMPTY_CLASS not in details_html)
            return [html, label, page_v, details_html, *editor_values, shown, key, _status_html(status_text),
                    stacks_html]
        return [html, label, page_v, compat.update(gr), *[compat.update(gr) for _ in editor], compat.update(gr),
                compat.update(gr), _status_html(status_text), stacks_html]

    def on_save(key, desc, act, weight, neg, notes, tags, *values):
        if not key:
            return [*_run(*values), compat.update(gr), _status_html("Select a LoRA first (the i button on a card).")]
        message = ctl.save_user_metadata(key, dict(zip(EDITABLE_KEYS, [desc, act, weight, neg, notes])))
        tag_message = ctl.set_user_tags(key, tags or "")
        if tag_message != "Tags saved.":
            message = f"{message} {tag_message}"
        details_html, _ = ctl.details(key)
        return [*_run(*values), details_html, _status_html(message)]

    def on_civitai_one(key, *values):
        message = ctl.fetch_civitai(key)
        if not key:
            return [*_run(*values), compat.update(gr), *[compat.update(gr) for _ in editor], _status_html(message)]
        details_html, fields = ctl.details(key)
        return [*_run(*values), details_html, *[fields[k] for k in editor_keys], _status_html(message)]

    def on_civitai_all():
        return _civitai_html(ctl.fetch_all_civitai())

    for trigger in (search.submit, search_btn.click, sort.change, folder.change, family.change,
                    show_all.change, favorites_only.change):
        trigger(on_filter, inputs=query_inputs, outputs=grid_outputs)
    page.submit(_run, inputs=query_inputs, outputs=grid_outputs)
    prev_btn.click(on_prev, inputs=query_inputs, outputs=grid_outputs)
    next_btn.click(on_next, inputs=query_inputs, outputs=grid_outputs)
    refresh_btn.click(on_refresh, inputs=query_inputs, outputs=[*grid_outputs, folder, status])
    action_btn.click(on_action, inputs=[action, *query_inputs],
                     outputs=[*grid_outputs, details, *editor, editor_box, selected, status, stacks])
    save_btn.click(on_save, inputs=[selected, *editor, *query_inputs], outputs=[*grid_outputs, details, status])
    civitai_btn.click(on_civitai_one, inputs=[selected, *query_inputs],
                      outputs=[*grid_outputs, details, *editor, status])
    civitai_all_btn.click(on_civitai_all, outputs=[civitai_progress])

    def on_load(*values):
        return [*_run(*values), compat.update(gr, choices=ctl.folders()), ctl.stacks_html()]

    return LoraPanel(
        controller=ctl, search=search, grid=grid, details=details, page=page, page_label=page_label,
        refresh_button=refresh_btn, query_inputs=query_inputs, load_fn=on_load,
        load_outputs=[*grid_outputs, folder, stacks],
    )


def _int(v: Any) -> int:
    try:
        return max(1, int(float(v)))
    except (TypeError, ValueError):
        return 1


def _label_html(text: str) -> str:
    return f'<div class="lora-core-page-label">{render.esc(text)}</div>'


def _civitai_html(text: str) -> str:
    """The background fetch's progress line (lora_core.js updates it while the fetch runs)."""
    return f'<div class="lora-core-civitai-progress">{render.esc(text)}</div>'


def _status_html(text: str) -> str:
    return f'<div class="lora-core-status">{render.esc(text)}</div>' if text else ""
