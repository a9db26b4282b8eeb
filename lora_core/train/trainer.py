"""The LoRA training loop: frozen diffusers UNet / text encoder(s) / VAE, trainable `LoRANetwork`,
the standard diffusion loss (MSE against the noise, or the velocity for v-prediction models)
on the checkpoint's own noise schedule. SD1, SD2 and SDXL (two text encoders, added size/pooled
conditioning, kohya's SDXL names: see conditioning.py and sdxl.py). Deterministic for a seed on
CPU: every random draw (LoRA init, shuffling, noise, timesteps, latent samples) comes from
explicit generators.

Ctrl-C (KeyboardInterrupt) ends training cleanly: the result says `interrupted` and holds the
LoRA as trained so far, which the caller saves.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .base_loras import BaseLoraPlan, FrozenLoras
from .conditioning import SDConditioning, SDXLConditioning, time_ids
from .dataset import TrainingSet, load_image_crop
from .network import LoRANetwork, NetworkSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    network: NetworkSpec = NetworkSpec()
    lr: float = 1e-4
    te_lr: float | None = None  # default: lr
    steps: int | None = None  # exactly this many optimizer steps, or
    epochs: int | None = None  # this many passes over images x repeats (default 10 when neither)
    resolution: int = 64
    batch_size: int = 1
    seed: int = 0
    dtype: str = "fp32"  # fp32 | bf16 (autocast for the frozen model; LoRA weights stay fp32)
    max_grad_norm: float = 1.0
    noise_offset: float = 0.0
    # "cpu", "cuda", "cuda:1", ...: where the frozen model and the LoRA live. Random draws always
    # come from CPU generators (then moved), so a seed means the same noise on every device.
    device: str = "cpu"

    def total_steps(self, dataset: TrainingSet) -> int:
        per_epoch = math.ceil(dataset.num_train_images / self.batch_size)
        if self.steps is not None:
            return int(self.steps)
        return per_epoch * int(self.epochs if self.epochs is not None else 10)


@dataclass
class TrainResult:
    network: LoRANetwork
    losses: list[float]
    steps: int  # optimizer steps done
    epochs: int  # epochs started
    interrupted: bool
    started_at: float
    finished_at: float
    prediction_type: str
    extra: dict = field(default_factory=dict)


@dataclass
class Components:
    """The diffusers parts a training run needs (from lora_core.app.checkpoints.load_checkpoint).
    SDXL adds text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2."""
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    tokenizer: object
    scheduler: object  # any diffusers scheduler; its config gives the noise schedule
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object = None

    def __post_init__(self):
        if self.text_encoder_2 is not None:
            from .sdxl import sdxl_problem

            problem = sdxl_problem(self.unet, self.text_encoder, self.text_encoder_2, self.tokenizer_2)
            if problem:
                raise ValueError(f"cannot train on this SDXL model: {problem}")

    @classmethod
    def from_dict(cls, parts: dict) -> "Components":
        return cls(parts["unet"], parts["text_encoder"], parts["vae"], parts["tokenizer"], parts["scheduler"],
                   parts.get("text_encoder_2"), parts.get("tokenizer_2"))

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder] + ([self.text_encoder_2] if self.is_sdxl else [])

    def conditioning(self):
        if self.is_sdxl:
            return SDXLConditioning(self.tokenizer, self.text_encoder, self.tokenizer_2, self.text_encoder_2)
        return SDConditioning(self.tokenizer, self.text_encoder)

    def network(self, spec: NetworkSpec, seed: int) -> LoRANetwork:
        """The LoRA modules kohya's trainer for this family would make, with its names."""
        if self.is_sdxl:
            from .sdxl import kohya_unet_names

            return LoRANetwork(self.unet, self.text_encoders, spec, seed=seed,
                               unet_names=kohya_unet_names(self.unet))
        return LoRANetwork(self.unet, self.text_encoder, spec, seed=seed)


def training_scheduler(scheduler):
    """A DDPM scheduler with the same betas / prediction type as the checkpoint's sampler."""
    from diffusers import DDPMScheduler

    cfg = dict(scheduler.config)
    keep = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                "trained_betas", "prediction_type", "steps_offset", "timestep_spacing",
                                "rescale_betas_zero_snr") if k in cfg}
    return DDPMScheduler(**keep)


class _LatentCache:
    """Per image: the VAE's latent mean and std, computed once (the VAE is frozen); a fresh latent
    sample is drawn from them at every step, as the VAE would. Also each image's SDXL size
    conditioning (original size, crop corner, target size)."""

    def __init__(self, vae, dataset: TrainingSet, resolution: int, dtype, device: torch.device):
        self.vae, self.dataset, self.resolution, self.dtype = vae, dataset, resolution, dtype
        self.device = device
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._time_ids: dict[int, torch.Tensor] = {}

    def prepare(self, progress: bool) -> None:
        """Encode every image up front (like kohya's cache_latents): a broken image fails before
        any training time is spent, and the loop only samples."""
        items = range(len(self.dataset.items))
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="caching latents", unit="image", leave=False)
        for index in items:
            self._encode(index)

    def _encode(self, index: int) -> None:
        if index not in self._cache:
            pixels, original_hw, crop_tl = load_image_crop(self.dataset.items[index].image, self.resolution)
            with torch.no_grad(), _autocast(self.dtype, self.device):
                dist = self.vae.encode(pixels[None].to(self.device)).latent_dist
            self._cache[index] = (dist.mean.float(), dist.std.float())
            self._time_ids[index] = time_ids(original_hw, crop_tl, (self.resolution, self.resolution))

    def time_ids(self, indices: list[int]) -> torch.Tensor:
        for index in indices:
            self._encode(index)
        return torch.stack([self._time_ids[i] for i in indices]).to(self.device)

    def sample(self, index: int, generator: torch.Generator) -> torch.Tensor:
        self._encode(index)
        mean, std = self._cache[index]
        noise = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean + std * noise) * self.scaling


def _autocast(dtype: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(dtype == "bf16"))


def _flush_denormals() -> bool:
    """Flush CPU floats below the normal range to zero while training; True if it was switched on.

    Seen: the demo concept LoRA went from ~0.4 s to ~30 s per step at step ~735 of 1000, in two
    runs on different base models at once, every op slow alike (denormal numbers, as Adam's state
    decays); training needs no values that small. Process-wide in torch: switched back after."""
    import torch

    return bool(torch.set_flush_denormal(True))


def _restore_denormals(switched: bool) -> None:
    import torch

    if switched:
        torch.set_flush_denormal(False)


def train_lora(parts: Components, dataset: TrainingSet, config: TrainConfig,
               progress: bool = True, on_step: Callable[[int, float], None] | None = None,
               base_loras: BaseLoraPlan | None = None, family: str | None = None) -> TrainResult:
    """Train a LoRA. on_step(step, loss) is called after each optimizer step (a KeyboardInterrupt
    raised there, like Ctrl-C anywhere in the loop, stops training and keeps the result).

    base_loras: LoRAs held frozen in the model while it trains, for every image or per data folder
    (train/base_loras.py; family: the model's, for matching them); the model is back to its own
    weights when this returns."""
    started = time.time()
    if base_loras:
        problem = base_loras.problem([item.subset for item in dataset.items], config.batch_size)
        if problem:
            raise ValueError(problem)
    unet, vae = parts.unet, parts.vae
    device = torch.device(config.device)
    for m in (unet, vae, *parts.text_encoders):
        m.to(device)
        m.requires_grad_(False)
        m.eval()  # SD has no dropout; eval keeps any that a config adds off
    noise_sched = training_scheduler(parts.scheduler)
    prediction_type = noise_sched.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    network = parts.network(config.network, config.seed).apply_to()
    cond = parts.conditioning()
    groups = [{"params": [p for m in network.unet_modules() for p in m.parameters()], "lr": config.lr}]
    te_params = [p for m in network.te_modules() for p in m.parameters()]
    if te_params:
        groups.append({"params": te_params, "lr": config.te_lr if config.te_lr is not None else config.lr})
    optimizer = torch.optim.AdamW(groups)
    total = config.total_steps(dataset)
    generator = torch.Generator("cpu").manual_seed(int(config.seed))
    latents = _LatentCache(vae, dataset, config.resolution, config.dtype, device)
    frozen_te_cache: dict[tuple, dict[str, torch.Tensor]] = {}
    n_timesteps = int(noise_sched.config.num_train_timesteps)

    bar = None
    losses: list[float] = []
    step = epoch = 0
    interrupted = False
    flushing = _flush_denormals()
    frozen = None
    try:
        latents.prepare(progress)
        if base_loras:
            frozen = FrozenLoras(base_loras, unet, parts.text_encoders, family)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)
        while step < total:
            order = dataset.epoch_order()
            perm = torch.randperm(len(order), generator=generator).tolist()
            order = [order[i] for i in perm]
            epoch += 1
            for start in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                batch = order[start:start + config.batch_size]
                if frozen is not None:  # a batch is one folder when there are per-folder LoRAs
                    frozen.select(dataset.items[batch[0]].subset)
                x0 = torch.cat([latents.sample(i, generator) for i in batch])
                captions = [dataset.items[i].caption for i in batch]
                noise = torch.randn(x0.shape, generator=generator)
                if config.noise_offset:
                    noise = noise + config.noise_offset * torch.randn((x0.shape[0], x0.shape[1], 1, 1),
                                                                      generator=generator)
                noise = noise.to(device)
                t = torch.randint(0, n_timesteps, (x0.shape[0],), generator=generator).to(device)
                noisy = noise_sched.add_noise(x0, noise, t)
                target = noise if prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
                sizes = latents.time_ids(batch) if cond.needs_time_ids else None
                with _autocast(config.dtype, device):
                    if te_params:
                        encoded = cond.encode(captions)
                    else:
                        # a frozen text encoder encodes a caption the same way for the same base LoRAs
                        under = frozen.plan.for_folder(dataset.items[batch[0]].subset) if frozen else ()
                        missing = [c for c in captions if (under, c) not in frozen_te_cache]
                        if missing:
                            with torch.no_grad():
                                enc = cond.encode(missing)
                            frozen_te_cache.update({(under, c): {k: v[j:j + 1].float() for k, v in enc.items()}
                                                    for j, c in enumerate(missing)})
                        encoded = {k: torch.cat([frozen_te_cache[(under, c)][k] for c in captions])
                                   for k in frozen_te_cache[(under, captions[0])]}
                    pred = unet(noisy, t, **cond.unet_kwargs(encoded, sizes)).sample
                loss = F.mse_loss(pred.float(), target.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
                optimizer.step()
                step += 1
                value = float(loss.detach())
                losses.append(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", epoch=epoch)
                if on_step is not None:
                    on_step(step, value)
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("training interrupted after %d of %d steps; keeping the LoRA trained so far", step, total)
    except BaseException:
        network.remove()  # leave the caller's model as it was
        raise
    finally:
        if frozen is not None:
            frozen.restore()
        _restore_denormals(flushing)
        if bar is not None:
            bar.close()
    return TrainResult(network, losses, step, epoch, interrupted, started, time.time(), prediction_type,
                       extra={"total_steps": total})
