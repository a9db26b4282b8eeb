"""Which base model family a LoRA was trained for, from its keys and tensor shapes first and its
metadata second. Torch-free.

Families: sd1, sd2, sdxl, flux, sd3, stable-cascade, "transformer" (a DiT we cannot name), unknown.
Finer variants (Flux dev/schnell, SD3 medium, SD3.5 large, ...) only come from metadata:
`family_variant`, never a family of their own.

Flux and SD3 share diffusers' module names (`transformer_blocks.N.attn.to_q`, `add_q_proj`,
`context_embedder`, `ff_context`), so a diffusers-named file is told apart by its width (the input
of attention and norm1 layers is the model width: Flux 3072; SD3 medium and 3.5 medium 1536, SD3.5
large 2432), then by what only SD3 has (a 20th+ block, 3.5 medium's `attn2`), then by metadata.
Both use a T5 encoder (component te3); only SD3 has CLIP-G (te2) with it.
"""
from __future__ import annotations

import re

# key fragments that only exist in one architecture -> family name (whole raw keys)
_OTHER_FAMILIES = (
    (re.compile(r"double_blocks|single_blocks|single_transformer_blocks|lora_flux_|guidance_embedder|guidance_in"
                r"|img_attn|txt_attn"), "flux"),
    (re.compile(r"joint_blocks|context_block|x_block|text_encoder_3|pos_embed"), "sd3"),
    (re.compile(r"lora_prior_unet_|lora_prior_te_"), "stable-cascade"),
)
_TE_HIDDEN = {768: "sd1", 1024: "sd2", 1280: "sdxl"}
_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_MODULE = re.compile(r"self_attn_(q|k|v)_proj$|mlp_fc1$")
_CROSS_ATTN_KV = re.compile(r"attn2_to_(k|v)$")
_SDXL_ONLY = re.compile(r"transformer_blocks_[1-9]|add_embedding|label_emb")
# diffusers Flux/SD3 layers whose input width is the model width (canonical flat names)
_DIT_WIDTH_MODULE = re.compile(
    r"^transformer_blocks_(\d+)_(attn2?_(to_[qkv]|add_[qkv]_proj|to_out_0|to_add_out)|ff_net_0_proj"
    r"|ff_context_net_0_proj|norm1_linear|norm1_context_linear)$")
# diffusers DiT module paths with no component prefix (PEFT on a bare model, LyCORIS, AI-Toolkit's
# `diffusion_model.`, trainers writing diffusers names behind kohya's `lora_unet_`)
_DIT_RAW = re.compile(r"^(?:base_model\.model\.|lycoris_|lora_unet_)?(?:model\.)?(?:diffusion_model\.)?"
                      r"(?:single_)?transformer_blocks[._]\d")
_DIT_WIDTH = {3072: "flux", 1536: "sd3", 2432: "sd3"}
_FLUX_DOUBLE_BLOCKS = 19   # a diffusers transformer block index past this is SD3's (24 / 38 blocks)
_T5_KEY = re.compile(r"encoder[._]block|encoder[._]final_layer_norm")
# raw key prefixes that name a DiT without saying which (a family rule reads them)
_DIT_PREFIXES = ("transformer.", "lora_transformer_")


def family_from_module_shapes(raw_keys, shapes: dict[str, tuple[int, int]], metadata: dict[str, str]) -> str:
    """raw_keys: the file's keys; shapes: ModuleKey -> (out, in_flat), (0, 0) where not known.

    Reads metadata only through `family_from_metadata` (the library caches on that answer)."""
    raw_keys = list(raw_keys)
    joined = "\n".join(raw_keys)
    for pattern, name in _OTHER_FAMILIES:
        if pattern.search(joined):
            return name
    components = {k.split(":", 1)[0] for k in shapes}

    dit = _dit_family(shapes)
    if dit is not None:
        return dit
    if any(k.startswith(_DIT_PREFIXES) or _DIT_RAW.match(k) for k in raw_keys):
        by_meta = family_from_metadata(metadata)
        return by_meta if by_meta in ("flux", "sd3") else "transformer"   # some DiT we do not know by name
    if "te3" in components:
        # a T5 with CLIP-G is SD3's set of encoders; a T5 alone (Flux or SD3) needs the metadata
        if "te2" in components:
            return "sd3"
        by_meta = family_from_metadata(metadata)
        return by_meta if by_meta in ("flux", "sd3") else "unknown"

    votes: list[str] = []
    for key, (_out, in_dim) in shapes.items():
        component, flat = key.split(":", 1)
        if component == "te2":
            votes.append("sdxl")
        elif component == "te1" and _TE_MODULE.search(flat) and in_dim in _TE_HIDDEN:
            votes.append(_TE_HIDDEN[in_dim] if in_dim != 1280 else "sdxl")
        elif component == "unet" and _CROSS_ATTN_KV.search(flat) and in_dim in _CONTEXT:
            votes.append(_CONTEXT[in_dim])
    if "te2" in components or any(k.startswith(("lora_te2_", "text_encoder_2.")) and not _T5_KEY.search(k)
                                  for k in raw_keys):
        return "sdxl"
    if votes:
        # SDXL's CLIP-L te1 is 768 wide like SD1's, so any SDXL evidence wins.
        if "sdxl" in votes:
            return "sdxl"
        return max(set(votes), key=votes.count)
    if any(_SDXL_ONLY.search(k.split(":", 1)[1]) for k in shapes if k.startswith("unet:")):
        return "sdxl"
    return family_from_metadata(metadata)


def _dit_family(shapes: dict[str, tuple[int, int]]) -> str | None:
    """flux / sd3 from diffusers-named transformer modules (widths, block count, attn2), or None."""
    # only modules the header path also sees (family_from_header's _WIDTH_EVIDENCE): both agree
    votes: list[str] = []
    for key, (_out, in_dim) in shapes.items():
        m = _DIT_WIDTH_MODULE.match(key[5:]) if key.startswith("unet:") else None
        if m is None:
            continue
        if int(m.group(1)) >= _FLUX_DOUBLE_BLOCKS or m.group(2).startswith("attn2_"):
            return "sd3"
        if in_dim in _DIT_WIDTH:
            votes.append(_DIT_WIDTH[in_dim])
    return max(set(votes), key=votes.count) if votes else None


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


# metadata text -> variant, first match wins (modelspec.architecture, ss_base_model_version, then
# the trainer's base checkpoint name; e.g. "flux-1-dev/lora", "stable-diffusion-v3.5-large/lora")
_VARIANTS = (
    (re.compile(r"flux[-_.]?1?[-_.]?schnell"), "flux-schnell"),
    (re.compile(r"flux[-_.]?1?[-_.]?dev"), "flux-dev"),
    (re.compile(r"(v3[._-]?5|3\.5|sd35)[-_.]?large[-_.]?turbo"), "sd3.5-large-turbo"),
    (re.compile(r"(v3[._-]?5|3\.5|sd35)[-_.]?large"), "sd3.5-large"),
    (re.compile(r"(v3[._-]?5|3\.5|sd35)[-_.]?medium"), "sd3.5-medium"),
    (re.compile(r"(v3|sd3)[-_.]?medium"), "sd3-medium"),
)


def family_variant(metadata: dict[str, str], family: str | None = None) -> str | None:
    """Flux dev/schnell, SD3 medium, SD3.5 large/medium/large-turbo from the metadata alone (None if
    it does not say); a variant of another family than `family` (when given) is not reported."""
    for field in ("modelspec.architecture", "ss_base_model_version", "ss_sd_model_name"):
        text = str(metadata.get(field) or "").lower()[:300]
        if not text:
            continue
        for pattern, variant in _VARIANTS:
            if pattern.search(text):
                if family is None or variant.startswith(family) or (family == "sd3" and variant.startswith("sd3")):
                    return variant
                return None
    return None


# Header-only detection (the library's index reads headers, never tensors; it may scan tens of
# thousands of files of ~1000 keys). Only keys that can carry evidence for the rules above are
# parsed: the input factor of cross-attention k/v, text-encoder layers and DiT width layers (their
# width votes), the modules of te2/te3 (their presence), and, only when those give nothing, the
# modules whose names alone decide.
_WIDTH_EVIDENCE = re.compile(r"attn2[._]to_[kv]|self_attn[._][qkv]_proj|mlp[._]fc1|te2|text_encoder_2|te3"
                             r"|text_encoder_3|t5xxl|encoder[._]block|transformer_blocks[._]\d+[._]"
                             r"(attn2?[._](to_|add_)|ff|norm1)")
_NAME_EVIDENCE = re.compile(r"transformer_blocks[._][1-9]|add_embedding|label_emb")
_NOT_INPUT_FACTOR = ("alpha", "up.weight", "lora_B.weight", "hada_w1_a", "hada_w2_a", "dora_scale")
# canonical suffixes whose tensor shape is (rank, in, *kernel): the layer's flattened input width
_DOWN_SUFFIXES = frozenset({"lora_down.weight", "hada_w1_b", "hada_w2_b"})
# every raw key any rule above reads, for the library's per-key relevance filter
RAW_PREFIXES = _DIT_PREFIXES + ("lora_te2_", "text_encoder_2.")


def relevant(key: str) -> bool:
    """Whether one raw key can change `family_from_header`'s answer (a superset; every rule reads
    single keys, so the answer for the relevant keys alone is the answer for the whole file)."""
    if (key.startswith(RAW_PREFIXES) or _DIT_RAW.match(key) or _WIDTH_EVIDENCE.search(key)
            or _NAME_EVIDENCE.search(key)):
        return True
    return any(pattern.search(key) for pattern, _name in _OTHER_FAMILIES)


def family_from_header(header: dict, metadata: dict[str, str] | None = None) -> str:
    """`family_from_module_shapes` from a safetensors-style header {key: {"shape": [...], ...}} alone."""
    from .layouts import parse_key   # layouts import keys; keep this module's import light

    shapes: dict[str, tuple[int, int]] = {}
    lokr: dict[str, dict] = {}   # LoKr factors per module: the input width is a product of two
    for key, info in header.items():
        if key.endswith(_NOT_INPUT_FACTOR) or not _WIDTH_EVIDENCE.search(key):
            continue
        parsed = parse_key(key)
        if parsed is None or parsed.module is None:
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if parsed.suffix.startswith("lokr_") and isinstance(shape, list):
            lokr.setdefault(parsed.module, {})[parsed.suffix] = shape
        if (parsed.suffix in _DOWN_SUFFIXES and isinstance(shape, list) and len(shape) >= 2
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            in_flat = 1
            for d in shape[1:]:
                in_flat *= d
            shapes[parsed.module] = (0, in_flat)
        else:
            shapes.setdefault(parsed.module, (0, 0))  # a module, no width evidence
    for module, factors in lokr.items():
        in_flat = _lokr_input_width(factors)
        if in_flat:
            shapes[module] = (0, in_flat)
    # modules whose names alone decide (SDXL-only blocks), as load_lora sees every module
    for key in header:
        if _NAME_EVIDENCE.search(key):
            parsed = parse_key(key)
            if parsed is not None and parsed.module is not None:
                shapes.setdefault(parsed.module, (0, 0))
    return family_from_module_shapes(list(header), shapes, metadata or {})


def _lokr_input_width(factors: dict) -> int:
    """A LoKr module's flattened input width from its factors' shapes (0 when they do not say), by
    `algorithms.LoKr.shape_hint` as load_lora asks it (every LoKr factor passes the header filter)."""
    from .algorithms import BY_NAME

    spec = BY_NAME["lokr"]
    try:
        return int(spec.shape_hint(factors)[1]) if spec.detect(factors) else 0
    except (KeyError, IndexError, TypeError, ValueError):
        return 0


# Model families a LoRA of the generic DiT family ("transformer": diffusers transformer_blocks keys
# whose widths and metadata name no family) may try: the binding's key and shape checks decide.
_GENERIC_DIT_TARGETS = frozenset({"flux", "sd3"})


def family_fits(lora_family: str | None, model_family: str | None) -> bool:
    """Whether a LoRA of `lora_family` may be applied to (or merged into) a `model_family` model;
    "unknown" on either side fits, the keys then decide."""
    lora_family, model_family = lora_family or "unknown", model_family or "unknown"
    if "unknown" in (lora_family, model_family) or lora_family == model_family:
        return True
    return lora_family == "transformer" and model_family in _GENERIC_DIT_TARGETS
