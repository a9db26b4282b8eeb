"""Recipes from pictures: the prompt and the LoRAs a generated picture names, matched to the library.

    recipe_from_image(data, library, civitai=None, tag_name=None) -> RecipeResult

reads the picture's embedded text (recipe_image), parses A1111/Forge infotext, Civitai metadata or
a ComfyUI graph (recipe_parse), then resolves every LoRA: by hash first (the picture's AutoV3,
AutoV2 or SHA256 against the index's sha256/addnet hashes, through `Library.by_hash`), then by a
`.civitai.info` model-version id, then by name (`Library.find`). The prompt that comes back holds
one tag per LoRA in the form `lora_core.tags` parses, named as the local library answers to it.
LoRAs not in the library are listed with whether Civitai knows their hash (the client's by-hash
lookup; no client or no network: "unknown") and, when it does, what to download.

Never raises for a bad picture: `RecipeResult.error` says what is wrong with it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from lora_core.library import queries
from lora_core.library.recipe_image import RecipeImageError, image_texts
from lora_core.library.recipe_parse import LoraRef, Recipe, RecipeFormatError, recipe_from_texts

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_CIVITAI_LOOKUPS = 20   # one picture names a handful; a hostile one must not make 1000 requests
KNOWN, UNKNOWN_TO_CIVITAI, UNKNOWN = "yes", "no", "unknown"


@dataclass
class ResolvedLora:
    name: str                       # as the picture names it
    te: float
    unet: float
    found: bool = False
    match: str = ""                 # "hash" | "version" | "name" | "" (missing)
    path: str = ""                  # the local file
    tag: str = ""                   # the tag placed in the prompt ("" when it has no usable name)
    hash: str = ""                  # the hash the picture gives (first one)
    version_id: int | None = None
    note: str = ""
    civitai: str = ""               # missing only: KNOWN | UNKNOWN_TO_CIVITAI | UNKNOWN
    civitai_name: str = ""          # "model name / version name" when Civitai knows it
    download: str = ""              # what the download queue takes: a Civitai model-version URL
    link: str = ""                  # the Civitai page


@dataclass
class RecipeResult:
    prompt: str = ""
    negative: str = ""
    source: str = ""
    loras: list[ResolvedLora] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    error: str = ""

    @property
    def missing(self) -> list[ResolvedLora]:
        return [r for r in self.loras if not r.found]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["missing"] = len(self.missing)
        return data


def recipe_from_image(data: bytes, library: Any, civitai: Any = None,
                      tag_name: Callable[[Any], str] | None = None, name: str = "the picture") -> RecipeResult:
    """See the module docstring. `civitai`: a CivitaiClient (or None: offline); `tag_name(entry)`:
    the name a prompt tag uses for an entry (the UI's alias/name/folder choice; default the stem)."""
    if data is not None and len(data) > MAX_IMAGE_BYTES:
        return RecipeResult(error=f"{name}: larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        recipe = recipe_from_texts(image_texts(data, name))
    except (RecipeImageError, RecipeFormatError) as exc:
        return RecipeResult(error=str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
    return resolve(recipe, library, civitai, tag_name)


def resolve(recipe: Recipe, library: Any, civitai: Any = None,
            tag_name: Callable[[Any], str] | None = None) -> RecipeResult:
    tag_name = tag_name or (lambda entry: entry.name)
    result = RecipeResult(negative=recipe.negative, source=recipe.source, notes=list(recipe.notes),
                          settings=dict(recipe.settings))
    lookups = 0
    appended = []
    renames: dict[str, str] = {}  # the picture's name -> the local one, for every tag in the prompt
    for ref in recipe.loras:
        item = ResolvedLora(name=ref.name, te=ref.te, unet=ref.unet, hash=ref.hashes[0] if ref.hashes else "",
                            version_id=ref.version_id)
        entry, item.match, item.note = _local(ref, library)
        if entry is not None:
            item.found, item.path = True, entry.path
            local = _tag_safe(tag_name(entry)) or entry.name
        else:
            local = _tag_safe(ref.name)
            lookups += 1 if ref.hashes and civitai is not None else 0
            _ask_civitai(item, ref, civitai if lookups <= MAX_CIVITAI_LOOKUPS else None)
        if local:
            item.tag = _tag(ref, local)
            if ref.tag:
                renames.setdefault(ref.name, local)
            else:
                appended.append(item.tag)
        result.loras.append(item)
    result.prompt = _join(_rename_tags(recipe.prompt, renames), appended)
    return result


def _rename_tags(prompt: str, renames: dict[str, str]) -> str:
    """Every <lora:NAME...>/<lyco:NAME...> tag of the prompt with NAME in `renames` (a LoRA may be
    named by several tags: all of them) gets the local name; its weights and options are kept. One
    pass over the original text, so a new name is never renamed again."""
    def rename(m: re.Match) -> str:
        name, sep, rest = m.group(2).partition(":")
        local = renames.get(name.strip().replace("\\", "/"))  # the name as tags/parser reads it
        return m.group(0) if local is None else f"<{m.group(1)}:{local}{sep}{rest}>"
    return _PROMPT_TAG.sub(rename, prompt) if renames else prompt


_PROMPT_TAG = re.compile(r"<(lora|lyco):([^<>]*)>", re.IGNORECASE)  # tags/parser's tag, LoRA kinds only


def _local(ref: LoraRef, library: Any) -> tuple[Any, str, str]:
    """(entry, how it matched, note) of the library file a reference means; (None, "", note) if none."""
    for h in ref.hashes:
        try:
            hits = [e for e in library.by_hash(h) if not getattr(e, "error", None)]
        except ValueError:
            hits = []
        if hits:
            # copies of one file: the one named as the picture names it, else the shallowest path
            hits.sort(key=lambda e: (e.name.lower() != ref.name.lower(), e.rel_name.count("/"), e.rel_name))
            return hits[0], "hash", ""
    if ref.version_id is not None:
        entry = _by_version(library, ref.version_id)
        if entry is not None:
            return entry, "version", ""
    if ref.name:
        try:
            entry = library.find(ref.name)
        except LookupError:  # NotFound, AmbiguousName
            entry = None
        except Exception:  # noqa: BLE001 - a name the library cannot parse is simply not found
            logger.debug("find(%r) failed", ref.name, exc_info=True)
            entry = None
        if entry is not None and not getattr(entry, "error", None):
            note = ""
            local = (getattr(entry, "addnet_sha256", None) or "", getattr(entry, "sha256", None) or "")
            if ref.hashes and all(local) and not any(x.startswith(h) for h in ref.hashes for x in local):
                note = "same name, different file (its hash differs from the picture's)"
            return entry, "name", note
    return None, "", ""


def _by_version(library: Any, version_id: int):
    db, roots = getattr(library, "db", None), getattr(library, "roots", None)
    if db is None or roots is None:
        return None
    rows = [r for r in queries.rows_by_civitai_version(db, roots, version_id) if r["error"] is None]
    return queries.entry_from_row(rows[0]) if rows else None


def _ask_civitai(item: ResolvedLora, ref: LoraRef, civitai: Any) -> None:
    """Fill item.civitai (KNOWN / UNKNOWN_TO_CIVITAI / UNKNOWN) and, when known, what to download."""
    model_id, version_id, answer = None, ref.version_id, UNKNOWN
    if ref.hashes and civitai is not None:
        try:
            found = civitai.lookup(ref.hashes[0])
        except Exception as exc:  # noqa: BLE001 - the client should not raise; offline is "unknown"
            logger.info("Civitai lookup of %s failed: %s", ref.hashes[0], exc)
            found = None
        version = getattr(found, "version", None)
        if getattr(found, "status", None) == "found" and version is not None:
            answer, model_id, version_id = KNOWN, version.model_id, version.version_id
            item.civitai_name = f"{version.model_name} / {version.name}"
            item.link = version.link or ""
        elif getattr(found, "status", None) == "not_found":
            answer = UNKNOWN_TO_CIVITAI
    if answer != KNOWN and version_id is not None:
        answer = KNOWN  # the picture names a Civitai model-version id: Civitai issued it
    item.civitai = answer
    if answer == KNOWN and version_id is not None:
        item.version_id = version_id
        # what the download queue (library/download_sources.parse_source) takes
        item.download = (f"civitai:{model_id}@{version_id}" if model_id is not None
                         else f"https://civitai.com/model-versions/{version_id}")


_TAG_BREAKERS = re.compile(r"[<>:\n\r]")


def _tag_safe(name: str) -> str:
    """A name usable inside `<lora:...>` (characters that would end or split the tag removed)."""
    return _TAG_BREAKERS.sub("_", name or "").strip()[:200]


def _weight(w: float) -> str:
    text = f"{w:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _tag(ref: LoraRef, local: str) -> str:
    if ref.tag:  # keep the picture's own tag (weights, lbw, ...) and change only the name
        m = re.match(r"<(lora|lyco):", ref.tag, flags=re.IGNORECASE)
        if m and ref.tag[m.end():].startswith(ref.name):
            return ref.tag[:m.end()] + local + ref.tag[m.end() + len(ref.name):]
        return ref.tag
    if abs(ref.te - ref.unet) < 1e-9:
        return f"<lora:{local}:{_weight(ref.unet)}>"
    return f"<lora:{local}:{_weight(ref.te)}:{_weight(ref.unet)}>"


def _join(prompt: str, tags: list[str]) -> str:
    if not tags:
        return prompt
    prompt = prompt.rstrip()
    sep = ", " if prompt and not prompt.endswith(",") else (" " if prompt else "")
    return prompt + sep + ", ".join(tags)
