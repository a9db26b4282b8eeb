"""File keys -> canonical ModuleKeys (`"<component>:<flat>"`) and tensor suffixes. Pure strings.

A raw key is `<module><sep><suffix>`: the module part carries a naming convention's prefix
(kohya `lora_unet_...`, diffusers `unet.`/`text_encoder.`, PEFT `base_model.model.`, LyCORIS
`lycoris_`), the suffix says which tensor of the adapter it is. Suffixes are canonicalised to the
kohya/LyCORIS spelling (`lora_up.weight`, `lora_down.weight`, `alpha`, `hada_w1_a`, ...) so the
algorithms see one vocabulary whatever wrote the file.
"""
from __future__ import annotations

import re
from typing import NamedTuple

ModuleKey = str

# raw suffix (after the module's last dot) -> canonical suffix. Longest match wins.
_SUFFIXES: dict[str, str] = {
    # LoRA / LoCon, kohya and LyCORIS spelling
    "lora_up.weight": "lora_up.weight",
    "lora_down.weight": "lora_down.weight",
    "lora_mid.weight": "lora_mid.weight",
    # diffusers (pre-PEFT) and its text encoder layers
    "lora.up.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    # PEFT (adapter-name variants handled by _PEFT_RE)
    "lora_B.weight": "lora_up.weight",
    "lora_A.weight": "lora_down.weight",
    # PEFT's DoRA magnitude is always per output channel; kept apart from LyCORIS' dora_scale
    "lora_magnitude_vector": "lora_magnitude_vector",
    "lora_magnitude_vector.weight": "lora_magnitude_vector",
    # scalars
    "alpha": "alpha",
    "lora_alpha": "alpha",
    "scale": "scale",
    "dora_scale": "dora_scale",
    # LoHa
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    # LoKr
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b",
    "lokr_t1": "lokr_t1", "lokr_t2": "lokr_t2",
    # IA3
    "weight": "weight",
    "on_input": "on_input",
    # OFT / BOFT
    "oft_blocks": "oft_blocks",
    "oft_diag": "oft_diag",
    "rescale": "rescale",
    # GLoRA
    "a1.weight": "a1.weight", "a2.weight": "a2.weight",
    "b1.weight": "b1.weight", "b2.weight": "b2.weight",
    "bm.weight": "bm.weight",
    # full / norm
    "diff": "diff", "diff_b": "diff_b",
    "w_norm": "w_norm", "b_norm": "b_norm",
}
# A suffix with d dots can only be the key's last d+1 dot-separated parts, so the longest match is
# found with one dict lookup per part count (a scan of every suffix per key cost ~15 ms per file).
_MAX_SUFFIX_PARTS = max(s.count(".") for s in _SUFFIXES) + 1

# PEFT keys that kept the adapter name: `x.lora_A.default.weight`, `x.lora_magnitude_vector.default`
# (`bias` is no adapter name: BFL control LoRAs store a Δbias as `x.lora_B.bias`, not an up factor)
_PEFT_RE = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_magnitude_vector)\.(?P<adapter>(?!bias$)[^.]+)(?:\.weight)?$")
# Old diffusers attention processors: `...attn1.processor.to_q_lora.up.weight`
_PROCESSOR_RE = re.compile(
    r"^(?P<module>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ud>up|down)\.weight$"
)
_TE_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# Prefixes with underscores (kohya-style, flat already): prefix -> component
_FLAT_PREFIXES = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "te1"),
    ("lora_te2_", "te2"),
    ("lora_te3_", "te3"),  # T5-XXL (SD3 and current kohya Flux)
    ("lora_te_", "te1"),
    ("lycoris_", "unet"),
    ("lora_transformer_", "unet"),
    ("lora_prior_unet_", "unet"),
)
# Dotted prefixes (diffusers/PEFT/LDM module paths): prefix -> component
_DOTTED_PREFIXES = (
    ("unet.", "unet"),
    ("text_encoder_3.", "te3"),
    ("text_encoder_2.", "te2"),
    ("text_encoder.", "te1"),
    ("text_encoders.clip_l.transformer.", "te1"),
    ("text_encoders.clip_g.transformer.", "te2"),
    ("text_encoders.t5xxl.transformer.", "te3"),
    ("transformer.", "unet"),
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
    ("cond_stage_model.transformer.", "te1"),
)
_UNET_STARTS = (
    "down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "add_embedding", "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out_",
    # DiTs (PEFT on a bare FluxTransformer2DModel / SD3Transformer2DModel, BFL/LDM names without prefix)
    "transformer_blocks.", "single_transformer_blocks.", "double_blocks.", "single_blocks.", "joint_blocks.",
)


class ParsedKey(NamedTuple):
    module: ModuleKey | None   # None: convention not recognised
    raw_module: str            # the module part of the key as written in the file
    suffix: str                # canonical suffix


def split_suffix(key: str) -> tuple[str, str] | None:
    """Split a raw key into (raw module, canonical suffix), or None when no suffix matches."""
    # the two regexes only where their literal parts occur (a header scan splits ~1000 keys a file)
    m = _PROCESSOR_RE.match(key) if "_lora." in key else None
    if m:
        module = m.group("module")
        proj = m.group("proj")
        if _is_text_encoder_path(module):
            module = f"{module}.{_TE_PROJ[proj]}"
        else:
            module = f"{module}.{proj}" + (".0" if proj == "to_out" else "")
        return module, "lora_up.weight" if m.group("ud") == "up" else "lora_down.weight"
    m = _PEFT_RE.match(key) if ("lora_A." in key or "lora_B." in key or "lora_magnitude_vector." in key) else None
    if m:
        kind = m.group("kind")
        canon = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight"}.get(kind, "lora_magnitude_vector")
        return m.group("module"), canon
    parts = key.rsplit(".", _MAX_SUFFIX_PARTS)
    for n in range(min(_MAX_SUFFIX_PARTS, len(parts) - 1), 0, -1):  # most dots first
        raw = ".".join(parts[-n:])
        canon = _SUFFIXES.get(raw)
        if canon is not None and len(key) > len(raw) + 1:
            return key[: -len(raw) - 1], canon
    return None


def _is_text_encoder_path(module: str) -> bool:
    return module.startswith(("text_encoder", "lora_te", "text_model")) or ".text_model." in module


# transformers >= 5 CLIP text models have no `text_model.` level; the contract's namespace has it.
_TE_INNER_STARTS = ("encoder_layers_", "embeddings_", "final_layer_norm")
# HF T5EncoderModel module names (`encoder.block.N.layer.M.SelfAttention.q`, ...)
_T5_STARTS = ("encoder_block_", "encoder_final_layer_norm", "shared")


def module_key(raw_module: str) -> ModuleKey | None:
    """Canonical `component:flat` for a raw module name, or None if no convention matches."""
    key = _module_key(raw_module)
    if key is not None:
        component, flat = key.split(":", 1)
        if component in ("te1", "te2") and flat.startswith(_TE_INNER_STARTS):
            key = f"{component}:text_model_{flat}"
        elif component in ("te1", "te2") and flat.startswith(_T5_STARTS):
            # a T5 under a CLIP prefix: old kohya Flux (`lora_te2_`), OneTrainer, diffusers Flux
            # (`text_encoder_2.` is Flux's T5): the T5 is te3 whatever the file numbered it
            key = f"te3:{flat}"
    return key


def _module_key(raw_module: str) -> ModuleKey | None:
    name = raw_module
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    for prefix, component in _FLAT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return f"{component}:{name[len(prefix):].replace('.', '_')}"
    for prefix, component in _DOTTED_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return f"{component}:{name[len(prefix):].replace('.', '_')}"
    # Bare module paths (PEFT on a bare UNet or text encoder).
    if name.startswith(("text_model.", "encoder.layers.")):
        return f"te1:{name.replace('.', '_')}"
    if name.startswith("encoder.block."):   # PEFT on a bare T5EncoderModel
        return f"te3:{name.replace('.', '_')}"
    if name.startswith(_UNET_STARTS):
        return f"unet:{name.replace('.', '_')}"
    return None


def parse_key(key: str) -> ParsedKey | None:
    split = split_suffix(key)
    if split is None:
        return None
    raw_module, suffix = split
    return ParsedKey(module_key(raw_module), raw_module, suffix)


def component_of(key: ModuleKey) -> str:
    return key.split(":", 1)[0]


def flat_of(key: ModuleKey) -> str:
    return key.split(":", 1)[1]
