"""`python -m lora_core info PATH [--json]`: what a LoRA file is.

Algorithms, base-model family (and its variant where the metadata names one: flux-dev, sd3.5-large, ...),
the key layout (who wrote the file: kohya, diffusers, comfyui, onetrainer, lycoris, xlabs), rank/alpha,
module counts per component, a summary of the kohya training metadata (ss_* keys) and the hashes
sites use to identify the file: sha256 (Civitai "SHA256"), AutoV2 (its first 10 hex digits), the
addnet hash (sha256 of the bytes after the safetensors header, as kohya's sd-scripts and A1111
compute it) and AutoV3 (its first 12).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections import Counter

# training metadata worth a line, in display order (ss_* keys written by kohya's sd-scripts)
_TRAINING_KEYS = (
    ("ss_output_name", "output name"),
    ("ss_sd_model_name", "base model"),
    ("ss_base_model_version", "base version"),
    ("ss_network_module", "network module"),
    ("ss_network_dim", "network dim"),
    ("ss_network_alpha", "network alpha"),
    ("ss_network_args", "network args"),
    ("ss_resolution", "resolution"),
    ("ss_num_train_images", "train images"),
    ("ss_num_epochs", "epochs"),
    ("ss_max_train_steps", "max steps"),
    ("ss_learning_rate", "learning rate"),
    ("ss_unet_lr", "unet lr"),
    ("ss_text_encoder_lr", "te lr"),
    ("ss_optimizer", "optimizer"),
    ("ss_clip_skip", "clip skip"),
    ("ss_training_started_at", "started at"),
    ("ss_training_finished_at", "finished at"),
)
_MAX_VALUE = 200
_TOP_TAGS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lora_core.library.locations import add_data_dir_argument, add_location_arguments

    parser.add_argument("path", help="a LoRA file (.safetensors, or .pt/.ckpt read without pickle code), or a name "
                                     "as in <lora:NAME> looked up in the LoRA folders")
    add_location_arguments(parser)
    add_data_dir_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-hash", action="store_true", help="skip hashing (fast on big files)")


def _safe(text, limit: int = _MAX_VALUE) -> str:
    """Metadata is untrusted: no control characters (terminal escapes) and bounded length."""
    text = "".join(ch if unicodedata.category(ch)[0] != "C" or ch == " " else "�" for ch in str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(path: str, with_hashes: bool = True) -> dict:
    """The facts `info` prints, as a JSON-able dict. Raises LoraFormatError for a bad file."""
    from lora_core.formats import load_lora
    from lora_core.formats.family import family_variant

    lora = load_lora(path)
    adapters = list(lora.adapters.values())
    components = Counter(str(a.key).split(":", 1)[0] for a in adapters)
    ranks = Counter(a.rank for a in adapters if getattr(a, "rank", None) is not None)
    alphas = Counter(_num(a.alpha) for a in adapters if getattr(a, "alpha", None) is not None)
    meta = lora.metadata or {}
    training = {label: _safe(meta[key]) for key, label in _TRAINING_KEYS if key in meta and str(meta[key]).strip()}
    info = {
        "name": lora.name,
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "family": lora.family,
        "variant": family_variant(lora.metadata or {}, lora.family),
        "layout": getattr(lora, "layout", "") or None,
        "algorithms": dict(lora.algorithms()),
        "modules": dict(components),
        "unclaimed": len(lora.unclaimed),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "alphas": {str(k): v for k, v in sorted(alphas.items(), key=lambda kv: float(kv[0]))},
        "training": training,
        "top_tags": [[_safe(t, 60), n] for t, n in _top_tags(meta)],
        "metadata_keys": len(meta),
    }
    if with_hashes:
        info["hashes"] = file_hashes(path)
    return info


def file_hashes(path: str) -> dict:
    from lora_core.library.hashing import hash_file

    sha, addnet = hash_file(path, path.lower().endswith(".safetensors"))
    return {"sha256": sha, "autov2": sha[:10], "addnet": addnet, "autov3": addnet[:12]}


def _num(x) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() else round(x, 6)


def _top_tags(meta: dict) -> list:
    from lora_core.library.inspect_header import top_training_tags

    try:
        return top_training_tags(meta, _TOP_TAGS)
    except Exception:  # malformed ss_tag_frequency: not worth failing the command
        return []


def _counts(c: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in c.items()) or "-"


def format_text(info: dict) -> str:
    lines = [
        f"{_safe(info['name'])}",
        f"  path:       {_safe(info['path'], 1000)}",
        f"  size:       {info['size'] / 1e6:.2f} MB",
        f"  family:     {info['family']}" + (f" ({_safe(info['variant'])})" if info.get("variant") else ""),
        f"  layout:     {info.get('layout') or '-'}",
        f"  algorithms: {_counts(info['algorithms'])}",
        f"  modules:    {_counts(info['modules'])}" + (f" (+{info['unclaimed']} not understood)" if info["unclaimed"] else ""),
        f"  rank:       {_counts(info['ranks'])}",
        f"  alpha:      {_counts(info['alphas'])}",
    ]
    if info["training"]:
        lines.append("  training:")
        width = max(len(k) for k in info["training"])
        lines += [f"    {k.ljust(width)}  {v}" for k, v in info["training"].items()]
    if info["top_tags"]:
        lines.append("  top tags:   " + ", ".join(f"{t} ({n})" for t, n in info["top_tags"]))
    if "hashes" in info:
        h = info["hashes"]
        lines += [
            f"  sha256:     {h['sha256']}",
            f"  AutoV2:     {h['autov2'].upper()}",
            f"  addnet:     {h['addnet']}",
            f"  AutoV3:     {h['autov3'].upper()}",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lora_core.formats import LoraFormatError

    from lora_core.library.locations import looks_like_path, resolve_lora

    if not looks_like_path(args.path):
        try:
            args.path = resolve_lora(args.path, args)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not os.path.isfile(args.path):
        print(f"error: {args.path}: no such file", file=sys.stderr)
        return 2
    try:
        info = describe(args.path, with_hashes=not args.no_hash)
    except LoraFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2, ensure_ascii=True) if args.json else format_text(info))
    return 0
