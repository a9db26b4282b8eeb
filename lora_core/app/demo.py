"""The embedded demo model and demo LoRAs, used when no checkpoint is installed.

The embedded default is a tiny SD1-layout model trained on synthetic scenes (plain coloured
circles, squares, triangles and stars on plain backgrounds, 64x64; tools/train_demo_model.py).
It ships as an ordinary A1111/LDM single-file checkpoint with its diffusers configs and a
manifest in `lora_core/app/demo_assets/` (see `demo_pack`), and is loaded by exactly the code a
user checkpoint takes (`PipelineHandle.load` -> `checkpoints.load_checkpoint`); only its label,
`is_demo` and default size differ. The three LoRAs trained on it by `lora_core train` (a stripes
style, a new shape, a LoCon texture) are copied to `Lora/demo/` on first run.

If the shipped file is missing or fails its sha256 check, the app still runs on the old fallback:
a model of the same kind with weights drawn from a fixed seed, whose pictures are coloured noise.

The colour-cast demo LoRAs (demo_warm/cool/green) ship trained with the pack (lora_core.demo.loras).
On the random-weight fallback they are made here instead: a rank-1 conv LoRA on the UNet's conv_out
whose down-projection averages the incoming activations, so it acts like a bias on the predicted
noise; its direction is calibrated against the loaded model so that each gives a clear colour
cast. Calibration probes and previews are LoRA files applied by the Engine, as every LoRA is.

This module and demo_pack.py only load what tools/install_demo_assets.py built; how the demo model
and its LoRAs are made is `lora_core.demo` (which imports the app, never the other way round).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_SEED = 1234
DEMO_NAME = "lora_core-demo"
DEMO_SIZE = 64
DEMO_VERSION = 2  # bump when the demo model or its LoRAs change (rewrites the demo LoRAs)
DEMO_LORA_FOLDER = "demo"
LABEL = ("Demo model (tiny, trained only on simple coloured shapes - circles, squares, triangles, stars - "
         "at 64x64). Put a Stable Diffusion checkpoint (.safetensors: SD1, SD2 or SDXL; or a diffusers-format "
         "Flux or SD3 folder) in models/Stable-diffusion and select it to generate real images.")
FALLBACK_LABEL = ("Demo model (tiny, random weights: images are coloured noise). "
                  "Put a Stable Diffusion checkpoint (.safetensors: SD1, SD2 or SDXL; or a diffusers-format Flux or "
                  "SD3 folder) in models/Stable-diffusion and select it to generate real images.")


@dataclass(frozen=True)
class DemoLora:
    name: str
    activation_text: str
    preferred_weight: float
    rgb_shift: tuple[float, float, float]  # wanted mean colour change at weight 1, in 0..1 units
    description: str


DEMO_LORAS = (
    DemoLora("demo_warm", "warm light", 0.8, (0.1, 0.03, -0.1), "Warm colour cast (demo)."),
    DemoLora("demo_cool", "cool light", 0.8, (-0.1, 0.0, 0.1), "Cool blue colour cast (demo)."),
    DemoLora("demo_green", "green tint", 1.0, (-0.05, 0.1, -0.05), "Green tint (demo)."),
)


def build_demo_components(data_dir, seed: int = DEMO_SEED) -> dict:
    """Tiny SD1-layout components with weights drawn from `seed` (global RNG left untouched)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.app.checkpoints import CONFIG_ROOT, tokenizer_for
    from lora_core.app.samplers import DEFAULT_SAMPLER, make_scheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=DEMO_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
        )
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        ))
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(8, 16, 16, 16),
            layers_per_block=1, latent_channels=4, norm_num_groups=1, sample_size=DEMO_SIZE,
        )
        # Random residual branches bury the latent under noise; with them off the decoder is a
        # smooth upsampling colour map of the latent, so latent (and LoRA) changes show as colour.
        with torch.no_grad():
            for name, module in vae.decoder.named_modules():
                if name.endswith(("conv2", "to_out.0")):
                    module.weight.zero_()
                    module.bias.zero_()
    for m in (unet, text_encoder, vae):
        m.eval().requires_grad_(False)
    sched_cfg = json.loads((CONFIG_ROOT / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    return {
        "unet": unet, "vae": vae, "text_encoder": text_encoder,
        "tokenizer": tokenizer_for(CONFIG_ROOT / "sd15", "tokenizer", data_dir),
        "scheduler": make_scheduler(DEFAULT_SAMPLER, sched_cfg),
    }


def _weights_hash(components: dict) -> str:
    h = hashlib.sha256()
    for part in ("unet", "text_encoder", "vae"):
        for name, tensor in sorted(components[part].state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def load_demo_handle(data_dir, assets=None, placement=None):
    """The embedded default: the shipped trained demo model, or the random-weight fallback (with a
    warning in the log and in `handle.notes`) when its files are missing, altered or unloadable.
    assets: another folder with the asset layout (default: demo_pack.assets_dir()). placement: the
    device (app.placement); the tiny demo model stays fp32 unless a precision is named, as its
    pictures and LoRA calibration were measured in fp32."""
    from lora_core.app.demo_pack import DemoPackError, load_verified_pack

    if placement is not None and placement.precision == "auto":
        placement = dataclasses.replace(placement, precision="fp32")
    try:
        # a damaged LoRA only keeps that LoRA out (ensure_demo_loras), not the model
        pack = load_verified_pack(assets, loras=False)
        return _trained_handle(pack, data_dir, placement)
    except DemoPackError as exc:
        problem = str(exc)
    except Exception as exc:  # an unloadable file must not stop the app from starting
        problem = f"cannot load the shipped demo checkpoint ({type(exc).__name__}: {exc})"
    logger.warning("trained demo model unavailable: %s; falling back to the random-weight demo model", problem)
    handle = random_demo_handle(data_dir).place(placement)
    handle.notes.append(f"The trained demo model could not be used ({problem}); "
                        "using random weights instead (pictures are coloured noise).")
    return handle


def _trained_handle(pack, data_dir, placement=None):
    from lora_core.app.pipeline import PipelineHandle

    # the very path a user checkpoint takes; only the shipped configs are named
    handle = PipelineHandle.load(pack.checkpoint, data_dir=data_dir, config_root=pack.config_root,
                                 placement=placement)
    handle.is_demo = True
    handle.label = LABEL
    handle.model_name = DEMO_NAME
    handle.default_size = pack.default_size
    handle.num_threads = 1  # a tiny model runs fastest on one thread, and shares the CPU well
    return handle


def is_trained_demo(handle, pack) -> bool:
    """Whether handle is the shipped trained demo model (its file hash is the pack's)."""
    return bool(getattr(handle, "is_demo", False)) and handle.model_hash == pack.short_hash


def random_demo_handle(data_dir):
    """The fallback demo model: the same kind of tiny SD1 pipeline, weights drawn from DEMO_SEED."""
    from lora_core.app.pipeline import PipelineHandle, build_pipeline

    components = build_demo_components(data_dir)
    return PipelineHandle(
        build_pipeline("sd1", components), family="sd1", is_demo=True, label=FALLBACK_LABEL, checkpoint_path=None,
        model_name=DEMO_NAME, model_hash=_weights_hash(components),
        base_scheduler_config=dict(components["scheduler"].config), default_size=DEMO_SIZE, num_threads=1,
    )


# --------------------------------------------------------------------------------- demo LoRAs
# Every colour-cast LoRA, the probes that calibrate it included, is an ordinary kohya LoRA file
# applied by the Engine (the one owner of the model's patched state); nothing here writes weights.
def _conv_out_factors(unet, up_vector):
    """kohya conv-LoRA factors for conv_out: down averages every input, up picks latent channels."""
    import torch

    w = unet.conv_out.weight
    c_in, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    down = torch.full((1, c_in, kh, kw), 1.0 / (c_in * kh * kw))
    up = torch.as_tensor(up_vector, dtype=torch.float32).reshape(w.shape[0], 1, 1, 1)
    return down, up


def _colour_tensors(down, up) -> dict:
    import torch

    return {
        "lora_unet_conv_out.lora_down.weight": down.contiguous(),
        "lora_unet_conv_out.lora_up.weight": up.contiguous(),
        "lora_unet_conv_out.alpha": torch.tensor(1.0),
    }


@contextmanager
def _applied(engine, path: Path, weight: float):
    """The LoRA file at path applied by engine at weight for the block; the original weights after."""
    from lora_core.request import ApplyRequest

    report = engine.apply([ApplyRequest(path, te=weight, unet=weight)])
    try:
        lora = report.loras[0]
        if lora.refused or not lora.matched:
            raise RuntimeError(f"demo colour LoRA {path.name} was not applied: {lora.refused or 'no module matched'}")
        yield
    finally:
        engine.restore()


class _ColourCalibration:
    """Writes colour-cast LoRA files for handle's model and measures them through engine."""

    def __init__(self, handle, engine, work: Path, seed: int = 7):
        self.handle, self.engine, self.work, self.seed = handle, engine, Path(work), seed
        self._n = 0

    def write(self, tensors: dict, metadata: dict[str, str], path: Path | None = None) -> Path:
        from safetensors.torch import save

        from lora_core.library.atomic import atomic_write

        if path is None:  # a fresh name per probe: the engine's cache keys files by path, size and mtime
            self._n += 1
            path = self.work / f"probe_{self._n}.safetensors"
        atomic_write(path, save(tensors, metadata=metadata))
        return path

    def mean_rgb(self, lora: Path | None = None):
        if lora is None:
            return _mean_rgb(self.handle, self.seed)
        with _applied(self.engine, lora, 1.0):
            return _mean_rgb(self.handle, self.seed)

    def probe_file(self, up_vector, metadata) -> Path:
        """A conv_out LoRA file whose up factor is up_vector (the probes and candidates)."""
        down, up = _conv_out_factors(self.handle.pipe.unet, up_vector)
        return self.write(_colour_tensors(down, up), metadata)


def _mean_rgb(handle, seed: int):
    import numpy as np

    from lora_core.app.pipeline import GenerationParams

    params = GenerationParams(prompt="", steps=8, cfg=7.0, seed=seed, width=DEMO_SIZE, height=DEMO_SIZE,
                              sampler="Euler")
    img = handle.generate(params)[0]
    return np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0) / 255.0


def calibrate_colour_directions(cal: _ColourCalibration, probe: float = 0.05):
    """3x4 matrix: mean-RGB change per unit of conv_out LoRA `up` on each latent channel."""
    import numpy as np

    channels = cal.handle.pipe.unet.conv_out.weight.shape[0]
    base = cal.mean_rgb()
    columns = []
    for c in range(channels):
        vec = np.zeros(channels)
        vec[c] = probe
        columns.append((cal.mean_rgb(cal.probe_file(vec, _probe_metadata())) - base) / probe)
    return np.stack(columns, axis=1), base


def demo_lora_tensors(cal: _ColourCalibration, spec: DemoLora, jacobian, base) -> dict:
    import numpy as np

    target = np.asarray(spec.rgb_shift)
    up_vec = np.linalg.pinv(jacobian) @ target
    # one correction step: the VAE is not linear, so rescale to hit the wanted shift along target
    achieved = cal.mean_rgb(cal.probe_file(up_vec, _probe_metadata())) - base
    ratio = float(achieved @ target / (target @ target))
    if ratio > 0.2:
        up_vec = up_vec / ratio
    return _colour_tensors(*_conv_out_factors(cal.handle.pipe.unet, up_vec))


def _probe_metadata() -> dict[str, str]:
    return {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_v2": "False"}


def _metadata(spec: DemoLora, model_hash: str | None) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "1",
        "ss_network_alpha": "1.0",
        "ss_network_args": json.dumps({"conv_dim": "1", "conv_alpha": "1.0"}),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": DEMO_NAME,
        "ss_new_sd_model_hash": model_hash or "",
        "ss_output_name": spec.name,
        "ss_resolution": f"({DEMO_SIZE}, {DEMO_SIZE})",
        "ss_num_epochs": "1",
        "ss_training_comment": f"lora_core demo LoRA for the built-in demo model: {spec.description}",
        "ss_tag_frequency": json.dumps({"demo": {spec.activation_text: 1}}),
        "modelspec.title": spec.name,
        "modelspec.architecture": "stable-diffusion-v1/lora",
    }


def ensure_demo_loras(lora_root, data_dir, handle, force: bool = False, assets=None,
                      engine=None) -> list[Path]:
    """Put the demo LoRAs (+ .json sidecar + preview PNG) into lora_root/demo on first run.

    With the trained demo model loaded, the LoRAs of the asset folder are copied (the three trained
    ones and the colour casts the install script calibrated against it); colour casts the pack does
    not hold (always, on the random-weight fallback) are calibrated against the loaded model here.
    A marker in data_dir remembers it was done, so LoRAs the user deleted do not come back (they
    are written again only when DEMO_VERSION changes, or once when the trained model becomes
    available after a run on the fallback). engine: the Engine over handle's model that applies
    the calibration probes (default: a new one; the model is left unpatched either way).
    Returns the written LoRA paths.
    """
    from lora_core.app.demo_pack import DemoPackError, read_pack

    try:
        pack = read_pack(assets)
        trained = is_trained_demo(handle, pack)
    except DemoPackError:
        pack, trained = None, False
    marker = Path(data_dir) / "demo_loras.json"
    if not force and marker.is_file():
        try:
            done = json.loads(marker.read_text())
            if done.get("version") == DEMO_VERSION and (done.get("trained") or not trained):
                return []
        except (OSError, ValueError, AttributeError):
            pass
    folder = Path(lora_root) / DEMO_LORA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if trained:
        written.extend(_copy_trained_loras(pack, folder))
    # colour casts the pack does not carry (fallback model, or an older pack) are calibrated here
    missing = [spec for spec in DEMO_LORAS if not any(p.stem == spec.name for p in written)]
    written.extend(write_colour_loras(handle, folder, missing, engine=engine))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"version": DEMO_VERSION, "folder": str(folder), "trained": trained}))
    logger.info("wrote %d demo LoRAs to %s", len(written), folder)
    return written


def write_colour_loras(handle, folder, specs=DEMO_LORAS, engine=None) -> list[Path]:
    """Calibrate the colour-cast LoRAs against handle's model and write them (+ sidecar + preview);
    every probe and preview is a LoRA file applied by engine (default: a new Engine over handle)."""
    import tempfile

    folder = Path(folder)
    written: list[Path] = []
    if not specs:
        return written
    if engine is None:
        from lora_core.engine import Engine

        engine = Engine(handle.binding)
    with handle.lock, tempfile.TemporaryDirectory(prefix="lora_core-demo-") as work:
        cal = _ColourCalibration(handle, engine, Path(work))
        jacobian, base = calibrate_colour_directions(cal)
        for spec in specs:
            tensors = demo_lora_tensors(cal, spec, jacobian, base)
            path = cal.write(tensors, _metadata(spec, handle.model_hash), folder / f"{spec.name}.safetensors")
            sidecar = {
                "description": spec.description,
                "activation text": spec.activation_text,
                "preferred weight": spec.preferred_weight,
                "sd version": "SD1",
                "notes": "Made by lora_core for its built-in demo model; it has no effect on real checkpoints' style.",
            }
            (folder / f"{spec.name}.json").write_text(json.dumps(sidecar, indent=2))
            _write_preview(cal, path, spec, folder / f"{spec.name}.preview.png")
            written.append(path)
    return written


def _copy_trained_loras(pack, folder: Path) -> list[Path]:
    """Copy the shipped trained LoRAs with their sidecars and previews; a file that does not match
    the manifest is left out with a warning (the rest are still copied)."""
    from lora_core.app.demo_pack import sha256_of

    written = []
    for lora in pack.loras:
        if not lora.path.is_file() or sha256_of(lora.path) != lora.sha256:
            logger.warning("demo LoRA %s is missing or does not match the manifest; not installed", lora.path)
            continue
        target = folder / f"{lora.name}.safetensors"
        _atomic_copy(lora.path, target)
        if lora.sidecar is not None and lora.sidecar.is_file():
            _atomic_copy(lora.sidecar, folder / f"{lora.name}.json")
        if lora.preview is not None and lora.preview.is_file():
            _atomic_copy(lora.preview, folder / f"{lora.name}.preview.png")
        written.append(target)
    return written


def _atomic_copy(src: Path, dst: Path) -> None:
    from lora_core.library.atomic import atomic_write

    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _write_preview(cal: _ColourCalibration, lora: Path, spec: DemoLora, path: Path) -> None:
    from lora_core.app.pipeline import GenerationParams
    from lora_core.library.atomic import atomic_write

    params = GenerationParams(prompt=spec.activation_text, steps=20, cfg=7.0, seed=1, width=DEMO_SIZE,
                              height=DEMO_SIZE, sampler="Euler a")
    with _applied(cal.engine, lora, spec.preferred_weight):
        image = cal.handle.generate(params)[0]
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
