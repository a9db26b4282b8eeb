"""Single-file A1111/LDM checkpoints (SD1, SD2, SDXL) -> diffusers components, fully offline.

The diffusers model configs for each family ship in `lora_core/app/configs/<dir>/` (architecture
facts, no weights); the LDM -> diffusers key conversion is diffusers' own
(`diffusers.loaders.single_file_utils`), so nothing is fetched from a hub. Models are created on the
meta device and the converted tensors assigned into them, which avoids a random init of billions of
parameters.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
# family (as lora_core.formats names it) -> folder of shipped diffusers configs
FAMILY_CONFIG_DIRS = MappingProxyType({"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"})
# cross-attention context width of the UNet -> family
CONTEXT_DIM_FAMILY = MappingProxyType({768: "sd1", 1024: "sd2", 2048: "sdxl"})
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")  # what A1111 lists in models/Stable-diffusion

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{Path(path).name}: {problem}")


@dataclass
class LoadedCheckpoint:
    family: str
    components: dict  # diffusers pipeline components (unet, vae, text_encoder[, _2], tokenizer[, _2], scheduler)
    config_dir: Path
    notes: list[str] = field(default_factory=list)
    default_size: int | None = None  # from the file's modelspec.resolution, when it says one


# A checkpoint may carry its own diffusers configs in its safetensors metadata: the demo model does
# (lora_core/demo/model.py), and so does every file `merge` makes from it, which keeps the
# metadata. Such a file loads with those configs wherever it is, not with the shipped SD ones.
EMBEDDED_CONFIGS_KEY = "lora_core_demo_configs"
_EMBEDDED_PARTS = {"unet": "unet/config.json", "vae": "vae/config.json",
                   "text_encoder": "text_encoder/config.json", "scheduler": "scheduler/scheduler_config.json"}
_CLASS_NAMES = {"unet": {"_class_name": "UNet2DConditionModel"}, "vae": {"_class_name": "AutoencoderKL"},
                "text_encoder": {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}}


def read_metadata(path) -> dict[str, str]:
    """The safetensors metadata of a checkpoint ({} for other files or an unreadable header)."""
    if Path(path).suffix.lower() != ".safetensors":
        return {}
    from lora_core.formats.header import HeaderError, read_header

    try:
        return read_header(path)[1]
    except HeaderError:
        return {}  # read_state_dict reports the problem


def embedded_config_root(metadata: dict[str, str], family: str, data_dir) -> Path | None:
    """A config root (`<root>/<family dir>/unet/config.json`, ...) built from the configs a
    checkpoint's metadata embeds, under data_dir/model_configs/<hash>; None when it embeds none."""
    raw = metadata.get(EMBEDDED_CONFIGS_KEY)
    if not raw:
        return None
    try:
        configs = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(configs, dict) or not all(isinstance(configs.get(k), dict) for k in ("unet", "vae", "text_encoder")):
        return None
    from lora_core.library.atomic import atomic_write

    canonical = json.dumps(configs, sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    base = Path(data_dir or CONFIG_ROOT.parent) / "model_configs" / digest
    shipped = CONFIG_ROOT / FAMILY_CONFIG_DIRS[family]
    folder = base / FAMILY_CONFIG_DIRS[family]
    files = {rel: {**_CLASS_NAMES.get(part, {}), **configs[part]}
             for part, rel in _EMBEDDED_PARTS.items() if isinstance(configs.get(part), dict)}
    for rel in ("scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer_config.json",
                "text_encoder_2/config.json"):
        if rel not in files and (shipped / rel).is_file():
            files[rel] = json.loads((shipped / rel).read_text())
    for rel, data in files.items():
        target = folder / rel
        text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
        if target.is_file() and target.read_bytes() == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text)
    return base


def resolution_from_metadata(metadata: dict[str, str]) -> int | None:
    """modelspec.resolution "WxH" -> the larger side (None when absent or malformed)."""
    text = str(metadata.get("modelspec.resolution", ""))
    try:
        sides = [int(x) for x in text.lower().split("x")]
    except ValueError:
        return None
    return max(sides) if len(sides) == 2 and min(sides) >= 8 else None


def list_checkpoints(folder) -> list[Path]:
    """Single-file checkpoints and diffusers-format folders (a `model_index.json` inside) under
    folder; the weight files inside such a folder are its parts, not checkpoints of their own."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pipelines = {p.parent for p in folder.rglob("model_index.json") if p.is_file()}

    def inside_pipeline(path: Path) -> bool:
        return any(parent in pipelines for parent in path.parents)

    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES
             and not inside_pipeline(p)]
    return sorted(files + [p for p in pipelines if not inside_pipeline(p)])


def read_shapes(path) -> dict[str, tuple]:
    """Tensor name -> shape, from the safetensors header only (no tensor data read; the library's
    one header reader, so HeaderError for a broken file)."""
    from lora_core.formats.header import read_header

    return {k: tuple(v["shape"]) for k, v in read_header(path)[0].items()}


def read_state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        import torch

        # weights_only: a pickled checkpoint never gets to run code
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt header, truncated file, pickle with code objects, ...
        raise CheckpointError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(path, "not a state dict")
    return {k: v for k, v in data.items() if hasattr(v, "shape")}


def family_from_checkpoint_shapes(shapes: dict[str, tuple], path="checkpoint") -> str:
    """sd1 / sd2 / sdxl from tensor names and shapes; CheckpointError for anything else."""
    unet_keys = [k for k in shapes if k.startswith(UNET_PREFIX)]
    if not unet_keys:
        raise CheckpointError(path, "not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors; is it a LoRA?)")
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise CheckpointError(path, f"UNet takes {conv_in[1]} input channels: inpainting/other variants are not supported")
    context = None
    for k in sorted(unet_keys):
        if k.endswith("attn2.to_k.weight"):
            context = shapes[k][1]
            break
    if context == 1280:
        raise CheckpointError(path, "looks like an SDXL refiner, which is not supported")
    if any(k.startswith(SDXL_TE2_PREFIX) for k in shapes) or UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        layout = "sdxl"
    elif any(k.startswith(SD2_TE_PREFIX) for k in shapes):
        layout = "sd2"
    elif any(k.startswith(SD1_TE_PREFIX) for k in shapes):
        layout = "sd1"
    else:
        layout = None
    by_shape = CONTEXT_DIM_FAMILY.get(context)
    if by_shape and layout and by_shape != layout:
        logger.warning("%s: text encoder layout says %s but UNet context width %s says %s; using %s",
                       path, layout, context, by_shape, by_shape)
    family = by_shape or layout
    if family is None:
        raise CheckpointError(path, f"unknown model family (no text encoder tensors, context width {context})")
    return family


def _v_prediction_hint(path: Path) -> bool | None:
    """A1111 convention: a .yaml next to the checkpoint says `parameterization: "v"` for v-models."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    text = yaml_path.read_text(encoding="utf-8", errors="replace")
    return "parameterization" in text and ('"v"' in text or "'v'" in text or ": v\n" in text)


def _fit_text_model_level(converted: dict, expected_keys) -> dict:
    """transformers 5's CLIPTextModel has no `text_model.` level (CLIPTextModelWithProjection
    keeps it); LDM conversions always produce it. Add or drop it to match the model."""
    wants_level = any(k.startswith("text_model.") for k in expected_keys)
    has_level = any(k.startswith("text_model.") for k in converted)
    if wants_level == has_level:
        return converted
    if wants_level:
        return {k if k.startswith("text_projection") else "text_model." + k: v for k, v in converted.items()}
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in converted.items()}


def _unet_predicts_v(unet, dtype) -> bool:
    """A1111's test for SD2 v-models: at t=999 on a flat 0.5 input with a flat 0.5 context, a
    v-prediction UNet's output lies well below its input (mean difference < -1)."""
    import torch

    with torch.inference_mode():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=dtype)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=dtype)
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return bool((out - x).float().mean().item() < -1)


def _assign(model, converted: dict, what: str, path, dtype) -> None:
    """Load converted tensors into a meta-device model; every parameter must be provided."""
    converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in converted.items()}
    expected = model.state_dict()
    if what.startswith("text encoder"):
        converted = _fit_text_model_level(converted, expected.keys())
    for k, v in converted.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise CheckpointError(path, f"{what}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    result = model.load_state_dict(converted, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(path, f"{what}: {len(missing)} tensors missing (e.g. {missing[0]})")
    if result.unexpected_keys:
        logger.debug("%s: %s ignores %d tensors (e.g. %s)", path, what, len(result.unexpected_keys),
                     result.unexpected_keys[0])
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(path, f"{what}: no weights for {still_meta[0]}")
    model.eval()


def _clip_l_tensors(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    out = convert_ldm_clip_checkpoint(sd)
    # very old SD1 checkpoints store CLIP without the `text_model.` level
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in out.items()}


def tokenizer_for(config_dir: Path, subfolder: str, data_dir):
    from lora_core.app.clip_tokenizer import END_TOKEN, load_clip_tokenizer

    cfg_file = config_dir / subfolder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    return load_clip_tokenizer(data_dir, pad_token=cfg.get("pad_token", END_TOKEN),
                               max_length=int(cfg.get("model_max_length", 77)))


def load_checkpoint(path, data_dir, config_root=None, dtype=None) -> LoadedCheckpoint:
    """Read an LDM single-file checkpoint and build diffusers components from the shipped configs."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    dtype = dtype or torch.float32
    sd = read_state_dict(path)
    family = family_from_checkpoint_shapes({k: tuple(v.shape) for k, v in sd.items()}, path)
    metadata = read_metadata(path)
    if config_root is None:
        config_root = embedded_config_root(metadata, family, data_dir)
    config_dir = Path(config_root or CONFIG_ROOT) / FAMILY_CONFIG_DIRS[family]
    if not config_dir.is_dir():
        raise CheckpointError(path, f"no model configs for family {family} in {config_dir}")
    if not any(k.startswith(VAE_PREFIX) for k in sd):
        raise CheckpointError(path, "checkpoint has no VAE (first_stage_model.*) tensors")
    notes: list[str] = []

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_json_file(config_dir / "text_encoder" / "config.json"))
        te2 = None
        if family == "sdxl":
            te2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_json_file(config_dir / "text_encoder_2" / "config.json"))
    try:
        _assign(unet, convert_ldm_unet_checkpoint(sd, unet.config), "UNet", path, dtype)
        _assign(vae, convert_ldm_vae_checkpoint(sd, vae.config), "VAE", path, dtype)
        if family == "sd2":
            _assign(te1, convert_open_clip_checkpoint(te1, sd, prefix=SD2_TE_PREFIX), "text encoder", path, dtype)
        else:
            _assign(te1, _clip_l_tensors(sd), "text encoder", path, dtype)
        if te2 is not None:
            _assign(te2, convert_open_clip_checkpoint(te2, sd, prefix=SDXL_TE2_PREFIX), "text encoder 2", path, dtype)
    except CheckpointError:
        raise
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise CheckpointError(path, f"cannot convert {family} checkpoint ({type(exc).__name__}: {exc})") from exc
    del sd

    sched_cfg = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    if family == "sd2":
        # SD2 comes as 768-v (v-prediction) and 512-base (epsilon) with identical tensor shapes
        hint = _v_prediction_hint(path)
        source = "from the .yaml next to it"
        if hint is None:
            hint, source = _unet_predicts_v(unet, dtype), "detected from the UNet's output"
        sched_cfg["prediction_type"] = "v_prediction" if hint else "epsilon"
        notes.append(f"SD2 {'v-prediction' if hint else 'epsilon'} model ({source})")
    from lora_core.app.samplers import DEFAULT_SAMPLER, make_scheduler

    components = {
        "unet": unet, "vae": vae, "text_encoder": te1,
        "tokenizer": tokenizer_for(config_dir, "tokenizer", data_dir),
        "scheduler": make_scheduler(DEFAULT_SAMPLER, sched_cfg),
    }
    if te2 is not None:
        components["text_encoder_2"] = te2
        components["tokenizer_2"] = tokenizer_for(config_dir, "tokenizer_2", data_dir)
    return LoadedCheckpoint(family, components, config_dir, notes, resolution_from_metadata(metadata))


def file_sha256(path, data_dir=None) -> str:
    """Full sha256 of a file, cached in data_dir/checkpoint_hashes.json by (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    cache_key = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime_ns)}"
    cache_file = Path(data_dir) / "checkpoint_hashes.json" if data_dir else None
    cache: dict = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if isinstance(cache.get(cache_key), str):
            return cache[cache_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if cache_file:
        cache[cache_key] = digest
        from lora_core.library.atomic import atomic_write

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, json.dumps(cache, indent=1).encode("utf-8"))
    return digest
