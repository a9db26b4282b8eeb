"""The Hugging Face token a user already has, found where huggingface_hub looks for it, so a user who
ran `hf auth login` (or `huggingface-cli login`) needs no extra setting: the environment first
(HF_TOKEN, then the older HUGGING_FACE_HUB_TOKEN), then the token file (HF_TOKEN_PATH, else
$HF_HOME/token, else $XDG_CACHE_HOME/huggingface/token, else ~/.cache/huggingface/token)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

_MAX_TOKEN_FILE = 4096  # a token is ~40 characters; anything much larger is not a token file


def token_file(env: Mapping[str, str]) -> Path:
    if env.get("HF_TOKEN_PATH"):
        return Path(env["HF_TOKEN_PATH"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "token"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "token"


def hf_token(env: Mapping[str, str] | None = None) -> str | None:
    """The token, or None when the user has none (or its file cannot be read: logged, not raised)."""
    env = os.environ if env is None else env
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (env.get(name) or "").strip()
        if value:
            return value
    path = token_file(env)
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > _MAX_TOKEN_FILE:
            logger.warning("%s: %d bytes is too large for a Hugging Face token file; ignored", path, path.stat().st_size)
            return None
        value = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        logger.warning("%s: cannot read the Hugging Face token (%s)", path, exc.strerror or exc)
        return None
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        if value:
            logger.warning("%s: not a Hugging Face token (one line, no spaces); ignored", path)
        return None
    return value
