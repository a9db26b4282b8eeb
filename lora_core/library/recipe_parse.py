"""Generation text -> a recipe: the prompt, the negative prompt and the LoRAs a picture names.

Formats (each written by other programs; every value here is untrusted):

* A1111/Forge infotext: prompt lines, "Negative prompt: ..." lines, then one line of
  `Key: value` settings whose values may be "quoted" (Lora hashes: "name: hash, ...") or JSON
  (Civitai resources: [...], Hashes: {...}). LoRAs are the prompt's `<lora:...>` tags.
* Civitai image metadata: the same infotext with `Civitai resources`, or the image API's `meta`
  object (prompt, negativePrompt, resources[{name, type, weight, hash}], hashes{"lora:name": h},
  civitaiResources[{type, weight, modelVersionId}]).
* ComfyUI: the API graph (`prompt`: {id: {class_type, inputs}}) or the editor graph (`workflow`:
  {nodes: [{type, widgets_values, mode}]}). LoRAs are LoraLoader / LoraLoaderModelOnly nodes
  (inputs lora_name, strength_model, strength_clip) and rgthree's Power Lora Loader (lora_N:
  {on, lora, strength, strengthTwo}); the prompt is the text of the CLIPTextEncode node a
  sampler's `positive` input links to.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from lora_core.tags import parse_prompt

MAX_JSON_CHARS = 4 * 1024 * 1024
MAX_LORAS = 100
_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")
_NEGATIVE = "Negative prompt:"
_SETTING_KEY = re.compile(r"\s*([A-Za-z][\w \-/().]{0,60}?):\s*")
_LORA_TYPES = ("lora", "lycoris", "locon", "loha", "lokr", "dora")


class RecipeFormatError(ValueError):
    """No generation data in the text; str() is a message for the user."""


@dataclass
class LoraRef:
    """One LoRA a picture names."""

    name: str = ""                 # as the picture names it (file stem for ComfyUI); "" when only an id
    te: float = 1.0
    unet: float = 1.0
    hashes: list[str] = field(default_factory=list)   # lower-case hex, as given (AutoV3/AutoV2/SHA256)
    version_id: int | None = None  # Civitai model-version id
    tag: str = ""                  # the tag text as it appears in the prompt ("" when not in it)


@dataclass
class Recipe:
    prompt: str = ""
    negative: str = ""
    loras: list[LoraRef] = field(default_factory=list)
    source: str = ""               # "a1111" | "civitai" | "comfyui"
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def recipe_from_texts(texts: dict[str, str]) -> Recipe:
    """The recipe of a picture's texts (see recipe_image.image_texts). Raises RecipeFormatError."""
    params = texts.get("parameters") or texts.get("comment")
    if params and params.strip():
        stripped = params.strip()
        if stripped.startswith("{"):
            meta = load_json(stripped, "the picture's JSON metadata")
            if isinstance(meta, dict):
                return recipe_from_civitai_meta(meta)
        return recipe_from_infotext(params)
    if texts.get("prompt") or texts.get("workflow"):
        return recipe_from_comfyui(texts.get("prompt"), texts.get("workflow"))
    raise RecipeFormatError("the picture holds no generation data (no A1111 parameters, Civitai or ComfyUI metadata)")


def load_json(text: str, what: str):
    if len(text) > MAX_JSON_CHARS:
        raise RecipeFormatError(f"{what} is too large")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecipeFormatError(f"{what} is not valid JSON ({str(exc)[:100]})") from None


# -- A1111 infotext ----------------------------------------------------------------------------------
def recipe_from_infotext(text: str) -> Recipe:
    lines = text.replace("\r\n", "\n").strip().split("\n")
    settings: dict = {}
    if lines and _looks_like_settings(lines[-1]):
        settings = parse_settings(lines[-1])
        lines = lines[:-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if not in_negative and line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    recipe = Recipe(prompt="\n".join(prompt_lines).strip(), negative="\n".join(negative_lines).strip(),
                    source="a1111", settings={k: v for k, v in settings.items() if isinstance(v, str)})
    hashes = lora_hashes(settings.get("Lora hashes"))
    hashes.update(_hashes_json(settings.get("Hashes")))
    recipe.loras = loras_in_prompt(recipe.prompt, hashes)
    resources = settings.get("Civitai resources")
    if resources is not None:
        recipe.source = "civitai"
        _add_civitai_resources(recipe, resources)
    return recipe


def _looks_like_settings(line: str) -> bool:
    pairs = parse_settings(line)
    return "Steps" in pairs or len(pairs) >= 3


def parse_settings(line: str) -> dict:
    """`Key: value, Key: "quoted, value", Key: [json], ...` -> {key: str | parsed JSON}."""
    out: dict = {}
    pos, n = 0, len(line)
    decoder = json.JSONDecoder()
    while pos < n:
        m = _SETTING_KEY.match(line, pos)
        if not m:
            break
        key, pos = m.group(1).strip(), m.end()
        value: object
        if pos < n and line[pos] in "[{":
            try:
                value, end = decoder.raw_decode(line, pos)
            except (ValueError, RecursionError):
                end = _next_comma(line, pos)
                value = line[pos:end]
            pos = end
        elif pos < n and line[pos] == '"':
            end = pos + 1
            while end < n and line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            raw = line[pos:end + 1]
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw.strip('"')
            pos = end + 1
        else:
            end = _next_comma(line, pos)
            value = line[pos:end].strip()
            pos = end
        if key not in out:
            out[key] = value
        while pos < n and line[pos] in " ,":
            pos += 1
    return out


def _next_comma(line: str, pos: int) -> int:
    end = line.find(",", pos)
    return len(line) if end < 0 else end


def lora_hashes(value) -> dict[str, str]:
    """`Lora hashes: "name: hash, other: hash"` -> {name: hash}."""
    out: dict[str, str] = {}
    if not isinstance(value, str):
        return out
    for part in value.split(","):
        name, sep, h = part.strip().rpartition(":")
        h = h.strip().lower()
        if sep and name.strip() and _HEX.match(h):
            out[name.strip()] = h
    return out


def _hashes_json(value) -> dict[str, str]:
    """`Hashes: {"model": h, "lora:name": h}` -> {name: hash} of the LoRA keys."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, h in value.items():
            if isinstance(key, str) and key.lower().startswith(("lora:", "lyco:")) and isinstance(h, str) \
                    and _HEX.match(h.strip()):
                out[key.split(":", 1)[1]] = h.strip().lower()
    return out


def loras_in_prompt(prompt: str, hashes: dict[str, str]) -> list[LoraRef]:
    refs = []
    for req in parse_prompt(prompt).requests[:MAX_LORAS]:
        h = hashes.get(req.name) or hashes.get(req.name.rsplit("/", 1)[-1])
        refs.append(LoraRef(name=req.name, te=req.te, unet=req.unet, hashes=[h] if h else [], tag=req.source))
    return refs


def _add_civitai_resources(recipe: Recipe, resources) -> None:
    if not isinstance(resources, list):
        recipe.notes.append("Civitai resources: not a list, ignored")
        return
    for item in resources[:MAX_LORAS]:
        if not isinstance(item, dict) or str(item.get("type", "")).lower() not in _LORA_TYPES:
            continue
        vid = _int(item.get("modelVersionId"))
        name = _text(item.get("modelName") or item.get("name") or "")
        if vid is not None and any(r.version_id == vid for r in recipe.loras):
            continue
        weight = _num(item.get("weight"), 1.0)
        h = item.get("hash")
        ref = LoraRef(name=name, te=weight, unet=weight, version_id=vid,
                      hashes=[h.lower()] if isinstance(h, str) and _HEX.match(h) else [])
        same = _same_lora(recipe.loras, ref)
        if same is not None:  # the prompt's tag already names it: add the id, keep the tag's weights
            same.version_id = same.version_id or vid
            same.hashes = same.hashes or ref.hashes
            continue
        recipe.loras.append(ref)


def _same_lora(refs: list[LoraRef], ref: LoraRef) -> LoraRef | None:
    for r in refs:
        if ref.hashes and set(ref.hashes) & set(r.hashes):
            return r
        if ref.name and r.name and ref.name.lower() == r.name.lower():
            return r
    return None


# -- Civitai image API meta --------------------------------------------------------------------------
def recipe_from_civitai_meta(meta: dict) -> Recipe:
    prompt = _text(meta.get("prompt"))
    recipe = Recipe(prompt=prompt, negative=_text(meta.get("negativePrompt")), source="civitai")
    hashes = _hashes_json(meta.get("hashes"))
    for item in meta.get("resources") if isinstance(meta.get("resources"), list) else []:
        if isinstance(item, dict) and str(item.get("type", "")).lower() in _LORA_TYPES:
            name, h = _text(item.get("name")), item.get("hash")
            if name and isinstance(h, str) and _HEX.match(h):
                hashes.setdefault(name, h.lower())
    recipe.loras = loras_in_prompt(prompt, hashes)
    for item in meta.get("resources") if isinstance(meta.get("resources"), list) else []:
        if isinstance(item, dict) and str(item.get("type", "")).lower() in _LORA_TYPES:
            name = _text(item.get("name"))
            weight = _num(item.get("weight"), 1.0)
            ref = LoraRef(name=name, te=weight, unet=weight, hashes=[hashes[name]] if name in hashes else [])
            if (ref.name or ref.hashes) and _same_lora(recipe.loras, ref) is None and len(recipe.loras) < MAX_LORAS:
                recipe.loras.append(ref)
    _add_civitai_resources(recipe, meta.get("civitaiResources") or [])
    return recipe


# -- ComfyUI ---------------------------------------------------------------------------------------------
_LOADERS = {"LoraLoader": ("strength_model", "strength_clip"), "LoraLoaderModelOnly": ("strength_model", None)}
_POWER_LOADER = "Power Lora Loader (rgthree)"
_MUTED_MODES = (2, 4)  # the editor's "mute" and "bypass": such a node does not run


def recipe_from_comfyui(prompt_text: str | None, workflow_text: str | None) -> Recipe:
    recipe = Recipe(source="comfyui")
    graph = load_json(prompt_text, "the ComfyUI prompt") if prompt_text else None
    if isinstance(graph, dict) and graph:
        _from_api_graph(graph, recipe)
        return recipe
    workflow = load_json(workflow_text, "the ComfyUI workflow") if workflow_text else None
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        _from_workflow(workflow, recipe)
        return recipe
    raise RecipeFormatError("the ComfyUI metadata holds no graph")


def _from_api_graph(graph: dict, recipe: Recipe) -> None:
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict)}
    for node in nodes.values():
        kind, inputs = node.get("class_type"), node.get("inputs")
        if not isinstance(inputs, dict) or len(recipe.loras) >= MAX_LORAS:
            continue
        if kind in _LOADERS:
            model_key, clip_key = _LOADERS[kind]
            unet = _num(inputs.get(model_key), 1.0)
            te = _num(inputs.get(clip_key), 1.0) if clip_key else 0.0
            _add_file(recipe, inputs.get("lora_name"), te, unet)
        elif kind == _POWER_LOADER:
            for key, slot in inputs.items():
                if str(key).lower().startswith("lora_") and isinstance(slot, dict):
                    _add_power_slot(recipe, slot)
    positive, negative = _sampler_texts(nodes)
    recipe.prompt, recipe.negative = positive, negative
    _append_tags(recipe)


def _sampler_texts(nodes: dict) -> tuple[str, str]:
    """The texts a sampler's positive/negative inputs link to (through one CLIPTextEncode)."""
    def text_of(link) -> str:
        if isinstance(link, list) and link:
            node = nodes.get(str(link[0]))
            if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
                for key in ("text", "text_g", "text_l"):
                    value = node["inputs"].get(key)
                    if isinstance(value, str):
                        return value
        return ""

    for node in nodes.values():
        inputs = node.get("inputs")
        if "Sampler" in str(node.get("class_type", "")) and isinstance(inputs, dict) and "positive" in inputs:
            return text_of(inputs.get("positive")), text_of(inputs.get("negative"))
    texts = [n["inputs"]["text"] for n in nodes.values() if n.get("class_type") == "CLIPTextEncode"
             and isinstance(n.get("inputs"), dict) and isinstance(n["inputs"].get("text"), str)]
    return (texts[0] if texts else ""), (texts[1] if len(texts) > 1 else "")


def _from_workflow(workflow: dict, recipe: Recipe) -> None:
    texts = []
    for node in workflow["nodes"]:
        if not isinstance(node, dict) or node.get("mode") in _MUTED_MODES or len(recipe.loras) >= MAX_LORAS:
            continue
        kind, values = node.get("type"), node.get("widgets_values")
        if not isinstance(values, list):
            continue
        if kind == "LoraLoader" and len(values) >= 3:
            _add_file(recipe, values[0], _num(values[2], 1.0), _num(values[1], 1.0))
        elif kind == "LoraLoaderModelOnly" and len(values) >= 2:
            _add_file(recipe, values[0], 0.0, _num(values[1], 1.0))
        elif kind == _POWER_LOADER:
            for slot in values:
                if isinstance(slot, dict) and "lora" in slot:
                    _add_power_slot(recipe, slot)
        elif kind == "CLIPTextEncode" and values and isinstance(values[0], str):
            texts.append(values[0])
    # the editor graph does not say which text is positive without following links; the first
    # text node is the positive one in ComfyUI's default graph
    recipe.prompt = texts[0] if texts else ""
    recipe.negative = texts[1] if len(texts) > 1 else ""
    recipe.notes.append("read from the ComfyUI editor graph: which text is the negative prompt is a guess")
    _append_tags(recipe)


def _add_power_slot(recipe: Recipe, slot: dict) -> None:
    if slot.get("on") is False:
        return
    unet = _num(slot.get("strength"), 1.0)
    two = slot.get("strengthTwo")
    te = _num(two, unet) if two is not None else unet
    _add_file(recipe, slot.get("lora"), te, unet)


def _add_file(recipe: Recipe, lora_name, te: float, unet: float) -> None:
    if not isinstance(lora_name, str) or not lora_name.strip() or lora_name.strip().lower() == "none":
        return
    stem = re.split(r"[\\/]", lora_name.strip())[-1]
    stem = re.sub(r"\.(safetensors|pt|ckpt|bin)$", "", stem, flags=re.IGNORECASE)
    if stem:
        recipe.loras.append(LoraRef(name=_text(stem, 200), te=te, unet=unet))


def _append_tags(recipe: Recipe) -> None:
    """ComfyUI prompts carry no tags: the LoRAs become tags after the prompt (filled in with the
    local names by the resolver)."""
    for ref in recipe.loras:
        ref.tag = ""


# -- values -------------------------------------------------------------------------------------------------
def _num(value, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 < value < 2**53:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 16:
        return int(value)
    return None


def _text(value, limit: int = 100_000) -> str:
    return value[:limit] if isinstance(value, str) else ""
