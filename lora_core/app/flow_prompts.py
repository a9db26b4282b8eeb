"""Text and guidance arguments of a Flux / SD3 (flow-matching) pipeline call, and what the user is told.

Prompt weighting: A1111's emphasis `(word:1.2)` and BREAK are defined on CLIP's 75-token chunks
(prompt_encode.py). Flux and SD3 read most of the prompt through T5, which has no such chunks and
whose embeddings do not keep their meaning when scaled token by token, and applying the weights to
the CLIP part alone would make the two encoders disagree. So for these families the syntax is read
(prompt_syntax.py) and removed: every encoder gets the plain text, with a message saying the
weights were not applied. Escaped brackets stay literal text.

Guidance: SD3 uses real classifier-free guidance (the CFG scale, the negative prompt). Flux.1-dev
is guidance-distilled: the CFG scale becomes its embedded guidance value and there is no negative
prompt; Flux.1-schnell (no guidance embedder) ignores both.
"""
from __future__ import annotations

from .prompt_syntax import needs_weighting, parse_prompt

# the pipelines' default max_sequence_length (the app calls them with it)
T5_TOKENS = {"flux": 512, "sd3": 256}


def plain_text(prompt: str) -> str:
    """The prompt without emphasis brackets, weights and BREAK (a BREAK becomes a space)."""
    text = "".join(" " if p.is_break else p.text for p in parse_prompt(prompt or ""))
    return " ".join(text.split())


def _has_guidance_embedder(pipe) -> bool:
    return bool(getattr(pipe.transformer.config, "guidance_embeds", False))


def call_arguments(pipe, family: str, prompt: str, negative: str) -> dict:
    """pipe(...) keyword arguments for the texts (the CFG scale goes in as `guidance_scale` for
    both: Flux's embedded guidance, SD3's classifier-free guidance)."""
    if family == "flux":
        return {"prompt": plain_text(prompt)}
    return {"prompt": plain_text(prompt), "negative_prompt": plain_text(negative) or None}


def notes(pipe, family: str, prompt: str, negative: str) -> list[str]:
    """What the user should know about how this model reads the settings (no error: it still generates)."""
    name = family.upper() if family == "sd3" else "Flux"
    out = []
    if needs_weighting(prompt) or needs_weighting(negative):
        out.append(f"Prompt weights and BREAK are not applied to {name} models (their T5 encoder has no "
                   "A1111-style emphasis); the text was used without them")
    if family == "flux":
        if negative.strip():
            out.append("Flux models take no negative prompt (guidance is distilled into the model); it was ignored")
        if not _has_guidance_embedder(pipe):
            out.append("This Flux model has no guidance embedder (schnell-type): the CFG scale has no effect")
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None:
        limit = int(getattr(tokenizer, "model_max_length", 77))
        if len(tokenizer(plain_text(prompt), truncation=False).input_ids) > limit:
            out.append(f"CLIP reads the first {limit - 2} tokens of the prompt; T5 reads up to "
                       f"{T5_TOKENS[family]}")
    return out
