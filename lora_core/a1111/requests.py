"""A1111's parsed tag arguments -> the prompt-tag text `lora_core.tags` reads.

The webui has already split each `<lora:...>` tag on ':' into `ExtraNetworkParams.items`. Joining
the items back with ':' gives the tag's own text, so `lora_core.tags.parse_prompt` applies exactly
the semantics (positional/named te, unet, dyn, lbw) the standalone app applies.
"""
from __future__ import annotations

from collections.abc import Iterable


def tag_text(params_list: Iterable) -> str:
    """`<lora:a:0.7> <lora:b:1:unet=0.5>` for a list of ExtraNetworkParams-like objects."""
    tags = []
    for params in params_list:
        items = [str(x) for x in (getattr(params, "items", None) or [])]
        if not items:
            continue
        tags.append("<lora:" + ":".join(items) + ">")
    return " ".join(tags)

