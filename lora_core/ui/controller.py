"""The LoRA tab's behaviour without gradio: queries, paging, details, favorites, sidecar edits.

`lora_core.ui.tab` wires these methods to gradio events; the JSON routes in `lora_core.ui.api`
reuse them. Keeping them here lets tests drive the tab's logic with a real `Library` and no browser.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lora_core.library import base_models, updates
from lora_core.ui import render
from lora_core.ui.entry_view import EntryView, plain_text, preview_url_for, safe_link, usable_in_tag, view_of

log = logging.getLogger(__name__)

# Sort choices shown in the tab -> the library's sort keys.
SORTS = {"name": "name", "date": "date", "size": "size", "last used": "last_used"}
ALL_FOLDERS = "(all folders)"
CHECKPOINT_FAMILY = "(loaded checkpoint)"
PROBLEMS = "(problems)"   # only files that cannot be used, with the reason
FAMILIES = [CHECKPOINT_FAMILY, "sd1", "sd2", "sdxl", "flux", "sd3", "unknown", PROBLEMS]
# The finer base-model labels people filter by (library/base_models.py), offered in the family list;
# a pick filters on the label the index stores ("base:<label>").
BASE_MODEL_CHOICES = {f"{base_models.label_name(label)} ({base_models.family_of(label)})": label for label in (
    "pony", "illustrious", "noobai", "sdxl-turbo", "sdxl-lightning", "flux-dev", "flux-schnell", "sd3.5")}
UPDATES = "(newer version on Civitai)"   # LoRAs the last update check found a newer version of
FAMILIES[-1:-1] = list(BASE_MODEL_CHOICES) + [UPDATES]   # before "(problems)"
# Sidecar keys the editor writes (A1111's `name.json` user-metadata keys).
EDITABLE_KEYS = ["description", "activation text", "preferred weight", "negative text", "notes"]


@dataclass
class TabSettings:
    """How a host configures the LoRA tab.

    current_family: returns the loaded checkpoint's family ("sd1", "sd2", "sdxl") or None; read at
        every query, so a checkpoint switch changes the default filter without rebuilding the tab.
    api_prefix: where `lora_core.ui.api.register_routes` mounted the JSON routes (thumbnails).
    rescan: the host's rescan (e.g. one that also queues hashing); default `library.scan()`.
    civitai: the host's `CivitaiSync` ("Fetch from Civitai", "Fetch missing", NSFW threshold).
    match_counts: (path) -> (matched, unmatched) | None against the loaded model; details only.
    """

    page_size: int = 48
    current_family: Callable[[], str | None] = field(default=lambda: None)
    api_prefix: str = "/lora_core/api"
    rescan: Callable[[], Any] | None = None   # what "Rescan folders" runs (default: library.scan())
    # A `lora_core.library.civitai_sync.CivitaiSync` (Civitai buttons, NSFW threshold); None: no Civitai.
    civitai: Any = None
    # match_counts(path) -> (matched, unmatched) | None for the loaded checkpoint; run when details open.
    match_counts: Callable[[str], Any] | None = None
    # current_base_model() -> a base_models label of the loaded checkpoint ("pony", ...) or None: a
    # finer "(loaded checkpoint)" filter (its LoRAs and the plain ones of its family). Hosts may
    # pass `lambda: base_models.from_name(checkpoint file name)`.
    current_base_model: Callable[[], str | None] | None = None


@dataclass
class Query:
    search: str = ""
    sort: str = "name"
    folder: str = ALL_FOLDERS
    family: str = CHECKPOINT_FAMILY
    show_all_families: bool = False
    favorites_only: bool = False
    page: int = 1


@dataclass
class QueryResult:
    html: str
    label: str
    page: int
    total: int
    views: list[EntryView]


class LoraTabController:
    """Reads the library through `library_provider()` on every call (a host may swap libraries)."""

    def __init__(self, library_provider: Callable[[], Any], settings: TabSettings | None = None):
        self.library_provider = library_provider
        self.settings = settings or TabSettings()

    # -- library access, tolerant of a library that is missing or failing --------------------
    def _library(self) -> Any:
        return self.library_provider()

    def _view(self, lib: Any, entry: Any, metadata: Mapping[str, Any] | None = None) -> EntryView:
        path = str(getattr(entry, "path", "") or "")
        mtime = getattr(entry, "mtime", 0) or 0
        tag_name, ambiguous = resolve_tag_name(lib, entry)
        has_preview = bool(getattr(entry, "preview", None)) or bool(
            (getattr(entry, "summary", None) or {}).get("cover_images"))
        view = view_of(
            entry,
            preview_url=preview_url_for(self.settings.api_prefix, path, float(mtime)) if path and has_preview else None,
            metadata=metadata,
            tag_name=tag_name,
            ambiguous=ambiguous,
        )
        if view.preview_url and getattr(entry, "civitai", None):
            level = preview_nsfw_level(entry)
            if level is not None:
                from lora_core.library import civitai_nsfw

                view.nsfw_level = civitai_nsfw.level_name(level)
                view.blurred = civitai_nsfw.is_blurred(level, self.nsfw_threshold())
        if getattr(entry, "civitai", None):
            newer = updates.update_of(entry, self._update_cache(lib))
            if newer is not None:  # "a newer version exists on Civitai" badge (offline: the cached answer)
                view.update_name = newer.latest_name or f"version {newer.latest_version_id}"
                view.update_download = newer.download
        return view

    def _updates_query(self, q: Query, page: int, size: int) -> QueryResult:
        """The filter "(newer version on Civitai)": the update cache's list (offline), searched by
        name and folder, a page of it as cards."""
        try:
            lib = self._library()
            words = (q.search or "").lower().split()
            folder = None if q.folder in (None, "", ALL_FOLDERS) else folder_value(q.folder).strip("/")
            entries = []
            for u in updates.updates_for(lib):
                entry = lib.entry(u.path)
                text = f"{entry.rel_name} {entry.alias or ''}".lower()
                if all(w in text for w in words) and (not folder or (entry.folder + "/").startswith(folder + "/")):
                    entries.append(entry)
            total = len(entries)
            page = min(page, render.page_count(total, size))
            views = [self._view(lib, e) for e in entries[(page - 1) * size:page * size]]
        except Exception as exc:  # noqa: BLE001 - show the problem in the tab, keep the app alive
            log.exception("listing LoRAs with updates failed")
            return QueryResult(html=f'<div class="lora-core-error-text">Search failed: {render.esc(exc)}</div>',
                               label="", page=page, total=0, views=[])
        note = ("LoRAs with a newer version on Civitai (from the last check; “Duplicates and updates” → "
                "“Check Civitai for newer versions” refreshes it). Click a card's update badge to download it.")
        return QueryResult(html=render.render_grid(views, total, page, size, note, query=q.search or ""),
                           label=render.page_label(total, page, size), page=page, total=total, views=views)

    def _update_cache(self, lib: Any) -> dict:
        """The update check's cache file, re-read only when it changed (one stat per card)."""
        path = updates.cache_path(lib)
        try:
            stamp = (path, os.stat(path).st_mtime_ns) if path else None
        except OSError:
            stamp = None
        if stamp is None:
            return {}
        if getattr(self, "_updates_stamp", None) != stamp:
            self._updates_stamp, self._updates = stamp, updates.read_cache(lib)
        return self._updates

    def nsfw_threshold(self) -> str | None:
        sync = self.settings.civitai
        if sync is None:
            return "PG13"
        try:
            return sync.settings().preview_limit()
        except Exception:  # noqa: BLE001
            return "PG13"

    def resolve_family(self, q: Query) -> str | None:
        if q.show_all_families or q.family == PROBLEMS:
            return None
        if q.family == CHECKPOINT_FAMILY:
            finer = self._checkpoint_base_models()
            if finer:
                return finer
            try:
                return self.settings.current_family() or None
            except Exception:  # noqa: BLE001 - no model loaded yet: show everything
                return None
        if q.family in BASE_MODEL_CHOICES:
            return "base:" + BASE_MODEL_CHOICES[q.family]
        return q.family or None

    def _checkpoint_base_models(self) -> str | None:
        """"base:pony,sdxl" for a checkpoint of a finer base model, None for a plain one."""
        fn = self.settings.current_base_model
        try:
            label = fn() if fn is not None else None
        except Exception:  # noqa: BLE001 - no model loaded yet
            return None
        if not label or label in base_models.GENERIC.values():
            return None
        labels = base_models.compatible(label)
        return "base:" + ",".join(labels) if labels else None

    def folders(self) -> list[str]:
        """Folder filter choices: "(all folders)" then every folder path ("" = the root is "all")."""
        lib = self._library()
        fn = getattr(lib, "folders", None)
        try:
            items = fn() if callable(fn) else (fn or [])
        except Exception:  # noqa: BLE001
            log.exception("listing folders failed")
            items = []
        names = {str(i[0] if isinstance(i, (tuple, list)) else i).strip("/") for i in items}
        return [ALL_FOLDERS] + [folder_label(n) for n in sorted(n for n in names if n)]

    # -- queries -----------------------------------------------------------------------------
    def query(self, q: Query) -> QueryResult:
        size = max(1, int(self.settings.page_size))
        page = max(1, int(q.page or 1))
        if q.family == UPDATES and not q.show_all_families:
            return self._updates_query(q, page, size)
        family = self.resolve_family(q)
        problems_only = q.family == PROBLEMS and not q.show_all_families
        note = ""
        if problems_only:
            note = "Showing the files that cannot be used, with the reason."
        elif family:
            # Files that cannot be read have no family: they are shown too, so a problem is never hidden.
            whose = "the loaded checkpoint's family" if q.family == CHECKPOINT_FAMILY else "the family picked"
            shown = family
            if family.startswith("base:"):  # labels -> their names: "Pony, SDXL"
                shown = ", ".join(base_models.label_name(x) or x for x in family[5:].split(","))
            note = (f"Showing {shown} LoRAs ({whose}) and files with problems. "
                    "Tick “show all families” to see every LoRA.")
        sort_key = SORTS.get(q.sort, "name")
        folder = None if q.folder in (None, "", ALL_FOLDERS) else folder_value(q.folder)
        try:
            lib = self._library()
            # The library counts pages from 0; the tab shows them from 1.
            extra = _supported(lib.search, {"with_problems": bool(family), "problems_only": problems_only})
            result = lib.search(q.search or "", page=page - 1, page_size=size, sort=sort_key, family=family,
                                folder=folder, favorites_only=bool(q.favorites_only), **extra)
            total = int(result.total)
            pages = render.page_count(total, size)
            if page > pages:
                # The library shrank (rescan, stricter filter): jump to its last page.
                page = pages
                result = lib.search(q.search or "", page=page - 1, page_size=size, sort=sort_key, family=family,
                                    folder=folder, favorites_only=bool(q.favorites_only), **extra)
                total = int(result.total)
            views = [self._view(lib, e) for e in result.items]
        except Exception as exc:  # noqa: BLE001 - show the problem in the tab, keep the app alive
            log.exception("LoRA search failed")
            return QueryResult(
                html=f'<div class="lora-core-error-text">Search failed: {render.esc(exc)}</div>',
                label="", page=page, total=0, views=[],
            )
        return QueryResult(
            html=render.render_grid(views, total, page, size, note, query=q.search or ""),
            label=render.page_label(total, page, size),
            page=page, total=total, views=views,
        )

    # -- one entry ---------------------------------------------------------------------------
    def _entry(self, lib: Any, key: str) -> Any:
        try:
            return lib.entry(key)
        except LookupError:  # the library's NotFound: gone since the page was drawn
            return None

    def details(self, key: str) -> tuple[str, dict[str, Any]]:
        """(details HTML, editor values) for the entry at path `key`."""
        try:
            lib = self._library()
            entry = self._entry(lib, key)
        except Exception as exc:  # noqa: BLE001
            log.exception("loading LoRA details failed")
            return render.render_details(None, f"Cannot load details: {exc}"), _editor_values(None)
        if entry is None:
            return render.render_details(None, "This LoRA is no longer in the library."), _editor_values(None)
        view = self._view(lib, entry, metadata=full_metadata(getattr(entry, "path", "")))
        self._add_civitai_details(view)
        view.match_text = self.match_text(view.key) if not view.error else ""
        return render.render_details(view), _editor_values(view)

    def _add_civitai_details(self, view: EntryView) -> None:
        """Description and link from the whole `.civitai.info` (the index keeps a trimmed copy)."""
        try:
            from lora_core.library import civitai_files

            info = civitai_files.read_info(view.key) if view.key else None
        except Exception:  # noqa: BLE001 - unreadable sidecar: no Civitai extras
            info = None
        if not isinstance(info, dict) or not info:
            return
        model = info.get("model") if isinstance(info.get("model"), dict) else {}
        view.civitai_description = plain_text(info.get("description")) or plain_text(model.get("description"))
        ours = (info.get("extensions") or {}).get("lora_core") if isinstance(info.get("extensions"), dict) else None
        link = ours.get("link") if isinstance(ours, dict) else None
        if not link and isinstance(info.get("modelId"), int):
            base = "https://civitai.com"
            if isinstance(ours, dict) and isinstance(ours.get("base_url"), str):
                base = ours["base_url"]
            link = f"{base.rstrip('/')}/models/{info['modelId']}" + (
                f"?modelVersionId={info['id']}" if isinstance(info.get("id"), int) else "")
        view.civitai_link = safe_link(link)

    def match_text(self, key: str) -> str:
        """Matched/unmatched module counts against the loaded checkpoint, computed now (one file)."""
        fn = self.settings.match_counts
        if fn is None:
            return ""
        try:
            counts = fn(key)
        except Exception as exc:  # noqa: BLE001 - an unreadable LoRA: say so, keep the details
            log.info("matching %s against the checkpoint failed: %s", key, exc)
            return f"cannot check: {exc}"
        if not counts:
            return "no checkpoint loaded yet"
        matched, unmatched = int(counts[0]), int(counts[1])
        return f"{matched} module(s) matched, {unmatched} unmatched"

    # -- Civitai -----------------------------------------------------------------------------
    def fetch_civitai(self, key: str) -> str:
        sync = self.settings.civitai
        if sync is None:
            return "Civitai is not set up in this host."
        if not key:
            return "Select a LoRA first (the i button on a card)."
        return sync.fetch_one(key)

    def fetch_all_civitai(self) -> str:
        sync = self.settings.civitai
        if sync is None:
            return "Civitai is not set up in this host."
        if not sync.start_all():
            st = sync.status()
            return st.message if st.phase == "error" else "A Civitai fetch is already running. " + st.text()
        return "Civitai: fetching every LoRA without Civitai data in the background…"

    def civitai_status(self) -> str:
        sync = self.settings.civitai
        return sync.status().text() if sync is not None else ""

    # -- user tags ---------------------------------------------------------------------------
    def set_user_tags(self, key: str, text: str) -> str:
        tags = [t.strip() for t in str(text or "").split(",") if t.strip()]
        try:
            self._library().set_user_tags(key, tags)
        except Exception as exc:  # noqa: BLE001
            log.exception("saving user tags failed")
            return f"Could not save tags: {exc}"
        return "Tags saved."

    def add_user_tags(self, key: str, text: str) -> str:
        lib = self._library()
        try:
            current = list(getattr(lib.entry(key), "user_tags", ()) or ())
        except LookupError:
            return "This LoRA is no longer in the library."
        new = [t.strip() for t in str(text or "").split(",") if t.strip()]
        return self.set_user_tags(key, ", ".join(current + new))

    def remove_user_tag(self, key: str, tag: str) -> str:
        lib = self._library()
        try:
            current = list(getattr(lib.entry(key), "user_tags", ()) or ())
        except LookupError:
            return "This LoRA is no longer in the library."
        return self.set_user_tags(key, ", ".join(t for t in current if t != tag))

    # -- saved stacks ------------------------------------------------------------------------
    def stacks_html(self, message: str = "") -> str:
        try:
            fn = getattr(self._library(), "stacks", None)
            stacks = fn() if callable(fn) else {}
        except Exception as exc:  # noqa: BLE001
            log.exception("listing stacks failed")
            return render.render_stacks({}, f"Cannot list stacks: {exc}")
        return render.render_stacks(stacks, message)

    def save_stack(self, name: str, prompt: str) -> str:
        """Save the LoRA tags of `prompt` (with their weights) as stack `name`; a status line."""
        from lora_core.tags import parse_prompt

        name = str(name or "").strip()
        if not name:
            return "Give the stack a name first."
        parsed = parse_prompt(str(prompt or ""))
        items = [(r.name, r.te) for r in parsed.requests]
        if not items:
            return "The prompt has no <lora:...> tags to save."
        try:
            self._library().save_stack(name, items)
        except Exception as exc:  # noqa: BLE001
            log.exception("saving stack failed")
            return f"Could not save the stack: {exc}"
        split = [r.name for r in parsed.requests if r.te != r.unet]
        note = f" (saved the text-encoder weight for {', '.join(split)})" if split else ""
        return f"Saved stack {name!r} with {len(items)} LoRA(s){note}."

    def delete_stack(self, name: str) -> str:
        try:
            gone = self._library().delete_stack(str(name))
        except Exception as exc:  # noqa: BLE001
            return f"Could not delete the stack: {exc}"
        return f"Deleted stack {name!r}." if gone else f"No stack named {name!r}."

    def toggle_favorite(self, key: str) -> bool:
        """Flip the favorite flag; returns the new state."""
        lib = self._library()
        now = not bool(getattr(lib.entry(key), "favorite", False))
        lib.set_favorite(key, now)
        return now

    def save_user_metadata(self, key: str, values: Mapping[str, Any]) -> str:
        """Write the editable fields to the entry's `name.json` sidecar; returns a status line."""
        data: dict[str, Any] = {}
        for k in EDITABLE_KEYS:
            v = values.get(k)
            if k == "preferred weight":
                try:
                    data[k] = float(v) if v not in (None, "") else 0.0
                except (TypeError, ValueError):
                    return f"Preferred weight must be a number, got {v!r}."
            else:
                data[k] = "" if v is None else str(v)
        try:
            lib = self._library()
            lib.write_user_metadata(key, data)
        except Exception as exc:  # noqa: BLE001 - report unwritable sidecars in the UI
            log.exception("saving user metadata failed")
            return f"Could not save: {exc}"
        return "Saved."

    def refresh(self) -> str:
        """Rescan the LoRA folders; returns a status line."""
        try:
            report = self.settings.rescan() if self.settings.rescan is not None else self._library().scan()
        except Exception as exc:  # noqa: BLE001
            log.exception("LoRA rescan failed")
            return f"Rescan failed: {exc}"
        total, problems = getattr(report, "total", None), list(getattr(report, "problems", None) or [])
        text = "Library rescanned" + (f": {total} LoRA files." if total is not None else ".")
        return " ".join([text, *problems[:3]])


def _supported(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The true-valued `kwargs` that `fn` accepts (a host's own library may predate them)."""
    wanted = {k: v for k, v in kwargs.items() if v}
    if not wanted:
        return {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in params}


FOLDER_INDENT = "\u2003"   # em space: survives HTML whitespace collapsing in dropdown labels
FOLDER_BRANCH = "└ "


def folder_label(folder: str) -> str:
    """Dropdown label showing nesting: top folders as is, "a/b" as an indented "└ a/b"."""
    depth = folder.count("/")
    return folder if depth == 0 else FOLDER_INDENT * depth + FOLDER_BRANCH + folder


def folder_value(label: str) -> str:
    """The folder path behind a `folder_label` (plain paths pass through)."""
    text = str(label).lstrip(FOLDER_INDENT)
    if text != str(label) and text.startswith(FOLDER_BRANCH):
        text = text[len(FOLDER_BRANCH):]
    return text


def preview_nsfw_level(entry: Any) -> int | None:
    """Civitai's rating of the entry's preview: recorded by lora_core when it saved the preview,
    else (a Civitai Helper download) the first Civitai image's, which is the one such tools save."""
    from lora_core.library import civitai, civitai_nsfw

    try:
        level = civitai.preview_level_from_info(entry.path)
    except Exception:  # noqa: BLE001 - unreadable sidecar
        level = None
    if level is not None:
        return level
    images = (getattr(entry, "civitai", None) or {}).get("images") if isinstance(getattr(entry, "civitai", None), dict) else None
    if images and isinstance(images[0], dict) and "nsfwLevel" in images[0]:
        return civitai_nsfw.nsfw_level(images[0]["nsfwLevel"])
    return None


def _editor_values(view: EntryView | None) -> dict[str, Any]:
    if view is None:
        return {**{k: ("" if k != "preferred weight" else 0.0) for k in EDITABLE_KEYS}, "user tags": ""}
    return {
        "description": view.description,
        # The sidecar's own text, not Civitai's trained words: saving must not copy those silently.
        "activation text": view.activation_text,
        "preferred weight": view.preferred_weight,
        "negative text": view.negative_text,
        "notes": view.notes,
        "user tags": ", ".join(view.user_tags),
    }


def resolve_tag_name(lib: Any, entry: Any) -> tuple[str, bool]:
    """(the name a `<lora:...>` tag should use for `entry`, whether its plain name/alias is ambiguous).

    Tries the alias, the file name, then `folder/name`, keeping the first one that the library's
    own `find` (the resolver prompts go through) maps back to this very file.
    """
    name = str(getattr(entry, "name", "") or "")
    alias = str(getattr(entry, "alias", "") or "")
    rel = str(getattr(entry, "rel_name", "") or "").replace("\\", "/")
    candidates = [c for c in (alias, name, rel if "/" in rel else "./" + rel if rel else "") if c and usable_in_tag(c)]
    find = getattr(lib, "find", None)
    if not candidates:  # every spelling contains "<", ">" or ":": no tag can name this file
        return name, False
    if not callable(find) or getattr(entry, "error", None):
        return (candidates[0] if candidates else name), False
    path = str(getattr(entry, "path", ""))
    for i, cand in enumerate(dict.fromkeys(candidates)):
        try:
            hit = find(cand)
        except LookupError:  # NotFound / AmbiguousName
            continue
        except Exception:  # noqa: BLE001 - resolver trouble: use the name, do not break the page
            log.debug("resolving %r failed", cand, exc_info=True)
            continue
        if str(getattr(hit, "path", "")) == path:
            return cand, i > 0
    return (rel or name), True


def full_metadata(path: str) -> dict[str, str]:
    """The raw safetensors metadata of one file, for the details view ({} if not readable)."""
    if not str(path).lower().endswith(".safetensors"):
        return {}
    try:
        from lora_core.library import read_header

        _header, metadata, _size = read_header(path)
        return {str(k): str(v) for k, v in dict(metadata).items()}
    except Exception as exc:  # noqa: BLE001 - a damaged header is shown as "no metadata"
        log.info("cannot read metadata of %s: %s", path, exc)
        return {}
