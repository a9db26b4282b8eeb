"""What a LoRA file is, from its header alone: training metadata, algorithm, base model family.

Pure functions over (tensor header, metadata); no file access except `keys_from_pickle_zip`,
which lists the key names of a torch zip checkpoint by walking its pickle opcodes (never
executing them).
"""
from __future__ import annotations

import base64
import binascii
import heapq
import json
import logging
import math
import pickletools
import re
import zipfile
from collections import Counter
from operator import itemgetter

from lora_core.formats import algorithms as _algorithms
from lora_core.formats import family as _family
from lora_core.formats.family import family_from_header, family_from_metadata, family_variant
from lora_core.formats.keys import split_suffix
from lora_core.formats.layouts import detect as detect_layout
from lora_core.formats.layouts import split as split_by_layout

logger = logging.getLogger(__name__)

MAX_TEXT = 2000          # longest metadata string kept in a summary
TOP_TAGS = 20
MAX_COVER_BYTES = 20 * 1024 * 1024
MAX_PICKLE_BYTES = 64 * 1024 * 1024

# modules that only LoCon-style training touches (ResNet blocks, samplers)
_CONV_MODULE = re.compile(
    r"resnets|in_layers|out_layers|skip_connection|emb_layers|time_emb_proj|downsamplers|upsamplers"
    r"|conv_shortcut|conv_in|conv_out|_op\b|_op$"
)
ALGO_PRIORITY = ["dora", "boft", "oft", "loha", "lokr", "glora", "ia3", "full", "locon", "lora", "norm"]


def split_key(key: str) -> tuple[str, str | None]:
    """(module name, canonical suffix) of one tensor key, as `load_lora` splits it
    (`formats.layouts`: kohya, LyCORIS, diffusers, PEFT, XLabs, ... spellings); suffix None for unknown keys."""
    return split_by_layout(key) or split_suffix(key) or (key.rsplit(".", 1)[0], None)


def _is_conv_module(module: str) -> bool:
    return _CONV_MODULE.search(module.lower()) is not None


def detect_algorithm(header: dict, split=split_key, is_conv=_is_conv_module) -> tuple[str, dict[str, int]]:
    """Main algorithm of a file and the per-algorithm module counts.

    Each key that names an algorithm on its own (`formats.algorithms.marked_by`: the registry
    `load_lora` detects with) counts for its module, so a header missing a module's other
    tensors still says what it is. LoRA modules are LoCon if they have a conv kernel or are
    ResNet/sampler modules, and a file with any LoCon module is LoCon as a whole.

    `split` / `is_conv` may be memoised versions of `split_key` / `_is_conv_module` (a scan sees
    the same key names in file after file)."""
    modules: dict[str, str] = {}
    dora = False
    marked_by = _algorithms.marked_by
    for key, info in header.items():
        module, suffix = split(key)
        if suffix is None:
            continue
        if suffix in _algorithms.DORA:
            dora = True
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        algorithm = marked_by(suffix, shape)
        if algorithm is None:
            continue
        algo = algorithm.name
        previous = modules.get(module)
        if algo == "lora":
            conv3 = isinstance(shape, list) and len(shape) == 4 and shape[2:] != [1, 1]
            if conv3 or previous == "locon" or (previous is None and is_conv(module)):
                algo = "locon"
        if previous is None or (previous == "lora" and algo == "locon"):
            modules[module] = algo
    counts = Counter(modules.values())
    # LoCon is LoRA that also covers convolutions: a file with any conv modules is LoCon as a whole.
    if counts.get("locon"):
        counts["locon"] += counts.pop("lora", 0)
    if dora and (counts.get("locon") or counts.get("lora") or not counts):
        return "dora", dict(counts)
    if not counts:
        return "unknown", {}
    main = max(counts, key=lambda a: (counts[a] if a != "norm" else 0, -ALGO_PRIORITY.index(a)))
    return main, dict(counts)


# names of SD1-only layouts, a last resort when neither shapes, names nor metadata decide
_SD1_NAMES = re.compile(
    r"down_blocks[._]0[._]attentions|input_blocks[._][12][._]1[._]|output_blocks[._](9|10|11)[._]1")


# Which keys `formats.family` reads (see ARCHITECTURE.md, formats): its own `relevant(key)`.
# Should that module stop offering it, every key counts as relevant: slower, never wrong.
_FAMILY_RELEVANT = getattr(_family, "relevant", None)
_NOT_INPUT_FACTOR = getattr(_family, "_NOT_INPUT_FACTOR", None)
if not callable(_FAMILY_RELEVANT):
    _FAMILY_RELEVANT = lambda key: True  # noqa: E731
if not (isinstance(_NOT_INPUT_FACTOR, tuple) and all(isinstance(x, str) for x in _NOT_INPUT_FACTOR)):
    _NOT_INPUT_FACTOR = ("\0never",)   # every key's width counts: less sharing, never wrong


def _family_relevant(key: str) -> bool:
    """Whether one key can change `family_from_header_or_names`'s answer: a superset of every key the rules of
    `formats.family.family_from_header` (and the SD1 name fallback here) look at. Every one of
    those rules reads single keys, so the answer for the relevant keys alone is the answer for the
    whole file."""
    return _FAMILY_RELEVANT(key) or _SD1_NAMES.search(key.lower()) is not None


def family_from_header_or_names(header: dict, metadata: dict[str, str] | None = None) -> str:
    """sd1 | sd2 | sdxl | sd3 | flux | stable-cascade | transformer | unknown.

    The same rules `load_lora` applies to a loaded file (`lora_core.formats.family`, torch-free):
    text-encoder width (768 SD1, 1024 SD2, 1280 SDXL), cross-attention k/v input width (768, 1024,
    2048), a second text encoder, SDXL-only modules, then metadata; here read from the header's
    shapes. If all of that says nothing, SD1-only module names decide.
    """
    family = family_from_header(header, metadata or {})
    if family == "unknown" and _SD1_NAMES.search("\n".join(header).lower()):
        return "sd1"
    return family


def _json(text: str | None):
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _clip(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"


def top_training_tags(metadata: dict[str, str], limit: int = TOP_TAGS) -> list[tuple[str, int]]:
    """Most frequent caption tags over all datasets of `ss_tag_frequency`."""
    freq = _json(metadata.get("ss_tag_frequency"))
    total: dict[str, int] = {}
    if isinstance(freq, dict):
        get = total.get
        for tags in freq.values():
            if type(tags) is not dict:
                continue
            for tag, count in tags.items():  # JSON object keys are always str
                kind = type(count)
                if kind is not int:
                    if kind is bool:
                        count = int(count)
                    elif kind is float and math.isfinite(count):
                        count = int(count)
                    else:
                        continue  # text, null, lists, NaN/Infinity
                if len(tag) > 200 or tag[:1].isspace() or tag[-1:].isspace():
                    tag = tag.strip()[:200]
                if tag:
                    total[tag] = get(tag, 0) + count
    # what Counter.most_common does: ties keep the order tags were first seen
    return heapq.nlargest(limit, total.items(), key=itemgetter(1))


def _int(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError, OverflowError):
        return None


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _resolution(text: str | None) -> str | None:
    if not text:
        return None
    numbers = re.findall(r"\d+", text)
    if len(numbers) >= 2:
        return f"{numbers[0]}x{numbers[1]}"
    if len(numbers) == 1:
        return f"{numbers[0]}x{numbers[0]}"
    return None


def _dataset_size(metadata: dict[str, str]) -> int | None:
    size = _int(metadata.get("ss_num_train_images"))
    if size is not None:
        return size
    dirs = _json(metadata.get("ss_dataset_dirs"))
    if isinstance(dirs, dict):
        counts = [_int(v.get("img_count")) for v in dirs.values() if isinstance(v, dict)]
        counts = [c for c in counts if c is not None]
        return sum(counts) if counts else None
    return None


def cover_count(metadata: dict[str, str]) -> int:
    covers = _json(metadata.get("ssmd_cover_images"))
    n = len(covers) if isinstance(covers, list) else 0
    return n + (1 if metadata.get("modelspec.thumbnail", "").startswith("data:image") else 0)


def embedded_cover(metadata: dict[str, str]) -> bytes | None:
    """Bytes of the first embedded cover image (ssmd_cover_images, then modelspec.thumbnail)."""
    candidates = []
    covers = _json(metadata.get("ssmd_cover_images"))
    if isinstance(covers, list):
        candidates.extend(c for c in covers if isinstance(c, str))
    thumb = metadata.get("modelspec.thumbnail", "")
    if thumb.startswith("data:image") and "," in thumb:
        candidates.append(thumb.split(",", 1)[1])
    for text in candidates:
        if len(text) > MAX_COVER_BYTES * 4 // 3 + 4:
            continue
        try:
            return base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            continue
    return None


def _rank_from_shapes(header: dict, split=split_key) -> int | None:
    """The most common rank (`formats.algorithms.LoRA.rank`) over the LoRA down factors."""
    lora = _algorithms.BY_NAME["lora"]
    ranks = Counter()
    for key, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if isinstance(shape, list) and shape and type(shape[0]) is int and split(key)[1] == "lora_down.weight":
            ranks[lora.rank({"lora_down.weight": shape})] += 1
    return ranks.most_common(1)[0][0] if ranks else None


def network_dim(header: dict, metadata: dict[str, str]) -> int | None:
    dim = _int(metadata.get("ss_network_dim"))
    if dim is not None:
        return dim
    return _rank_from_shapes(header)


def summarize(header: dict, metadata: dict[str, str]) -> dict:
    """A JSON-able summary of one file's header (all strings clipped; untrusted text stays text)."""
    return Summarizer().summarize(header, metadata)


class _Memo(dict):
    """fn(key) remembered per key (a bounded cache: cleared when it grows past `limit`)."""

    def __init__(self, fn, limit: int):
        super().__init__()
        self.fn, self.limit = fn, limit

    def __missing__(self, key):
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.fn(key)
        return value


class _Layout:
    """What a summary takes from the tensor names and shapes alone."""

    __slots__ = ("names", "shapes", "algorithm", "algorithms", "_rank", "family_keys", "families", "_split",
                 "key_layout")

    def __init__(self, names, shapes, algorithm, algorithms, rank, family_keys, split=split_key):
        self.names, self.shapes, self._split = names, shapes, split
        self.algorithm, self.algorithms = algorithm, algorithms
        self._rank = rank   # False: worked out when a file lacks ss_network_dim (kohya files have it)
        self.family_keys = family_keys   # the sub-header family detection looks at
        self.families: dict[str, str] = {}   # family_from_metadata(...) -> family
        found = detect_layout(names)         # who wrote it, by key spelling (formats.layouts)
        self.key_layout = found.name if found is not None else None

    @property
    def rank(self) -> int | None:
        if self._rank is False:
            self._rank = _rank_from_shapes({n: {"shape": s} for n, s in zip(self.names, self.shapes)}, self._split)
        return self._rank


_shape_of = itemgetter("shape")


class Summarizer:
    """`summarize` for many files in a row (one per scan; not shared between threads).

    Everything a summary takes from the tensors (algorithm and module counts, family evidence,
    rank) depends on the tensor names and shapes only, and files from one trainer with one rank
    share those exactly: it is worked out once per distinct layout, and a file with a known layout
    costs two list comparisons. Per-key facts (suffix split, family relevance) are remembered by
    key name, so a new layout with familiar key names is cheap too. Bounded memory: the caches
    are cleared when they grow past their limits."""

    MAX_LAYOUTS = 128     # each holds its key names and shapes (~0.2 MB for 1000 keys)
    MAX_KEYS = 100_000

    def __init__(self):
        self._layouts: dict[tuple, list[_Layout]] = {}   # (count, first name, last name) -> layouts
        self._layout_count = 0
        self._split = _Memo(split_key, self.MAX_KEYS)
        self._conv = _Memo(_is_conv_module, self.MAX_KEYS)
        self._relevant = _Memo(_family_relevant, self.MAX_KEYS)
        self._families: dict = {}   # (family keys, their input widths, metadata answer) -> family

    def _layout(self, header: dict) -> _Layout:
        names = list(header)
        try:
            # names and shapes decide every fact below (dtype and offsets do not)
            shapes = list(map(_shape_of, header.values()))
        except (TypeError, KeyError):  # not a validated safetensors header (checkpoint key lists)
            shapes = None
        bucket = (len(names), names[0], names[-1]) if names and shapes is not None else None
        if bucket is not None:
            for layout in self._layouts.get(bucket, ()):
                if layout.names == names and layout.shapes == shapes:
                    return layout
        algorithm, algorithms = detect_algorithm(header, self._split.__getitem__, self._conv.__getitem__)
        relevant = self._relevant
        rank = False if shapes is not None else _rank_from_shapes(header, self._split)   # False: later, if needed
        layout = _Layout(names, shapes, algorithm, algorithms, rank, {k: v for k, v in header.items() if relevant[k]},
                         self._split.__getitem__)
        if bucket is not None:
            if self._layout_count >= self.MAX_LAYOUTS:
                self._layouts.clear()
                self._layout_count = 0
            self._layouts.setdefault(bucket, []).append(layout)
            self._layout_count += 1
        return layout

    def _family(self, layout: _Layout, metadata: dict[str, str]) -> str:
        # family_from_header reads metadata only through family_from_metadata, and only when
        # the tensors give no evidence: that answer completes the cache key
        by_meta = family_from_metadata(metadata)
        family = layout.families.get(by_meta)
        if family is None:
            family = layout.families[by_meta] = self._family_of_keys(layout.family_keys, metadata, by_meta)
        return family

    def _family_of_keys(self, keys: dict, metadata: dict[str, str], by_meta: str) -> str:
        """family_from_header_or_names of a sub-header, shared by layouts that differ only in rank: the rules
        read the names, and a shape only as the input width (shape[1:]) of a key that is not an
        output factor or scalar (ARCHITECTURE.md, formats)."""
        try:
            widths = tuple([None if k.endswith(_NOT_INPUT_FACTOR) else tuple(info["shape"][1:])
                            for k, info in keys.items()])
            key = (tuple(keys), widths, by_meta)
            family = self._families.get(key)
        except (TypeError, KeyError):   # shapes that are not lists: no sharing
            key = family = None
        if family is None:
            family = family_from_header_or_names(keys, metadata)
            if key is not None:
                if len(self._families) >= self.MAX_LAYOUTS:
                    self._families.clear()
                self._families[key] = family
        return family

    def summarize(self, header: dict, metadata: dict[str, str]) -> dict:
        layout = self._layout(header)
        get = metadata.get
        modelspec = {k: _clip(v) for k, v in metadata.items()
                     if k.startswith("modelspec.") and k != "modelspec.thumbnail"}
        alias = (get("ss_output_name") or get("modelspec.title") or "").strip()
        dim = _int(get("ss_network_dim"))
        args = get("ss_network_args", "")
        family = self._family(layout, metadata)
        return {
            "family": family,
            # flux-dev, sd3.5-large, ... from metadata only: a finer label, never a family of its own
            "family_variant": family_variant(metadata, family),
            "layout": layout.key_layout,
            "algorithm": layout.algorithm,
            "algorithms": dict(layout.algorithms),
            "alias": _clip(alias)[:200] or None,
            "base_model_version": _clip(get("ss_base_model_version", "")) or None,
            "sd_model_name": _clip(get("ss_sd_model_name", "")) or None,
            "network_module": _clip(get("ss_network_module", "")) or None,
            "network_dim": dim if dim is not None else layout.rank,
            "network_alpha": _float(get("ss_network_alpha")),
            "network_args": _json(args) if len(args) < MAX_TEXT else None,
            "top_tags": top_training_tags(metadata),
            "resolution": _resolution(get("ss_resolution")),
            "dataset_size": _dataset_size(metadata),
            "training_started_at": _float(get("ss_training_started_at")),
            "epochs": _int(get("ss_num_epochs")),
            "modelspec": modelspec,
            "trigger_phrase": _clip(get("modelspec.trigger_phrase", "")) or None,
            "cover_images": cover_count(metadata),
            "tensor_count": len(header),
        }


def keys_from_pickle_zip(path) -> list[str]:
    """Key-like strings of a torch zip checkpoint (.pt/.ckpt), by reading pickle opcodes only.

    Raises ValueError for a legacy (non-zip) pickle or a damaged archive. Nothing is unpickled.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                raise ValueError("zip archive without data.pkl")
            info = archive.getinfo(names[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise ValueError(f"data.pkl is {info.file_size} bytes, over the limit")
            data = archive.read(names[0])
    except zipfile.BadZipFile:
        raise ValueError("not a zip checkpoint (legacy pickle format: contents not inspected)") from None
    keys = []
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str) and "." in arg and " " not in arg and len(arg) < 400:
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    keys.append(arg)
    except Exception as exc:  # pickletools raises assorted errors on damaged streams
        raise ValueError(f"damaged pickle stream ({type(exc).__name__})") from None
    return keys
