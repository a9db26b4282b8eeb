"""HTML for the LoRA tab: the card grid and the details panel. Pure functions, no gradio.

Every piece of text that reaches the page goes through `esc` (html.escape with quotes), in
element text and in attribute values alike: names, aliases, paths, metadata keys and values,
Civitai fields and trained words are all attacker-controlled (a downloaded LoRA picks them).
Nothing here builds markup from an untrusted string any other way; CSS class names derived from
data are reduced to [a-z0-9-] first.
"""
from __future__ import annotations

import datetime as _dt
import html
import re
from typing import Iterable, Sequence

from lora_core.ui.entry_view import EntryView, format_weight

# Metadata keys shown in their own sections (or too bulky to list raw).
_HIDDEN_METADATA_KEYS = {"ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info", "modelspec.thumbnail"}


def esc(value: object) -> str:
    """Escape anything for HTML text or a double/single-quoted attribute value."""
    return html.escape("" if value is None else str(value), quote=True)


def css_token(value: str) -> str:
    """A class-name-safe token derived from untrusted text ('SDXL 1.0' -> 'sdxl-1-0')."""
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")[:40] or "unknown"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _date(ts: float) -> str:
    if not ts:
        return ""
    try:
        return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


def render_card(v: EntryView) -> str:
    classes = ["lora-core-card"]
    if v.error:
        classes.append("lora-core-card-error")
    if v.favorite:
        classes.append("lora-core-card-fav")
    attrs = [
        f'class="{" ".join(classes)}"',
        f'data-lora-key="{esc(v.key)}"',
        f'data-lora-name="{esc(v.tag_name)}"',
        f'title="{esc(v.key)}"',
    ]
    if not v.error:
        # Error entries cannot be applied, so they carry no tag: clicking them does nothing.
        attrs += [
            'tabindex="0"',
            'role="button"',
            f'data-lora-tag="{esc(v.tag_text)}"',
            f'data-lora-triggers="{esc(v.triggers)}"',
        ]
    thumb_attrs = 'class="lora-core-thumb"'
    if v.preview_url:
        thumb = f'<img class="lora-core-thumb-img" loading="lazy" alt="" src="{esc(v.preview_url)}">'
        if v.blurred:
            # Above the NSFW threshold: blurred by style.css until a click (lora_core.js) reveals it.
            thumb_attrs = (f'class="lora-core-thumb lora-core-blur" data-nsfw="{esc(v.nsfw_level)}" '
                           f'title="{esc("Rated " + (v.nsfw_level or "unrated") + ": click to show")}"')
    else:
        thumb = f'<div class="lora-core-thumb-empty">{esc(v.tag_name[:2].upper())}</div>'
    badges = [f'<span class="lora-core-badge lora-core-family-{css_token(v.family)}">{esc(v.family)}</span>']
    if v.algorithm:
        badges.append(f'<span class="lora-core-badge lora-core-algo">{esc(v.algorithm)}</span>')
    badges.extend(_base_model_and_update_badges(v))
    if v.ambiguous:
        badges.append(
            '<span class="lora-core-badge lora-core-ambiguous" '
            'title="Another LoRA has the same name or alias; the tag may pick the wrong file">ambiguous</span>'
        )
    body = [f'<div class="lora-core-name">{esc(v.alias)}</div>']
    if v.alias != v.name:
        body.append(f'<div class="lora-core-filename">{esc(v.name)}</div>')
    body.append(f'<div class="lora-core-badges">{"".join(badges)}</div>')
    if v.triggers:
        body.append(f'<div class="lora-core-triggers" title="trigger words">{esc(v.triggers)}</div>')
    if v.user_tags:
        body.append('<div class="lora-core-user-tags">' + "".join(
            f'<button type="button" class="lora-core-user-tag" data-tag="{esc(t)}" title="show LoRAs with this tag">'
            f'{esc(t)}</button>' for t in v.user_tags) + "</div>")
    if v.error:
        body.append(f'<div class="lora-core-error-text">{esc(v.error)}</div>')
    fav_label = "Remove from favorites" if v.favorite else "Add to favorites"
    actions = (
        '<div class="lora-core-card-actions">'
        f'<button type="button" class="lora-core-fav-btn" title="{fav_label}" aria-label="{fav_label}">'
        f'{"★" if v.favorite else "☆"}</button>'
        '<button type="button" class="lora-core-info-btn" title="Details" aria-label="Details">i</button>'
        "</div>"
    )
    return (
        f'<div {" ".join(attrs)}><div {thumb_attrs}>{thumb}</div>{actions}'
        f'<div class="lora-core-card-body">{"".join(body)}</div></div>'
    )


def _base_model_name(label: str) -> str:
    from lora_core.library import base_models

    return base_models.label_name(label) or label


def _base_model_and_update_badges(v: EntryView) -> list[str]:
    """The finer base model (only when it says more than the family) and "newer version" badges."""
    from lora_core.library import base_models

    out = []
    if v.base_model and v.base_model != base_models.GENERIC.get(v.family):
        name = base_models.label_name(v.base_model) or v.base_model
        out.append(f'<span class="lora-core-badge lora-core-base lora-core-base-{css_token(v.base_model)}" '
                   f'title="base model">{esc(name)}</span>')
    if v.update_name:
        out.append(f'<span class="lora-core-badge lora-core-update" data-lora-download="{esc(v.update_download)}" '
                   f'title="{esc("Newer on Civitai: " + v.update_name)}">update</span>')
    return out


def render_grid(views: Sequence[EntryView], total: int, page: int, page_size: int, note: str = "",
                query: str = "") -> str:
    """The card grid for one page of results (only this page's cards are ever built).
    `query` (the search text) is echoed in data-query so scripts can tell which search is shown."""
    if not views:
        empty = "No LoRAs match." if total == 0 else "No LoRAs on this page."
        inner = f'<div class="lora-core-empty">{esc(empty)}</div>'
    else:
        inner = "".join(render_card(v) for v in views)
    note_html = f'<div class="lora-core-note">{esc(note)}</div>' if note else ""
    return (
        f'<div class="lora-core-page" data-total="{int(total)}" data-page="{int(page)}" data-query="{esc(query)}">'
        f'{note_html}<div class="lora-core-grid">{inner}</div></div>'
    )


def page_label(total: int, page: int, page_size: int) -> str:
    pages = page_count(total, page_size)
    if total == 0:
        return "0 LoRAs"
    first = (page - 1) * page_size + 1
    last = min(total, page * page_size)
    return f"{first:,}–{last:,} of {total:,} LoRAs · page {page:,}/{pages:,}"


def page_count(total: int, page_size: int) -> int:
    return max(1, -(-int(total) // max(1, int(page_size))))


# Unix times as dates only within these bounds (2000-01-01 .. 2100-01-01): other numbers stay numbers.
_EPOCH_RANGE = (946_684_800.0, 4_102_444_800.0)


def timestamp_text(key: object, value: object) -> str:
    """'2026-11-26 19:59' for a Unix time under a time-like key ("ss_training_started_at",
    "training_finished_at", "...timestamp"), '' for anything else."""
    k = str(key).lower()
    if not (k.endswith("_at") or k.endswith("timestamp")):
        return ""
    try:
        ts = float(str(value).strip())
    except (TypeError, ValueError):
        return ""
    if not (_EPOCH_RANGE[0] <= ts <= _EPOCH_RANGE[1]):
        return ""
    return _date(ts)


def _table(rows: Iterable[tuple[str, str]], css: str) -> str:
    cells = []
    for k, v in rows:
        when = timestamp_text(k, v)
        value = f'<td title="{esc(v)}">{esc(when)}</td>' if when else f"<td>{esc(v)}</td>"
        cells.append(f"<tr><th>{esc(k)}</th>{value}</tr>")
    return f'<table class="{css}">{"".join(cells)}</table>' if cells else ""


# The class of the details panel when no LoRA is shown (the tab hides the editor then).
DETAILS_EMPTY_CLASS = "lora-core-details-empty"


def render_details(v: EntryView | None, message: str = "") -> str:
    """Everything known about one LoRA. Training tags are chips JS can add to activation text."""
    if v is None:
        text = message or "Click the i button on a card to see all its details and edit its user metadata."
        return f'<div class="lora-core-details {DETAILS_EMPTY_CLASS}">{esc(text)}</div>'
    parts = [f'<div class="lora-core-details" data-lora-key="{esc(v.key)}">']
    parts.append(f'<h3 class="lora-core-details-title">{esc(v.alias)}</h3>')
    if message:
        parts.append(f'<div class="lora-core-note">{esc(message)}</div>')
    if v.error:
        parts.append(f'<div class="lora-core-error-text">Cannot be used: {esc(v.error)}</div>')
    if v.ambiguous:
        parts.append(
            '<div class="lora-core-warning">Another LoRA answers to the same name or alias. '
            f"Tags use <code>{esc(v.tag_name)}</code>; rename a file to make it unique.</div>"
        )
    facts = [
        ("tag", v.tag_text if not v.error else ""),
        ("name", v.name),
        ("alias", v.alias),
        ("path", v.key),
        ("folder", v.folder),
        ("family", v.family),
        ("base model", _base_model_name(v.base_model)),
        ("newer version on Civitai", v.update_name),
        ("algorithm", v.algorithm),
        ("size", human_size(v.size) if v.size else ""),
        ("modified", _date(v.mtime)),
        ("last used", _date(v.last_used)),
        ("trigger words", v.triggers),
        ("preferred weight", format_weight(v.preferred_weight)),
        ("loaded checkpoint", v.match_text),
    ]
    parts.append(_table(((k, val) for k, val in facts if val), "lora-core-facts"))
    chips = "".join(
        f'<span class="lora-core-user-tag-chip">{esc(t)}<button type="button" class="lora-core-user-tag-remove" '
        f'data-tag="{esc(t)}" title="remove this tag" aria-label="remove tag {esc(t)}">×</button></span>'
        for t in v.user_tags)
    parts.append(f'<div class="lora-core-details-tags"><b>Your tags:</b> {chips or "<i>none</i>"}</div>')
    if v.summary:
        parts.append("<h4>Training summary</h4>" + _table(sorted(v.summary.items()), "lora-core-summary"))
    if v.hashes:
        parts.append("<h4>Hashes</h4>" + _table(sorted(v.hashes.items()), "lora-core-hashes"))
    if v.civitai or v.civitai_description or v.civitai_link:
        parts.append("<h4>Civitai</h4>" + _table(v.civitai.items(), "lora-core-civitai"))
        if v.civitai_link:
            parts.append(f'<div><a class="lora-core-civitai-link" href="{esc(v.civitai_link)}" target="_blank" '
                         f'rel="noopener noreferrer nofollow">{esc(v.civitai_link)}</a></div>')
        if v.civitai_description:
            # Plain text (tags stripped in entry_view.plain_text) and escaped: never Civitai's HTML.
            parts.append(f'<div class="lora-core-civitai-desc">{esc(v.civitai_description)}</div>')
    if v.training_tags:
        chips = "".join(
            f'<button type="button" class="lora-core-train-tag" data-tag="{esc(tag)}" '
            f'title="add to activation text">{esc(tag)} <small>{int(n)}</small></button>'
            for tag, n in v.training_tags
        )
        parts.append(
            "<h4>Top training tags</h4>"
            '<div class="lora-core-hint">Click a tag to add it to the activation text below.</div>'
            f'<div class="lora-core-train-tags">{chips}</div>'
        )
    shown = [(k, val) for k, val in sorted(v.metadata.items()) if k not in _HIDDEN_METADATA_KEYS]
    if shown:
        parts.append(
            f"<details class=\"lora-core-metadata\"><summary>File metadata ({len(shown)} keys)</summary>"
            f"{_table(shown, 'lora-core-metadata-table')}</details>"
        )
    parts.append("</div>")
    return "".join(parts)


def render_stacks(stacks: dict, message: str = "") -> str:
    """Saved stacks: each with its tags, an Insert button (lora_core.js adds the tags to the prompt)
    and a Delete button (relayed to Python). `stacks`: name -> [(lora name, weight)]."""
    rows = []
    for name, items in stacks.items():
        tags = ", ".join(f"<lora:{n}:{format_weight(float(w))}>" for n, w in items)
        rows.append(
            f'<div class="lora-core-stack" data-stack-name="{esc(name)}">'
            f'<div class="lora-core-stack-text"><span class="lora-core-stack-name">{esc(name)}</span> '
            f'<code class="lora-core-stack-tags">{esc(tags)}</code></div>'
            '<div class="lora-core-stack-buttons">'
            f'<button type="button" class="lora-core-stack-insert" data-stack-tags="{esc(tags)}" '
            f'title="add these LoRAs to the prompt">Insert</button>'
            f'<button type="button" class="lora-core-stack-delete" data-stack-name="{esc(name)}" '
            f'title="delete this stack">Delete</button></div></div>'
        )
    body = "".join(rows) or '<div class="lora-core-hint">No saved stacks yet.</div>'
    note = f'<div class="lora-core-note">{esc(message)}</div>' if message else ""
    return f'<div class="lora-core-stacks">{note}{body}</div>'
