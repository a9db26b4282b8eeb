"""LoRA Block Weight (`lbw=`) vectors, following hako-mikan/sd-webui-lora-block-weight conventions.

Vector layout
-------------
Every resolved block-weight vector is a tuple of 26 floats indexed like ``BLOCK_IDS_26``::

    index 0      BASE   (text encoder(s); multiplies the ``te`` weight)
    index 1..12  IN00 .. IN11   (LDM ``input_blocks.N``)
    index 13     M00    (LDM ``middle_block``)
    index 14..25 OUT00 .. OUT11 (LDM ``output_blocks.N``)

Block ids always name the LDM UNet block *number*, for SD1/SD2 and SDXL alike (SDXL's IN04 is its
``input_blocks.4``). A shorter vector (17 values for SD1/SD2 LoRA, 12 for SDXL LoRA, 20 for SDXL
LyCORIS) is spread into that layout by block id and the blocks it does not list get 0, exactly
like the extension does. The ``targets`` package maps a module to its block id.
"""
from __future__ import annotations

import math

# The one table of lbw block ids (targets.naming and patcher.active import it from here).
BLOCK_IDS_26 = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))

# Which blocks a vector of a given length lists, in order (lengths the extension accepts).
LAYOUTS: dict[int, tuple[str, ...]] = {
    26: BLOCK_IDS_26,
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    20: ("BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "M00",
         "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08"),
}

# Transformer (DiT) families. Flux: the extension's 61-value vector (BLOCKIDFLUX): CLIP, T5, IN
# (img_in/txt_in/time_in/vector_in/guidance_in), D00..D18 (double blocks), S00..S37 (single
# blocks), OUT (final_layer). SD3/3.5 has no vector in the extension; lora_core uses the same
# shape: CLIP (CLIP-L and CLIP-G), T5, IN, J00..Jnn (joint blocks), OUT: 28 values for the 24
# joint blocks of SD3 / SD3.5 medium, 42 for the 38 of SD3.5 large. These vectors are kept at their
# own length (they are not spread into the 26 UNet slots).
FLUX_BLOCK_IDS = ("CLIP", "T5", "IN") + tuple(f"D{i:02d}" for i in range(19)) + tuple(f"S{i:02d}" for i in range(38)) + ("OUT",)


def sd3_block_ids(n_joint: int) -> tuple[str, ...]:
    return ("CLIP", "T5", "IN") + tuple(f"J{i:02d}" for i in range(n_joint)) + ("OUT",)


DIT_LAYOUTS: dict[int, tuple[str, ...]] = {61: FLUX_BLOCK_IDS, 28: sd3_block_ids(24), 42: sd3_block_ids(38)}


def _dit_presets(n: int) -> dict[str, str]:
    ids = DIT_LAYOUTS[n]

    def vec(on) -> str:
        return ",".join("1" if on(b) else "0" for b in ids)

    return {
        "NONE": ",".join(["0"] * n),
        "ALL": ",".join(["1"] * n),
        "ALL0.5": ",".join(["0.5"] * n),
        # text encoders + embedders + the named block kind
        "DOUBLE": vec(lambda b: not b.startswith(("S", "J")) and b != "OUT"),
        "SINGLE": vec(lambda b: not b.startswith(("D", "J"))),
    }


# Presets for SD1/SD2: the 17-value defaults the extension ships.
_PRESETS_SD1_TEXT = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
}
# Presets for SDXL (12 values). INS, MID(D) and OUTD follow the extension README's 12-value
# examples; the others use the same grouping as the SD1 presets: shallow IN = IN04 IN05,
# deep IN = IN07 IN08, deep OUT = OUT00..OUT02, shallow OUT = OUT03..OUT05.
_PRESETS_SDXL_TEXT = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,1,1,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,1,1,1,1,1,1,0,0,0",
    "OUTD": "1,0,0,0,0,0,1,1,1,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,1,1,1",
    "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 12),
}
_PRESETS_FLUX_TEXT = _dit_presets(61)
_PRESETS_SD3_TEXT = {k: v for k, v in _dit_presets(42).items() if k in ("NONE", "ALL", "ALL0.5")}
PRESET_NAMES = tuple(_PRESETS_SD1_TEXT) + ("DOUBLE", "SINGLE")


class BlockWeightError(ValueError):
    """A `lbw=` value that cannot be turned into a block-weight vector."""


def spread(values: list[float]) -> tuple[float, ...]:
    """Spread a 12/17/20/26-value list into the 26-slot layout (unlisted blocks get 0)."""
    layout = LAYOUTS.get(len(values))
    if layout is None:
        raise BlockWeightError(
            f"{len(values)} values; expected one of {sorted(LAYOUTS)} (17/26 for SD1/SD2, 12/20 for SDXL)"
            f" or {sorted(DIT_LAYOUTS)} (61 for Flux, 28/42 for SD3)"
        )
    out = [0.0] * 26
    for block, value in zip(layout, values):
        out[BLOCK_IDS_26.index(block)] = value
    return tuple(out)


def preset_table(family: str | None) -> dict[str, str]:
    """Preset name -> comma list for a model family (SDXL, Flux and SD3 have their own; everything
    else uses SD1's)."""
    return {"sdxl": _PRESETS_SDXL_TEXT, "flux": _PRESETS_FLUX_TEXT, "sd3": _PRESETS_SD3_TEXT}.get(
        family, _PRESETS_SD1_TEXT)


def layout_ids(n_values: int) -> tuple[str, ...] | None:
    """Block ids of a vector kept at its own length (Flux 61, SD3 28/42), else None."""
    return DIT_LAYOUTS.get(n_values)


def _parse_value(token: str, x_value: float) -> float:
    token = token.strip()
    if not token:
        raise BlockWeightError("empty value")
    if token[0] in "RU":
        raise BlockWeightError(f"random value {token!r} is not supported (results must be reproducible)")
    if token[0] == "X":
        # X, X+0.2, X-0.1: the dynamic weight given with x=
        rest = token[1:]
        if not rest:
            return x_value
        if rest[0] not in "+-":
            raise BlockWeightError(f"bad dynamic value {token!r}")
        try:
            offset = float(rest[1:])
        except ValueError:
            raise BlockWeightError(f"bad dynamic value {token!r}") from None
        value = x_value + offset if rest[0] == "+" else x_value - offset
    else:
        try:
            value = float(token)
        except ValueError:
            raise BlockWeightError(f"{token!r} is not a number") from None
    if not math.isfinite(value):
        raise BlockWeightError(f"{token!r} is not a finite number")
    return value


def resolve(spec: str, family: str | None = None, x_value: float = 1.0) -> tuple[float, ...]:
    """Turn a `lbw=` value (preset name or comma list) into the 26-float vector, or for a Flux
    (61) / SD3 (28, 42) vector into that vector as given (ids: `layout_ids`).

    `family` picks the preset table ("sdxl", "flux", "sd3" -> theirs, anything else -> SD1/SD2 presets).
    Raises BlockWeightError with a message that says what is wrong.
    """
    spec = spec.strip()
    if not spec:
        raise BlockWeightError("empty block weights")
    table = preset_table(family)
    if "," not in spec:
        preset = table.get(spec) or table.get(spec.upper())
        if preset is None:
            try:  # a single number is not a preset: say so rather than "unknown preset"
                float(spec)
            except ValueError:
                raise BlockWeightError(
                    f"unknown preset {spec!r}; known: {', '.join(table)}"
                ) from None
            raise BlockWeightError("a single value is not a block-weight vector")
        spec = preset
    values = [_parse_value(tok, x_value) for tok in spec.split(",")]
    if len(values) in DIT_LAYOUTS:
        return tuple(values)
    return spread(values)
