"""What a LoRA file is, from its header alone: training metadata, algorithm, base model family.

Pure functions over (tensor header, metadata); no file access except `keys_from_pickle_zip`,
which lists the key names of a torch zip checkpoint by walking its pickle opcodes (never
executing them).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import pickletools
import re
import zipfile
from collections import Counter

from lora_core.formats.family import family_from_header

logger = logging.getLogger(__name__)

MAX_TEXT = 2000          # longest metadata string kept in a summary
TOP_TAGS = 20
MAX_COVER_BYTES = 20 * 1024 * 1024
MAX_PICKLE_BYTES = 64 * 1024 * 1024

# suffix (after the module name) -> algorithm; the longest matching suffix wins
_SUFFIX_ALGO = [
    (".lora_up.weight", "lora"), (".lora_down.weight", "lora"), (".lora_mid.weight", "lora"),
    (".lora_A.weight", "lora"), (".lora_B.weight", "lora"), (".lora.up.weight", "lora"),
    (".lora.down.weight", "lora"), ("_lora.up.weight", "lora"), ("_lora.down.weight", "lora"),
    (".lora_A.default.weight", "lora"), (".lora_B.default.weight", "lora"),
    (".hada_w1_a", "loha"), (".hada_w1_b", "loha"), (".hada_w2_a", "loha"), (".hada_w2_b", "loha"),
    (".hada_t1", "loha"), (".hada_t2", "loha"),
    (".lokr_w1", "lokr"), (".lokr_w2", "lokr"), (".lokr_w1_a", "lokr"), (".lokr_w1_b", "lokr"),
    (".lokr_w2_a", "lokr"), (".lokr_w2_b", "lokr"), (".lokr_t2", "lokr"),
    (".on_input", "ia3"),
    (".oft_blocks", "oft"), (".oft_diag", "oft"),
    (".a1.weight", "glora"), (".a2.weight", "glora"), (".b1.weight", "glora"), (".b2.weight", "glora"),
    (".diff", "full"), (".diff_b", "full"),
    (".w_norm", "norm"), (".b_norm", "norm"),
]
_DORA_SUFFIXES = (".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight",
                  ".lora_magnitude_vector.default.weight")
# modules that only LoCon-style training touches (ResNet blocks, samplers)
_CONV_MODULE = re.compile(
    r"resnets|in_layers|out_layers|skip_connection|emb_layers|time_emb_proj|downsamplers|upsamplers"
    r"|conv_shortcut|conv_in|conv_out|_op\b|_op$"
)
_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", "_lora.down.weight",
                  ".lora_A.default.weight", ".hada_w1_b", ".a2.weight")
ALGO_PRIORITY = ["dora", "boft", "oft", "loha", "lokr", "glora", "ia3", "full", "locon", "lora", "norm"]



_SUFFIX_MAP = dict(_SUFFIX_ALGO)
_SUFFIX_MAP.update({suffix: "dora" for suffix in _DORA_SUFFIXES})
_OLD_DIFFUSERS = ("_lora.up.weight", "_lora.down.weight")


def split_key(key: str) -> tuple[str, str | None]:
    """(module name, algorithm) of one tensor key; algorithm None for alpha/scale/unknown keys.

    Suffixes hold one to three dotted parts; the longest known one wins (dict lookups, because a
    real file has ~1000 keys and 50,000 files may be indexed)."""
    if key.endswith(_OLD_DIFFUSERS):  # ...attn1.processor.to_q_lora.up.weight
        cut = key.rfind("_lora.")
        return key[:cut], "lora"
    found = None
    pos = len(key)
    for _ in range(3):
        pos = key.rfind(".", 0, pos)
        if pos <= 0:
            break
        algo = _SUFFIX_MAP.get(key[pos:])
        if algo is not None:
            found = (pos, algo)
    if found is None:
        return key.rsplit(".", 1)[0], None
    return key[: found[0]], found[1]


def detect_algorithm(header: dict) -> tuple[str, dict[str, int]]:
    """Main algorithm of a file and the per-algorithm module counts."""
    modules: dict[str, str] = {}
    dora = False
    for key, info in header.items():
        module, algo = split_key(key)
        if algo is None:
            continue
        if algo == "dora":
            dora = True
            continue
        if algo == "oft":
            shape = info.get("shape") if isinstance(info, dict) else None
            if isinstance(shape, list) and len(shape) == 4 and key.endswith(".oft_blocks"):
                algo = "boft"
        previous = modules.get(module)
        if algo == "lora":
            shape = info.get("shape") if isinstance(info, dict) else None
            conv3 = isinstance(shape, list) and len(shape) == 4 and shape[2:] != [1, 1]
            if conv3 or previous == "locon" or (previous is None and _CONV_MODULE.search(module.lower())):
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


def detect_family(header: dict, metadata: dict[str, str] | None = None) -> str:
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
    total: Counter = Counter()
    if isinstance(freq, dict):
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    tag = str(tag).strip()
                    if tag and isinstance(count, (int, float)):
                        total[tag[:200]] += int(count)
    return total.most_common(limit)


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


def network_dim(header: dict, metadata: dict[str, str]) -> int | None:
    dim = _int(metadata.get("ss_network_dim"))
    if dim is not None:
        return dim
    ranks = Counter()
    for key, info in header.items():
        if key.endswith(_DOWN_SUFFIXES[:5]) and isinstance(info, dict):
            shape = info.get("shape")
            if isinstance(shape, list) and shape and isinstance(shape[0], int):
                ranks[shape[0]] += 1
    return ranks.most_common(1)[0][0] if ranks else None


def summarize(header: dict, metadata: dict[str, str]) -> dict:
    """A JSON-able summary of one file's header (all strings clipped; untrusted text stays text)."""
    algorithm, algorithms = detect_algorithm(header)
    modelspec = {k: _clip(v) for k, v in metadata.items()
                 if k.startswith("modelspec.") and k != "modelspec.thumbnail"}
    alias = (metadata.get("ss_output_name") or metadata.get("modelspec.title") or "").strip()
    return {
        "family": detect_family(header, metadata),
        "algorithm": algorithm,
        "algorithms": algorithms,
        "alias": _clip(alias)[:200] or None,
        "base_model_version": _clip(metadata.get("ss_base_model_version", "")) or None,
        "sd_model_name": _clip(metadata.get("ss_sd_model_name", "")) or None,
        "network_module": _clip(metadata.get("ss_network_module", "")) or None,
        "network_dim": network_dim(header, metadata),
        "network_alpha": _float(metadata.get("ss_network_alpha")),
        "network_args": _json(metadata.get("ss_network_args")) if len(metadata.get("ss_network_args", "")) < MAX_TEXT else None,
        "top_tags": top_training_tags(metadata),
        "resolution": _resolution(metadata.get("ss_resolution")),
        "dataset_size": _dataset_size(metadata),
        "training_started_at": _float(metadata.get("ss_training_started_at")),
        "epochs": _int(metadata.get("ss_num_epochs")),
        "modelspec": modelspec,
        "trigger_phrase": _clip(metadata.get("modelspec.trigger_phrase", "")) or None,
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
