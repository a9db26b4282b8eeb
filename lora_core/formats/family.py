"""Which base model family a LoRA was trained for, from its keys and tensor shapes first and its
metadata second. Families we cannot patch (SD3, Flux, ...) are reported by name."""
from __future__ import annotations

import re

from .keys import parse_key

# key fragments that only exist in other architectures -> family name
_OTHER_FAMILIES = (
    (re.compile(r"double_blocks|single_blocks|single_transformer_blocks|lora_flux"), "flux"),
    (re.compile(r"joint_blocks|context_block|x_block|lora_te3_|text_encoder_3|add_q_proj|context_embedder"), "sd3"),
    (re.compile(r"lora_prior_unet_|lora_prior_te_"), "stable-cascade"),
)
_TE_HIDDEN = {768: "sd1", 1024: "sd2", 1280: "sdxl"}
_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_MODULE = re.compile(r"self_attn_(q|k|v)_proj$|mlp_fc1$")
_CROSS_ATTN_KV = re.compile(r"attn2_to_(k|v)$")
_SDXL_ONLY = re.compile(r"transformer_blocks_[1-9]|add_embedding|label_emb")


def family_from_module_shapes(raw_keys, shapes: dict[str, tuple[int, int]], metadata: dict[str, str]) -> str:
    """raw_keys: the file's keys; shapes: ModuleKey -> (out, in_flat) where known."""
    joined = "\n".join(raw_keys)
    for pattern, name in _OTHER_FAMILIES:
        if pattern.search(joined):
            return name
    if any(k.startswith("transformer.") or k.startswith("lora_transformer_") for k in raw_keys):
        return "transformer"  # some DiT we do not know by name

    votes: list[str] = []
    components = {k.split(":", 1)[0] for k in shapes}
    for key, (_out, in_dim) in shapes.items():
        component, flat = key.split(":", 1)
        if component == "te2":
            votes.append("sdxl")
        elif component == "te1" and _TE_MODULE.search(flat) and in_dim in _TE_HIDDEN:
            votes.append(_TE_HIDDEN[in_dim] if in_dim != 1280 else "sdxl")
        elif component == "unet" and _CROSS_ATTN_KV.search(flat) and in_dim in _CONTEXT:
            votes.append(_CONTEXT[in_dim])
    if "te2" in components or any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in raw_keys):
        return "sdxl"
    if votes:
        # SDXL's CLIP-L te1 is 768 wide like SD1's, so any SDXL evidence wins.
        if "sdxl" in votes:
            return "sdxl"
        return max(set(votes), key=votes.count)
    if any(_SDXL_ONLY.search(k.split(":", 1)[1]) for k in shapes if k.startswith("unet:")):
        return "sdxl"
    return family_from_metadata(metadata)


def family_from_metadata(metadata: dict[str, str]) -> str:
    arch = (metadata.get("modelspec.architecture") or "").lower()
    base = (metadata.get("ss_base_model_version") or "").lower()
    text = arch + " " + base
    if "flux" in text:
        return "flux"
    if "stable-diffusion-3" in text or "stable-diffusion-v3" in text or "sd3" in text:
        return "sd3"
    if "xl" in text:
        return "sdxl"
    if "v2" in text or (metadata.get("ss_v2") or "").lower() == "true":
        return "sd2"
    if "v1" in text:
        return "sd1"
    return "unknown"


# Header-only detection (the library's index reads headers, never tensors; it may scan tens of
# thousands of files of ~1000 keys). Only keys that can carry evidence for the rules above are
# parsed: the input factor of cross-attention k/v and text-encoder layers (their width votes),
# and, only when those give nothing, the modules that exist in SDXL alone.
_WIDTH_EVIDENCE = re.compile(r"attn2[._]to_[kv]|self_attn[._][qkv]_proj|mlp[._]fc1|te2|text_encoder_2")
_NAME_EVIDENCE = re.compile(r"transformer_blocks[._][1-9]|add_embedding|label_emb")
_NOT_INPUT_FACTOR = ("alpha", "up.weight", "lora_B.weight", "hada_w1_a", "hada_w2_a", "dora_scale")
# canonical suffixes whose tensor shape is (rank, in, *kernel): the layer's flattened input width
_DOWN_SUFFIXES = frozenset({"lora_down.weight", "hada_w1_b", "hada_w2_b"})


def family_from_header(header: dict, metadata: dict[str, str] | None = None) -> str:
    """`family_from_module_shapes` from a safetensors-style header {key: {"shape": [...], ...}} alone."""
    shapes: dict[str, tuple[int, int]] = {}
    for key, info in header.items():
        if key.endswith(_NOT_INPUT_FACTOR) or not _WIDTH_EVIDENCE.search(key):
            continue
        parsed = parse_key(key)
        if parsed is None or parsed.module is None:
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if (parsed.suffix in _DOWN_SUFFIXES and isinstance(shape, list) and len(shape) >= 2
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            in_flat = 1
            for d in shape[1:]:
                in_flat *= d
            shapes[parsed.module] = (0, in_flat)
        else:
            shapes.setdefault(parsed.module, (0, 0))  # a module, no width evidence
    if not any(in_flat for _o, in_flat in shapes.values()):
        for key in header:
            if _NAME_EVIDENCE.search(key):
                parsed = parse_key(key)
                if parsed is not None and parsed.module is not None:
                    shapes.setdefault(parsed.module, (0, 0))
    return family_from_module_shapes(list(header), shapes, metadata or {})
