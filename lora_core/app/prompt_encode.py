"""Weighted, chunked CLIP embeddings for prompts that use A1111's emphasis syntax or run past
CLIP's 75 tokens, handed to a diffusers pipeline as prompt_embeds.

What A1111 users expect, and what this does:
* the prompt is read into (text, weight) pieces (prompt_syntax.py), each piece tokenised;
* tokens go into chunks of 75 (plus start/end), a new chunk at BREAK or when one is full; a chunk
  that would end within 20 tokens after a comma is cut at that comma instead, so a phrase is not
  split across chunks;
* each chunk is encoded on its own (start token + 75 + end, padded as the tokenizer pads); each
  token's embedding is multiplied by its weight and the chunk then rescaled to its unweighted
  mean, and the chunks are concatenated (the UNet's cross-attention takes any length);
* prompt and negative prompt get the same number of chunks (empty chunks pad the shorter).
SDXL: per chunk both encoders' penultimate hidden states side by side; pooled output from the
second encoder's first chunk; an empty negative prompt is zeros when the pipeline says so.

Plain prompts of at most 75 tokens never come here: they take diffusers' own encode_prompt, so
their images are what they were.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .prompt_syntax import parse_prompt

CHUNK = 75
COMMA_LOOKBACK = 20


@dataclass
class _Chunk:
    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def token_chunks(tokenizer, prompt: str) -> list[_Chunk]:
    """The prompt's tokens and weights in chunks of at most 75 (always at least one chunk)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[_Chunk] = []
    current = _Chunk()
    last_comma = -1

    def close(force: bool = False) -> None:
        nonlocal current, last_comma
        if current.ids or force:
            chunks.append(current)
        current, last_comma = _Chunk(), -1

    for piece in parse_prompt(prompt):
        if piece.is_break:
            close(force=True)
            continue
        ids = tokenizer(piece.text, add_special_tokens=False, truncation=False).input_ids
        for tid in ids:
            if len(current.ids) == CHUNK:
                if last_comma >= 0 and len(current.ids) - (last_comma + 1) <= COMMA_LOOKBACK:
                    # move the words after the last comma into the next chunk
                    cut = last_comma + 1
                    rest = _Chunk(current.ids[cut:], current.weights[cut:])
                    current = _Chunk(current.ids[:cut], current.weights[:cut])
                    close()
                    current = rest
                else:
                    close()
            if tid == comma:
                last_comma = len(current.ids)
            current.ids.append(tid)
            current.weights.append(piece.weight)
    close(force=not chunks)
    return chunks


def _padded(tokenizer, chunk: _Chunk) -> tuple[list[int], list[float]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + chunk.ids + [tokenizer.eos_token_id]
    weights = [1.0] + chunk.weights + [1.0]
    n = CHUNK + 2 - len(ids)
    return ids + [pad] * n, weights + [1.0] * n


def _encode_chunks(pipe, family: str, chunks_list: list[list[_Chunk]]):
    """Embeddings (and SDXL pooled outputs) for several prompts' chunk lists of equal length."""
    import torch

    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if family == "sdxl":
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    results, pooled_all = [], []
    with torch.no_grad():  # embeddings are inputs here; nothing trains through them
        for chunks in chunks_list:
            embeds, pooled = _encode_prompt_chunks(encoders, family, chunks)
            results.append(embeds)
            pooled_all.append(pooled)
    return results, pooled_all


def _encode_prompt_chunks(encoders, family: str, chunks: list[_Chunk]):
    """One prompt: its chunks' embeddings side by side in the sequence, and SDXL's pooled output."""
    import torch

    parts, pooled = [], None
    for index, chunk in enumerate(chunks):
        per_encoder = []
        for tokenizer, encoder in encoders:
            if encoder is None:
                continue
            ids, weights = _padded(tokenizer, chunk)
            ids_t = torch.tensor([ids], device=encoder.device)
            if family == "sdxl":
                out = encoder(ids_t, output_hidden_states=True)
                z = out.hidden_states[-2]
                if tokenizer is encoders[-1][0] and index == 0:
                    pooled = out[0]
            else:
                z = encoder(ids_t)[0]
            per_encoder.append(_weighted(z, weights))
        parts.append(torch.cat(per_encoder, dim=-1))
    return torch.cat(parts, dim=1), pooled


def _weighted(z, weights: list[float]):
    """Each token's embedding times its weight, then the chunk rescaled to its unweighted mean
    (as A1111 does: emphasis changes the balance between tokens, not the overall scale)."""
    import torch

    w = torch.tensor(weights, device=z.device, dtype=torch.float32)[None, :, None]
    zf = z.float()
    before = zf.mean()
    zf = zf * w
    after = zf.mean()
    if after.item() != 0.0:
        zf = zf * (before / after)
    return zf.to(z.dtype)


def weighted_embeddings(pipe, family: str, prompt: str, negative: str) -> dict:
    """pipe(...) keyword arguments (prompt_embeds, negative_prompt_embeds, and for SDXL the pooled
    ones) for a prompt and negative prompt in A1111's syntax."""
    import torch

    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    pos, neg = token_chunks(tokenizer, prompt), token_chunks(tokenizer, negative or "")
    n = max(len(pos), len(neg))
    pos += [_Chunk() for _ in range(n - len(pos))]
    neg += [_Chunk() for _ in range(n - len(neg))]
    (p_emb, n_emb), (p_pool, n_pool) = _encode_chunks(pipe, family, [pos, neg])
    kwargs = {"prompt_embeds": p_emb, "negative_prompt_embeds": n_emb}
    if family == "sdxl":
        if not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            n_emb, n_pool = torch.zeros_like(p_emb), torch.zeros_like(p_pool)
            kwargs["negative_prompt_embeds"] = n_emb
        kwargs["pooled_prompt_embeds"] = p_pool
        kwargs["negative_pooled_prompt_embeds"] = n_pool
    return kwargs


def chunk_count(tokenizer, prompt: str) -> int:
    return len(token_chunks(tokenizer, prompt))
