"""Name maps between the namespaces a LoRA file or a model may use. Pure strings: no torch here.

UNet: the diffusers namespace (``down_blocks.1.attentions.0.proj_in``) and the LDM namespace of
the original checkpoints and A1111 (``input_blocks.4.1.proj_in``). The pairs are derived from a
``UNetLayout`` (levels, resnets per level, which levels have attention, transformer depth), so the
same code covers SD1/SD2 (4 levels), SDXL (3 levels, depth 2/10) and scaled-down test models.

Text encoders: the HF CLIP namespace (``text_model.encoder.layers.0.self_attn.q_proj``) and the
OpenCLIP one used by SD2 and SDXL's second encoder (``transformer.resblocks.0.attn.in_proj``, whose
weight stacks q, k and v as rows [0:d], [d:2d], [2d:3d]).

lbw: the block id of each UNet module in sd-webui-lora-block-weight terms (BASE, IN00..IN11,
M00, OUT00..OUT11). The extension names blocks after the LDM ``input_blocks.N`` /
``middle_block`` / ``output_blocks.N`` numbers for every family; UNet modules outside those
(``time_embed``, ``label_emb``, ``out``) get no block and keep the plain UNet weight there.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from lora_core.tags.block_weights import BLOCK_IDS_26, DIT_LAYOUTS, LAYOUTS

FAMILIES = ("sd1", "sd2", "sdxl")
# Transformer families: their name maps are in naming_flux / naming_sd3 (naming_dit's relations).
DIT_FAMILIES = ("flux", "sd3")

# ---------------------------------------------------------------------------------------------
# UNet layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetLayout:
    """What the UNet's module names depend on (channels only decide where skip convs exist)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: tuple[bool, ...]  # per down level (up levels mirror it)
    transformer_depth: tuple[int, ...]  # transformer blocks per attention, per down level
    mid_depth: int
    add_embedding: bool = False  # SDXL's text_time embedding (LDM label_emb)
    mid_attention: bool = True

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)


SD1_UNET = UNetLayout((320, 640, 1280, 1280), 2, (True, True, True, False), (1, 1, 1, 0), 1)
SD2_UNET = SD1_UNET  # same module tree; only widths and linear proj_in/out differ
SDXL_UNET = UNetLayout((320, 640, 1280), 2, (False, True, True), (0, 2, 10), 10, add_embedding=True)

_STANDARD_LAYOUTS = MappingProxyType({"sd1": SD1_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET})


def unet_layout(family: str) -> UNetLayout:
    """The layout of the full-size UNet of a family ("sd1", "sd2", "sdxl")."""
    try:
        return _STANDARD_LAYOUTS[family]
    except KeyError:
        raise ValueError(f"no UNet layout for family {family!r}; known: {', '.join(FAMILIES)}") from None


@dataclass(frozen=True)
class UNetModule:
    """One UNet module that holds weights, under both names, with its lbw block id (or None)."""

    diffusers: str
    ldm: str
    block: str | None


# (diffusers name inside a resnet, LDM name inside a ResBlock)
RESNET_PARTS = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
)
RESNET_SHORTCUT = ("conv_shortcut", "skip_connection")

# Inside one transformer block; both namespaces use these names.
TRANSFORMER_BLOCK_PARTS = (
    "norm1",
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "norm2",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "norm3",
    "ff.net.0.proj", "ff.net.2",
)

# Modules outside the numbered blocks: (diffusers, LDM).
UNET_TOP_LEVEL = (
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
)
UNET_ADD_EMBEDDING = (
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
)


def _resnet(d: str, l: str, block: str, shortcut: bool) -> list[UNetModule]:
    parts = RESNET_PARTS + ((RESNET_SHORTCUT,) if shortcut else ())
    return [UNetModule(f"{d}.{dp}", f"{l}.{lp}", block) for dp, lp in parts]


def _attention(d: str, l: str, block: str, depth: int) -> list[UNetModule]:
    out = [UNetModule(f"{d}.norm", f"{l}.norm", block), UNetModule(f"{d}.proj_in", f"{l}.proj_in", block)]
    for t in range(depth):
        for part in TRANSFORMER_BLOCK_PARTS:
            name = f"transformer_blocks.{t}.{part}"
            out.append(UNetModule(f"{d}.{name}", f"{l}.{name}", block))
    out.append(UNetModule(f"{d}.proj_out", f"{l}.proj_out", block))
    return out


def unet_modules(layout: UNetLayout) -> tuple[UNetModule, ...]:
    """Every weighted UNet module of `layout`, paired diffusers <-> LDM."""
    lpb = layout.layers_per_block
    ch = layout.block_out_channels
    mods: list[UNetModule] = [UNetModule("conv_in", "input_blocks.0.0", "IN00")]
    mods += [UNetModule(d, l, None) for d, l in UNET_TOP_LEVEL]
    if layout.add_embedding:
        mods += [UNetModule(d, l, None) for d, l in UNET_ADD_EMBEDDING]

    # Down path: LDM input_blocks.1.. hold (resnet[, attention]) per layer, then the downsampler.
    index = 1
    for level in range(layout.levels):
        in_ch = ch[max(level - 1, 0)]
        for j in range(lpb):
            block = f"IN{index:02d}"
            shortcut = j == 0 and in_ch != ch[level]
            mods += _resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0", block, shortcut)
            if layout.attention[level]:
                mods += _attention(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{index}.1", block,
                                   layout.transformer_depth[level])
            index += 1
        if level < layout.levels - 1:
            mods.append(UNetModule(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{index}.0.op",
                                   f"IN{index:02d}"))
            index += 1

    # Middle: resnet, attention, resnet.
    mods += _resnet("mid_block.resnets.0", "middle_block.0", "M00", False)
    if layout.mid_attention:
        mods += _attention("mid_block.attentions.0", "middle_block.1", "M00", layout.mid_depth)
    mods += _resnet("mid_block.resnets.1", f"middle_block.{2 if layout.mid_attention else 1}", "M00", False)

    # Up path: up level u mirrors down level (levels-1-u); every up resnet concatenates a skip
    # connection, so its input width differs from its output and it always has a shortcut conv.
    index = 0
    for up in range(layout.levels):
        level = layout.levels - 1 - up
        for j in range(lpb + 1):
            block = f"OUT{index:02d}"
            mods += _resnet(f"up_blocks.{up}.resnets.{j}", f"output_blocks.{index}.0", block, True)
            sub = 1
            if layout.attention[level]:
                mods += _attention(f"up_blocks.{up}.attentions.{j}", f"output_blocks.{index}.1", block,
                                   layout.transformer_depth[level])
                sub = 2
            if j == lpb and up < layout.levels - 1:
                mods.append(UNetModule(f"up_blocks.{up}.upsamplers.0.conv", f"output_blocks.{index}.{sub}.conv",
                                       block))
            index += 1
    return tuple(mods)


def unet_diffusers_to_ldm(layout: UNetLayout) -> dict[str, str]:
    return {m.diffusers: m.ldm for m in unet_modules(layout)}


def unet_ldm_to_diffusers(layout: UNetLayout) -> dict[str, str]:
    return {m.ldm: m.diffusers for m in unet_modules(layout)}


def lbw_block_of_ldm(ldm_path: str) -> str | None:
    """lbw block id of an LDM UNet module path (``input_blocks.4.1.proj_in`` -> ``IN04``)."""
    head, _, rest = ldm_path.partition(".")
    if head == "middle_block":
        return "M00"
    if head in ("input_blocks", "output_blocks"):
        num = rest.partition(".")[0]
        if num.isdigit():
            return f"{'IN' if head == 'input_blocks' else 'OUT'}{int(num):02d}"
    return None


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipModule:
    """A CLIP text-encoder module under HF and OpenCLIP names.

    ``fused`` is 0/1/2 for q/k/v, which OpenCLIP stores as thirds of one ``attn.in_proj`` tensor.
    """

    hf: str
    openclip: str
    fused: int | None = None


CLIP_LAYER_PARTS = (
    ("self_attn.q_proj", "attn.in_proj", 0),
    ("self_attn.k_proj", "attn.in_proj", 1),
    ("self_attn.v_proj", "attn.in_proj", 2),
    ("self_attn.out_proj", "attn.out_proj", None),
    ("layer_norm1", "ln_1", None),
    ("layer_norm2", "ln_2", None),
    ("mlp.fc1", "mlp.c_fc", None),
    ("mlp.fc2", "mlp.c_proj", None),
)
# OpenCLIP's text_projection is the transpose of HF's Linear weight, so it is not paired here.
CLIP_GLOBAL_PARTS = (
    ("text_model.embeddings.token_embedding", "token_embedding"),
    ("text_model.embeddings.position_embedding", "positional_embedding"),
    ("text_model.final_layer_norm", "ln_final"),
)
HF_LAYER_PREFIX = "text_model.encoder.layers."
OPENCLIP_LAYER_PREFIX = "transformer.resblocks."


def hf_clip_path(name: str) -> str:
    """An HF CLIP name with the ``text_model.`` level: transformers 5's ``CLIPTextModel`` (and
    very old checkpoints) leave it out, LoRA files and ``CLIPTextModelWithProjection`` keep it."""
    if name.startswith(("text_model.", "text_projection")):
        return name
    return "text_model." + name


def clip_modules(n_layers: int) -> tuple[ClipModule, ...]:
    """HF <-> OpenCLIP pairs for a text encoder with `n_layers` transformer layers."""
    mods = [ClipModule(hf, oc) for hf, oc in CLIP_GLOBAL_PARTS]
    for n in range(n_layers):
        for hf, oc, fused in CLIP_LAYER_PARTS:
            mods.append(ClipModule(f"{HF_LAYER_PREFIX}{n}.{hf}", f"{OPENCLIP_LAYER_PREFIX}{n}.{oc}", fused))
    return tuple(mods)


def fused_rows(part_index: int, total_rows: int) -> tuple[int, int]:
    """Row range [start, stop) of q (0), k (1) or v (2) inside a fused in_proj of `total_rows` rows."""
    if total_rows % 3:
        raise ValueError(f"fused in_proj has {total_rows} rows, not a multiple of 3")
    d = total_rows // 3
    return part_index * d, (part_index + 1) * d


def openclip_tensor_name(module: str, part: str) -> str:
    """Tensor name of (module, part) in an OpenCLIP state dict (in_proj and positional_embedding
    are bare parameters, not submodules)."""
    if module.endswith(".in_proj"):
        return f"{module}_{part}"
    if module == "positional_embedding":
        return module
    return f"{module}.{part}"


def split_tensor_name(name: str) -> tuple[str, str]:
    """(module path, part) of a parameter name in either namespace.

    ``a.b.weight`` -> (``a.b``, ``weight``); OpenCLIP ``attn.in_proj_weight`` ->
    (``attn.in_proj``, ``weight``); a bare ``positional_embedding`` -> (itself, ``weight``).
    """
    module, dot, part = name.rpartition(".")
    if part.startswith("in_proj_"):
        return f"{module}.in_proj" if dot else "in_proj", part[len("in_proj_"):]
    if not dot or part == "positional_embedding":
        return name, "weight"
    return module, part


# Where each component lives in an LDM checkpoint / A1111 sd_model: (prefix, component, namespace).
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_TEXT_PREFIXES = (
    ("cond_stage_model.transformer.", "te1", "hf"),  # SD1: HF CLIP-L
    ("cond_stage_model.model.", "te1", "openclip"),  # SD2: OpenCLIP ViT-H
    ("conditioner.embedders.0.transformer.", "te1", "hf"),  # SDXL: HF CLIP-L
    ("conditioner.embedders.1.model.", "te2", "openclip"),  # SDXL: OpenCLIP bigG
    ("conditioner.embedders.0.model.", "te2", "openclip"),  # SDXL refiner: bigG only (diffusers' text_encoder_2)
)
# Flux / SD3 single-file checkpoints (ComfyUI's layout, read by diffusers' single-file loader too):
# CLIP-L and CLIP-G in the HF namespace, T5 in its own.
DIT_TEXT_PREFIXES = (
    ("text_encoders.clip_l.transformer.", "te1", "hf"),
    ("text_encoders.clip_g.transformer.", "te2", "hf"),
    ("text_encoders.t5xxl.transformer.", "te3", "t5"),
)
# Forge keeps the text encoders of every family in `forge_objects.clip.cond_stage_model`, one
# attribute per encoder, each wrapping the HF model as `.transformer`: attribute -> (component, namespace).
FORGE_TEXT_ENCODERS = (("clip_l", "te1", "hf"), ("clip_h", "te1", "hf"), ("clip_g", "te2", "hf"),
                       ("t5xxl", "te3", "t5"))

COMPONENTS = ("unet", "te1", "te2", "te3")


def flat(path: str) -> str:
    """The flat form used in canonical ModuleKeys: every '.' replaced by '_'."""
    return path.replace(".", "_")


# ---------------------------------------------------------------------------------------------
# lbw block weights
# ---------------------------------------------------------------------------------------------

# The block lists of each vector length the extension accepts (its BLOCKID12/17/20/26): the tables
# of lora_core.tags.block_weights, which resolves lbw= values (one table for both).
LBW_BLOCK_IDS_26 = BLOCK_IDS_26
LBW_BLOCK_IDS = MappingProxyType(LAYOUTS)
# Vector lengths that are native to a family (others still work, as in the extension).
LBW_LENGTHS = MappingProxyType({"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20), "flux": (61,), "sd3": (28, 42)})
# Flux / SD3 vectors (kept at their own length; ids CLIP, T5, IN, Dnn/Snn or Jnn, OUT)
LBW_DIT_BLOCK_IDS = MappingProxyType(DIT_LAYOUTS)

TEXT_ENCODER_BLOCK = "BASE"


def block_index(block: str | None, n_weights: int) -> int | None:
    """Index of `block` in an lbw vector of `n_weights` values, or None if that vector does not
    list it (or the module has no block). Raises ValueError for a length the extension rejects."""
    ids = LBW_BLOCK_IDS.get(n_weights) or LBW_DIT_BLOCK_IDS.get(n_weights)
    if ids is None:
        raise ValueError(f"{n_weights} block weights; expected one of {sorted(LBW_BLOCK_IDS)} "
                         f"or {sorted(LBW_DIT_BLOCK_IDS)} (Flux, SD3)")
    if block is None:
        return None
    try:
        return ids.index(block)
    except ValueError:
        return None


def block_multiplier(block: str | None, weights) -> float:
    """The factor an lbw vector gives a module of `block`.

    Like the extension: a block the vector does not list gets 0; a module outside every block
    (time_embed, label_emb, out) keeps 1.
    """
    if block is None:
        return 1.0
    i = block_index(block, len(weights))
    return 0.0 if i is None else float(weights[i])
