"""PipelineHandle: one loaded diffusers pipeline (a real checkpoint or the embedded demo model).

Hosts get: family, is_demo, label, binding (lora_core.targets over the UNet and text encoders) and
a thread-safe, seed-deterministic `generate(params, progress, cancel)`.
"""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable

from lora_core.app.quiet_imports import quiet_image_processor_fallback as _quiet_image_processor_fallback
from lora_core.app.samplers import DEFAULT_SAMPLER, FLOW_FAMILIES, canonical_sampler, default_sampler, make_scheduler

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
DEFAULT_SIZE = MappingProxyType({"demo": 64, "sd1": 512, "sd2": 768, "sdxl": 1024, "flux": 1024, "sd3": 1024})
DEFAULT_CFG = MappingProxyType({"flux": 3.5})  # Flux.1-dev's distilled guidance; others: 7.0
# Flux packs 2x2 latent patches and SD3 patchifies by 2 on a VAE of scale 8: sides in steps of 16
SIZE_STEP = MappingProxyType({"flux": 16, "sd3": 16})


class ParamError(ValueError):
    """Generation settings out of range; the message is meant for the user."""


@dataclass(frozen=True)
class GenerationParams:
    prompt: str = ""  # already cleaned of <lora:...> tags
    negative: str = ""
    steps: int = 20
    cfg: float = 7.0
    seed: int = -1  # -1: pick one at random
    width: int = 512
    height: int = 512
    sampler: str = DEFAULT_SAMPLER
    batch_count: int = 1

    def validated(self, family: str | None = None) -> "GenerationParams":
        """A copy with the sampler spelled canonically and a concrete seed; ParamError if out of range.
        family: the loaded model's, for the samplers and image sides it takes (None: the SD families)."""
        try:
            steps, cfg, seed = int(self.steps), float(self.cfg), int(self.seed)
            width, height, batch = int(self.width), int(self.height), int(self.batch_count)
        except (TypeError, ValueError) as exc:
            raise ParamError(f"invalid generation setting: {exc}") from None
        if not 1 <= steps <= 150:
            raise ParamError(f"steps must be between 1 and 150 (got {steps})")
        if not 0.0 <= cfg <= 30.0:
            raise ParamError(f"CFG scale must be between 0 and 30 (got {cfg})")
        step = SIZE_STEP.get(family, 8)
        for name, v in (("width", width), ("height", height)):
            if not 64 <= v <= 2048 or v % step:
                raise ParamError(f"{name} must be a multiple of {step} between 64 and 2048 (got {v})")
        if not 1 <= batch <= 16:
            raise ParamError(f"batch count must be between 1 and 16 (got {batch})")
        if seed < 0:
            seed = random.SystemRandom().randint(0, MAX_SEED)
        elif seed > MAX_SEED:
            raise ParamError(f"seed must be at most {MAX_SEED} (got {seed})")
        try:
            sampler = canonical_sampler(self.sampler or default_sampler(family), family)
        except ValueError as exc:
            raise ParamError(str(exc)) from None
        return replace(self, steps=steps, cfg=cfg, seed=seed, width=width, height=height,
                       batch_count=batch, sampler=sampler)


class _Cancelled(Exception):
    pass


class PipelineHandle:
    """A loaded model. Build with `PipelineHandle.load(checkpoint, data_dir=...)`
    (or `demo.load_demo_handle(data_dir)` for the embedded demo model)."""

    def __init__(self, pipe, *, family: str, is_demo: bool, label: str, checkpoint_path: Path | None,
                 model_name: str, model_hash: str | None, base_scheduler_config: dict,
                 default_size: int, notes: list[str] | None = None, num_threads: int | None = None):
        self.pipe = pipe
        self.family = family
        self.is_demo = is_demo
        self.label = label
        self.checkpoint_path = checkpoint_path
        self.model_name = model_name
        self.model_hash = model_hash  # A1111 short hash (first 10 hex of sha256), None for the demo
        self.default_size = default_size
        self.notes = list(notes or [])
        self._scheduler_config = dict(base_scheduler_config)
        self._binding = None
        # CPU threads while generating (None: torch's setting). Tiny models run fastest on one
        # thread, and OpenMP threads spin badly when the CPU is shared.
        self.num_threads = num_threads
        # One generation at a time; the session also holds it around LoRA activation + generation.
        self.lock = threading.RLock()
        self.placement = None  # app.placement.Placement once placed (None: the CPU, as built)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, checkpoint, *, data_dir, config_root=None, dtype=None, placement=None) -> "PipelineHandle":
        """A single-file checkpoint or a diffusers-format Flux/SD3 folder (the embedded demo model:
        `demo.load_demo_handle`, which loads its shipped file through here). `placement`
        (app.placement.Placement): the device and precision; None keeps the CPU and `dtype`
        (default fp32)."""
        if checkpoint is None:
            raise TypeError("PipelineHandle.load needs a checkpoint file; the demo model is demo.load_demo_handle")
        from lora_core.app.checkpoints import load_checkpoint, file_sha256
        from lora_core.app.diffusers_folders import DISPLAY_NAMES, folder_family, is_diffusers_folder, load_folder

        path = Path(checkpoint)
        if is_diffusers_folder(path):
            if dtype is None and placement is not None:
                dtype = placement.dtype_for(folder_family(path))
            folder = load_folder(path, dtype=dtype)
            # A1111's model hash is a file's; a folder of several files has none
            handle = cls(folder.pipe, family=folder.family, is_demo=False,
                         label=f"{path.name} ({DISPLAY_NAMES[folder.family]}, diffusers folder)",
                         checkpoint_path=path, model_name=path.name, model_hash=None,
                         base_scheduler_config=dict(folder.pipe.scheduler.config),
                         default_size=folder.default_size, notes=folder.notes)
            return handle.place(placement)
        if dtype is None and placement is not None:
            dtype = placement.dtype_for(None)  # single files are SD1/SD2/SDXL
        loaded = load_checkpoint(path, data_dir, config_root=config_root, dtype=dtype)
        pipe = build_pipeline(loaded.family, loaded.components)
        model_hash = file_sha256(path, data_dir)[:10]
        label = f"{path.stem} ({loaded.family.upper()}, {model_hash})"
        handle = cls(pipe, family=loaded.family, is_demo=False, label=label, checkpoint_path=path,
                     model_name=path.stem, model_hash=model_hash,
                     base_scheduler_config=dict(loaded.components["scheduler"].config),
                     default_size=loaded.default_size or DEFAULT_SIZE[loaded.family], notes=loaded.notes)
        return handle.place(placement)

    def place(self, placement) -> "PipelineHandle":
        """Move the pipeline to `placement`'s device (None: stay where it is). Done before the LoRA
        binding is built, so the engine patches the weights where they run."""
        if placement is None:
            return self
        if self._binding is not None:
            raise RuntimeError("place() after the LoRA binding was built would leave it on the old tensors")
        dtype = placement.dtype_for(self.family)
        denoiser = self.pipe.transformer if self.is_flow else self.pipe.unet
        first = next(denoiser.parameters(), None)
        if not placement.on_cpu or (first is not None and first.dtype != dtype):
            self.pipe.to(placement.device, dtype)
        self.placement = placement
        return self

    @property
    def device_label(self) -> str:
        """`cpu, float32`, `cuda, float16`: where the model runs, for the UI and the log."""
        denoiser = self.pipe.transformer if self.is_flow else self.pipe.unet
        first = next(denoiser.parameters(), None)
        if first is None:
            return "cpu"
        return f"{first.device}, {str(first.dtype).removeprefix('torch.')}"

    @property
    def is_flow(self) -> bool:
        """A flow-matching model (Flux, SD3): transformer denoiser, flow samplers, T5 prompt."""
        return self.family in FLOW_FAMILIES

    @property
    def default_sampler(self) -> str:
        return default_sampler(self.family)

    @property
    def default_cfg(self) -> float:
        return DEFAULT_CFG.get(self.family, 7.0)

    def generation_notes(self, params: "GenerationParams") -> list[str]:
        """How this model reads the prompt and guidance settings, for the user (no errors)."""
        if not self.is_flow:
            return []
        from lora_core.app import flow_prompts

        return flow_prompts.notes(self.pipe, self.family, params.prompt, params.negative)

    @property
    def binding(self):
        """lora_core.targets Binding over this pipeline's UNet (or Flux/SD3 transformer) and text
        encoders (built once)."""
        if self._binding is None:
            from lora_core.targets import Binding

            if self.is_flow:
                from lora_core.app.diffusers_folders import TEXT_ENCODERS

                encoders = [getattr(self.pipe, name) for name in TEXT_ENCODERS[self.family]]
                self._binding = Binding.from_diffusers(self.pipe.transformer, encoders, family=self.family)
                return self._binding
            encoders = [self.pipe.text_encoder]
            if getattr(self.pipe, "text_encoder_2", None) is not None:
                encoders.append(self.pipe.text_encoder_2)
            self._binding = Binding.from_diffusers(self.pipe.unet, encoders, family=self.family)
        return self._binding

    # -------------------------------------------------------------- generation
    def generate(self, params: GenerationParams, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> list:
        """Images for params (batch_count images, seeds seed, seed+1, ...). Each image's
        `.info["seed"]` holds its seed. On cancel the images finished so far are returned."""
        import torch

        from lora_core.cpu_threads import torch_threads

        params = params.validated(self.family)
        total = params.steps * params.batch_count
        images = []
        with self.lock, torch.inference_mode(), torch_threads(self.num_threads or None):
            texts = self._text_arguments(params)
            for i in range(params.batch_count):
                if cancel is not None and cancel.is_set():
                    break
                seed = params.seed + i
                done_before = i * params.steps

                def on_step_end(pipe, step, timestep, callback_kwargs, _done=done_before):
                    if progress is not None:
                        progress(_done + step + 1, total)
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled()
                    return callback_kwargs

                # a fresh scheduler per image: multistep samplers keep state between calls
                self.pipe.scheduler = make_scheduler(params.sampler, self._scheduler_config, self.family)
                generator = torch.Generator("cpu").manual_seed(seed)
                try:
                    out = self.pipe(
                        **texts, num_inference_steps=params.steps, guidance_scale=params.cfg,
                        width=params.width, height=params.height, generator=generator,
                        callback_on_step_end=on_step_end, output_type="pil",
                    )
                except _Cancelled:
                    logger.info("generation cancelled after %d of %d images", len(images), params.batch_count)
                    break
                image = out.images[0]
                image.info["seed"] = seed
                images.append(image)
        return images


    def _text_arguments(self, params: GenerationParams) -> dict:
        """The pipeline's text inputs: the prompts themselves when diffusers reads them as A1111
        would (no emphasis, no BREAK, at most 75 tokens), else weighted chunked embeddings
        (prompt_encode.py), computed once for the whole batch."""
        from .prompt_encode import CHUNK, weighted_embeddings
        from .prompt_syntax import needs_weighting

        if self.is_flow:
            from lora_core.app import flow_prompts

            return flow_prompts.call_arguments(self.pipe, self.family, params.prompt, params.negative)
        tokenizer = getattr(self.pipe, "tokenizer", None)
        plain = {"prompt": params.prompt, "negative_prompt": params.negative or None}
        if tokenizer is None:
            return plain
        texts = [params.prompt, params.negative or ""]
        if not any(needs_weighting(t) or len(tokenizer(t, truncation=False).input_ids) - 2 > CHUNK for t in texts):
            return plain
        return weighted_embeddings(self.pipe, self.family, params.prompt, params.negative)


def build_pipeline(family: str, components: dict):
    """A diffusers txt2img pipeline over ready components, with progress bars off (we report our own)."""
    if family == "sdxl":
        with _quiet_image_processor_fallback():
            from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=components["vae"], text_encoder=components["text_encoder"],
            text_encoder_2=components["text_encoder_2"], tokenizer=components["tokenizer"],
            tokenizer_2=components["tokenizer_2"], unet=components["unet"], scheduler=components["scheduler"],
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    else:
        with _quiet_image_processor_fallback():
            from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
            unet=components["unet"], scheduler=components["scheduler"], safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
