"""Stand-in for `modules.ui_extra_networks`: the cards pages under txt2img/img2img.

A page's `list_items()` yields item dicts; the webui stores them by name in `page.items` and builds
one card per item from the fields checked in `card_html` (the webui's own required fields).
"""
import html
import json
import os
import urllib.parse
from pathlib import Path


extra_pages = []
allowed_dirs = set()


def quote_js(s):
    return json.dumps(str(s))


def register_page(page):
    """Registers an extra networks page; extensions are told to do it in on_before_ui."""
    extra_pages.append(page)
    allowed_dirs.clear()
    for p in extra_pages:
        allowed_dirs.update(p.allowed_directories_for_previews())


def initialize():
    extra_pages.clear()


class ExtraNetworksPage:
    def __init__(self, title):
        self.title = title
        self.name = title.lower()
        self.extra_networks_tabname = self.name.replace(" ", "_")
        self.allow_prompt = True
        self.allow_negative_prompt = False
        self.metadata = {}
        self.items = {}

    def refresh(self):
        pass

    def read_user_metadata(self, item, use_cache=True):
        filename = item.get("filename")
        metadata = {}
        if filename:
            sidecar = os.path.splitext(filename)[0] + ".json"
            try:
                with open(sidecar, encoding="utf8") as f:
                    metadata = json.load(f)
            except (OSError, ValueError):
                metadata = {}
        item["user_metadata"] = metadata if isinstance(metadata, dict) else {}

    def link_preview(self, filename):
        quoted = urllib.parse.quote(filename.replace("\\", "/"))
        return f"./sd_extra_networks/thumb?filename={quoted}&mtime={os.path.getmtime(filename)}"

    def search_terms_from_path(self, filename, possible_directories=None):
        abspath = os.path.abspath(filename)
        dirs = possible_directories if possible_directories is not None else self.allowed_directories_for_previews()
        for parentdir in dirs:
            parentdir = os.path.dirname(os.path.abspath(parentdir))
            if abspath.startswith(parentdir):
                return os.path.relpath(abspath, parentdir)
        return ""

    def create_item(self, name, index=None):
        raise NotImplementedError()

    def list_items(self):
        raise NotImplementedError()

    def allowed_directories_for_previews(self):
        return []

    def get_sort_keys(self, path):
        pth = Path(path)
        st = pth.stat()
        return {"date_created": int(st.st_ctime), "date_modified": int(st.st_mtime),
                "name": pth.name.lower(), "path": str(pth).lower()}

    def find_preview(self, path):
        for ext in ("png", "jpg", "jpeg", "webp", "gif"):
            for candidate in (f"{path}.{ext}", f"{path}.preview.{ext}"):
                if os.path.isfile(candidate):
                    return self.link_preview(candidate)
        return None

    def find_description(self, path):
        for candidate in (f"{path}.txt", f"{path}.description.txt"):
            try:
                with open(candidate, encoding="utf-8", errors="replace") as f:
                    return f.read()
            except OSError:
                pass
        return None

    def create_user_metadata_editor(self, ui, tabname):
        return None

    # What the webui does when it builds the cards pane (create_html / refresh).
    def populate(self, tabname="txt2img"):
        items = list(self.list_items())
        self.items = {x["name"]: x for x in items}
        self.metadata = {x["name"]: x["metadata"] for x in items if x.get("metadata")}
        return "".join(card_html(self, item, tabname) for item in items)


REQUIRED_ITEM_FIELDS = ("name", "filename", "prompt", "local_preview", "search_terms", "sort_keys")


def card_html(page, item, tabname):
    missing = [k for k in REQUIRED_ITEM_FIELDS if k not in item]
    if missing:
        raise KeyError(f"item {item.get('name')!r} of page {page.name} lacks {missing}")
    if not isinstance(item["search_terms"], (list, tuple)):
        raise TypeError("search_terms must be a list")
    if not isinstance(item["sort_keys"], dict):
        raise TypeError("sort_keys must be a dict")
    onclick = html.escape(f"return cardClicked({quote_js(tabname)}, {item['prompt']}, "
                          f"{'true' if page.allow_negative_prompt else 'false'})")
    preview = item.get("preview")
    style = f"background-image: url(&quot;{html.escape(preview)}&quot;)" if preview else ""
    return (f"<div class='card' style='{style}' onclick=\"{onclick}\" "
            f"data-name='{html.escape(item['name'], quote=True)}'>"
            f"<span class='name'>{html.escape(item['name'])}</span>"
            f"<span class='description'>{html.escape(item.get('description') or '')}</span></div>")
