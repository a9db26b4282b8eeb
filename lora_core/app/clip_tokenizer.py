"""CLIP tokenizer built offline from the BPE vocabulary that ships inside open-clip-torch.

SD1's CLIP-L, SD2's and SDXL's OpenCLIP text encoders all use the same 49408-token byte-level BPE
vocabulary. open-clip-torch carries it as `bpe_simple_vocab_16e6.txt.gz`; we convert it once to the
`vocab.json` + `merges.txt` pair that transformers' CLIPTokenizer reads and cache that under the data
dir. open_clip itself is never imported (it needs torchvision): only its package folder is located.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merge rules of the file (line 0 is a version header).
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


class TokenizerUnavailable(RuntimeError):
    """The CLIP BPE vocabulary could not be found (open-clip-torch missing)."""


def find_bpe_file() -> Path:
    """Path of open_clip's bundled BPE vocabulary, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise TokenizerUnavailable(
        f"CLIP vocabulary {BPE_FILE_NAME} not found: install open-clip-torch (pip install --no-deps open-clip-torch)"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character table (GPT-2 style)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Vocabulary (token -> id) and merge rules exactly as CLIP's SimpleTokenizer defines them."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(rule.split()) for rule in merges]
    tokens += [START_TOKEN, END_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise TokenizerUnavailable(f"{bpe_path}: unexpected vocabulary size {len(tokens)} (expected {VOCAB_SIZE})")
    return {tok: i for i, tok in enumerate(tokens)}, merges


def ensure_tokenizer_files(cache_dir: str | os.PathLike) -> Path:
    """Write vocab.json + merges.txt under cache_dir/clip_tokenizer (once) and return that folder."""
    bpe_path = find_bpe_file()
    digest = hashlib.sha256(bpe_path.read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) / "clip_tokenizer" / digest
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        return folder
    vocab, merges = build_vocab_and_merges(bpe_path)
    folder.mkdir(parents=True, exist_ok=True)
    # atomic writes, so a concurrent or interrupted run never leaves a half file behind
    from lora_core.library.atomic import atomic_write

    for target, text in (
        (vocab_file, json.dumps(vocab, ensure_ascii=False)),
        (merges_file, "#version: 0.2\n" + "\n".join(merges) + "\n"),
    ):
        atomic_write(target, text.encode("utf-8"))
    logger.info("wrote CLIP tokenizer files to %s", folder)
    return folder


def load_clip_tokenizer(cache_dir: str | os.PathLike, pad_token: str = END_TOKEN, max_length: int = 77):
    """A transformers CLIPTokenizer over the real CLIP vocabulary.

    pad_token: SD1 and SDXL's CLIP-L pad with <|endoftext|>; SD2 and SDXL's OpenCLIP bigG pad with "!".
    """
    from transformers import CLIPTokenizer

    folder = ensure_tokenizer_files(cache_dir)
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=max_length,
    )
