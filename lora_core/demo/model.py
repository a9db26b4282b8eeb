"""Train the tiny SD1-family demo base model from the synthetic scenes (tools/train_demo_model.py).

Architecture: SD1's block layout at a fraction of the width — a UNet2DConditionModel with 4 levels
(cross-attention in the first three, 2 ResNets per level), a 3-layer CLIP text encoder over the
real 49408-token CLIP vocabulary (tokenizer from `lora_core.app.clip_tokenizer`), and a 4-level
AutoencoderKL (8x down-sampling, 4 latent channels), so a 64x64 picture is an 8x8x4 latent.
Because the module tree is SD1's, LoRAs trained on it have the same key names as real SD1 LoRAs.

Training, all from one seed and deterministic on CPU: (1) the VAE as an autoencoder (MSE + a
tiny KL term) on rendered scenes; (2) the latent scaling factor is set so latents have unit std;
(3) UNet and text encoder together with the epsilon-prediction loss on SD1's noise schedule
(captions dropped 10% of the time so classifier-free guidance works), with an EMA of the weights.

Output: one A1111/LDM single-file checkpoint (fp16, < 30 MB), the diffusers configs it needs to be
loaded (`configs/sd15/...`, usable as `load_checkpoint(..., config_root=...)`, and also embedded in
the file's metadata as JSON), and a manifest JSON (seed, steps, sha256, timings, losses).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SD1_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False, "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class DemoArch:
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_layers_per_block: int = 2
    # SD1's config calls this attention_head_dim; it is the number of heads. 2 (heads of 16 and 32
    # channels): SD1's 8 would make 4-channel heads here, and training steps 22% slower (0.50 vs
    # 0.39 s per batch-64 step, 2 threads), the CPU attention kernel being slow on tiny heads.
    unet_heads: int = 2
    # SD1 uses 32 groups; the deepest level of an 8x8 latent is 1x1, where 32 groups of a narrow
    # UNet would normalise one or two values each
    unet_norm_groups: int = 8
    te_hidden: int = 64
    te_layers: int = 3
    te_heads: int = 4
    te_intermediate: int = 256
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    size: int = 64

    def unet_config(self) -> dict:
        n = len(self.unet_channels)
        return {
            "sample_size": self.size // 2 ** (len(self.vae_channels) - 1), "in_channels": self.latent_channels,
            "out_channels": self.latent_channels, "layers_per_block": self.unet_layers_per_block,
            "block_out_channels": list(self.unet_channels), "norm_num_groups": self.unet_norm_groups,
            "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
            "attention_head_dim": self.unet_heads, "cross_attention_dim": self.te_hidden,
        }

    def te_config(self) -> dict:
        return {
            "vocab_size": 49408, "hidden_size": self.te_hidden, "intermediate_size": self.te_intermediate,
            "num_attention_heads": self.te_heads, "num_hidden_layers": self.te_layers,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": self.te_hidden,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
        }

    def vae_config(self, scaling_factor: float = 1.0) -> dict:
        n = len(self.vae_channels)
        return {
            "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "block_out_channels": list(self.vae_channels),
            "layers_per_block": self.vae_layers_per_block, "latent_channels": self.latent_channels,
            "norm_num_groups": 8, "sample_size": self.size, "scaling_factor": scaling_factor,
        }


@dataclass(frozen=True)
class DemoTrainSettings:
    seed: int = 1234
    n_images: int = 8192
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    # VAE recipe: the loss weighted 1 + vae_object_weight on (and 2 px around) the object, and shapes
    # beyond the base four in its data (the concept LoRA's cross: a VAE that never saw one cannot
    # draw it). Measured (docs/DEMO_MODEL.md): a plain-loss VAE (0 / ()) kept 27% of shapes
    # through encode + decode and no cross; this one keeps every large shape.
    vae_object_weight: float = 4.0
    vae_extra_shapes: tuple[str, ...] = ("cross",)
    # Fraction of the VAE's scenes drawn with a style (half striped backgrounds, half checkered
    # fills), so the style LoRAs have a latent to put them in. Measured: a VAE that never saw
    # stripes turns them into a flat background (stripe score 49 -> 3).
    vae_styled_fraction: float = 0.3
    # Share of UNet samples trained on a partial caption of their scene (Scene.partial_captions)
    # instead of the full one. 0: full captions only. Measured with 0.15 (docs/DEMO_MODEL.md):
    # held-out colour AND shape 62.5% (vs 56%), but position 62% (vs 88%), and an unknown trigger
    # word alone then repaints the whole scene, which hides what a style LoRA does.
    partial_caption_rate: float = 0.0
    # torch CPU threads. 1 by default: measured ~1.0 CPU-s per VAE step (batch 32) and ~0.66 per
    # UNet step (batch 64), ~65 min in all; more threads only pay on an otherwise idle machine
    # (oversubscribed OpenMP threads spin and were 4x slower on a busy one). 0: torch's default.
    threads: int = 1


def build_models(arch: DemoArch, seed: int):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**arch.unet_config())
        torch.manual_seed(seed + 1)
        te = CLIPTextModel(CLIPTextConfig(**arch.te_config()))
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(**arch.vae_config())
    return unet, te, vae


def _images_tensor(seed: int, n: int, size: int):
    """All training scenes as uint8 (N, 3, H, W), their captions and Scenes (held-out pairs excluded)."""
    import numpy as np
    import torch

    from lora_core.demo.data import BASE

    arrays, captions, scenes = [], [], []
    for image, caption, rendered in BASE.items(seed, n, size):
        arrays.append(np.asarray(image, dtype=np.uint8))
        captions.append(caption)
        scenes.append(rendered.scene)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), captions, scenes


def _vae_scenes(settings: DemoTrainSettings, size: int):
    """The VAE's own training scenes: the base shapes plus settings.vae_extra_shapes (a VAE must be able
    to draw shapes the base UNet never learns, e.g. the concept LoRA's cross), with object masks."""
    import numpy as np
    import torch

    from lora_core.demo.data.datasets import is_held_out
    from lora_core.demo.data.scenes import SHAPES, render_many

    shapes = tuple(SHAPES) + tuple(s for s in settings.vae_extra_shapes if s not in SHAPES)
    styled = int(round(settings.n_images * settings.vae_styled_fraction))
    parts = [(settings.seed, settings.n_images - styled, None),
             (settings.seed + 1, styled // 2, "stripes"), (settings.seed + 2, styled - styled // 2, "checker")]
    arrays, masks = [], []
    for seed, n, style in parts:
        if n <= 0:
            continue
        for r in render_many(seed, n, size, shapes=shapes, style=style, exclude=is_held_out):
            arrays.append(np.asarray(r.image, dtype=np.uint8))
            masks.append(r.mask.astype(np.float32))
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(np.stack(masks))[:, None])


def _to_pixels(u8):
    return u8.float() / 127.5 - 1.0


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)


def optimizer_step(opt, loss, losses: list, bar) -> None:
    """One plain optimizer step; records the loss and shows its running mean on the bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")


def object_weighted_loss(recon, x, near_object, object_weight: float):
    """MSE + L1/2 per pixel, with pixels on and near the object (mask, 0..1) weighted
    1 + object_weight: the plain loss is dominated by the background (a small object is ~6%)."""
    err = recon - x
    weight = 1.0 + object_weight * near_object
    return ((err ** 2 + 0.5 * err.abs()) * weight).sum() / (weight.sum() * err.shape[1])


def near_object_masks(masks):
    """(N,1,H,W) float object masks dilated by 2 px, so the object's edges count as object."""
    import torch.nn.functional as F

    return F.max_pool2d(masks, 5, 1, 2)


def train_vae(vae, images, settings: DemoTrainSettings, generator, progress=True, timings=None, masks=None):
    """masks: (N,1,H,W) object masks, used when settings.vae_object_weight > 0."""
    import torch
    import torch.nn.functional as F

    near = near_object_masks(masks) if settings.vae_object_weight and masks is not None else None

    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=settings.vae_lr)
    bar = _bar(settings.vae_steps, "VAE", progress)
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(settings.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings.vae_steps, settings.vae_lr, settings.warmup)
        idx = torch.randint(0, len(images), (settings.vae_batch,), generator=generator)
        x = _to_pixels(images[idx])
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        kl = 0.5 * (dist.mean ** 2 + dist.var - 1 - dist.logvar).mean()
        if near is None:
            loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-4 * kl
        else:
            loss = object_weighted_loss(recon, x, near[idx], settings.vae_object_weight) + 1e-4 * kl
        optimizer_step(opt, loss, losses, bar)
    if bar is not None:
        bar.close()
    if timings is not None:
        timings["vae_s_per_step"] = (time.perf_counter() - t0) / max(1, settings.vae_steps)
        # CPU seconds: with a busy machine, wall time says little about an idle one
        timings["vae_cpu_s_per_step"] = (time.process_time() - c0) / max(1, settings.vae_steps)
    vae.eval().requires_grad_(False)
    return losses


def encode_all(vae, images, batch: int = 256):
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            dist = vae.encode(_to_pixels(images[i:i + batch])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(unet, te, tokenizer, means, stds, captions, scaling: float, settings: DemoTrainSettings,
               generator, progress=True, timings=None, variants=None):
    """`variants`: per image, partial captions drawn instead of the full one for a share
    settings.partial_caption_rate of the samples (None or rate 0: full captions only, and the
    random stream is exactly the committed recipe's)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULER.items()
                             if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                                      "prediction_type", "steps_offset")})
    # tokenise every caption (and the empty one) once
    partial = bool(variants) and settings.partial_caption_rate > 0
    uniq = sorted(set(captions) | ({v for vs in variants for v in vs} if partial else set())) + [""]
    ids = tokenizer(uniq, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    where = {c: i for i, c in enumerate(uniq)}
    caption_index = torch.tensor([where[c] for c in captions])
    empty = len(uniq) - 1
    if partial:
        width = max(1, max(len(vs) for vs in variants))
        alt_index = torch.tensor([[where[v] for v in vs] + [where[c]] * (width - len(vs))
                                  for c, vs in zip(captions, variants)])
        alt_count = torch.tensor([max(1, len(vs)) for vs in variants])
    params = list(unet.parameters()) + list(te.parameters())
    unet.train()
    te.train()
    opt = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    bar = _bar(settings.unet_steps, "UNet+TE", progress)
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(settings.unet_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings.unet_steps, settings.unet_lr, settings.warmup)
        idx = torch.randint(0, len(means), (settings.unet_batch,), generator=generator)
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator)) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        drop = torch.rand(x0.shape[0], generator=generator) < settings.caption_dropout
        cap = caption_index[idx]
        if partial:
            use = torch.rand(x0.shape[0], generator=generator) < settings.partial_caption_rate
            pick = (torch.rand(x0.shape[0], generator=generator) * alt_count[idx]).long()
            cap = torch.where(use, alt_index[idx, pick], cap)
        cap = torch.where(drop, torch.full_like(cap, empty), cap)
        context = te(ids[cap])[0]
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        weight = torch.clamp(snr[t], max=settings.min_snr_gamma) / snr[t] if settings.min_snr_gamma else 1.0
        loss = (per * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(settings.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(float(per.detach().mean()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    if bar is not None:
        bar.close()
    if timings is not None:
        timings["unet_s_per_step"] = (time.perf_counter() - t0) / max(1, settings.unet_steps)
        timings["unet_cpu_s_per_step"] = (time.process_time() - c0) / max(1, settings.unet_steps)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval().requires_grad_(False)
    te.eval().requires_grad_(False)
    return losses


def write_configs(root: Path, arch: DemoArch, scaling: float) -> Path:
    """diffusers configs in the layout `lora_core.app.checkpoints.load_checkpoint(config_root=root)`
    reads (`root/sd15/<component>/...`)."""
    from lora_core.app.clip_tokenizer import END_TOKEN

    base = root / "sd15"
    files = {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **arch.unet_config()},
        "vae/config.json": {"_class_name": "AutoencoderKL", **arch.vae_config(scaling)},
        "text_encoder/config.json": {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                                     **arch.te_config()},
        "tokenizer/tokenizer_config.json": {"model_max_length": 77, "pad_token": END_TOKEN},
        "scheduler/scheduler_config.json": SD1_SCHEDULER,
        "model_index.json": {"_class_name": "StableDiffusionPipeline"},
    }
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    return root


# One definition of the manifest's file hash, shared with the loader that checks it.
from lora_core.app.demo_pack import sha256_of as sha256_file  # noqa: E402


def train_demo_model(out_dir, arch: DemoArch = DemoArch(), settings: DemoTrainSettings = DemoTrainSettings(),
                     data_dir=None, progress: bool = True, name: str = "lora_core-demo") -> dict:
    """Train and write `<out_dir>/<name>.safetensors`, `<out_dir>/configs/`, `<out_dir>/<name>.json`.
    Returns the manifest."""
    import torch

    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train_demo_model(Path(out_dir), arch, settings, data_dir, progress, name)
    finally:
        torch.set_num_threads(previous_threads)


def _train_demo_model(out_dir: Path, arch: DemoArch, settings: DemoTrainSettings, data_dir, progress: bool,
                      name: str) -> dict:
    import torch

    from lora_core.app.clip_tokenizer import load_clip_tokenizer
    from lora_core.train.ldm_export import sd1_state_dict
    from lora_core.train.safetensors_io import write_safetensors

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}
    tokenizer = load_clip_tokenizer(data_dir or out_dir / ".cache")
    unet, te, vae = build_models(arch, settings.seed)
    t = time.perf_counter()
    images, captions, scenes = _images_tensor(settings.seed, settings.n_images, arch.size)
    variants = [sc.partial_captions() for sc in scenes] if settings.partial_caption_rate else None
    vae_images, vae_masks = images, None
    if settings.vae_object_weight or settings.vae_extra_shapes or settings.vae_styled_fraction:
        vae_images, vae_masks = _vae_scenes(settings, arch.size)
    timings["render_s"] = time.perf_counter() - t
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        vae_losses = train_vae(vae, vae_images, settings, generator, progress, timings, vae_masks)
        t = time.perf_counter()
        means, stds = encode_all(vae, images)
        timings["encode_s"] = time.perf_counter() - t
        latent_std = float(torch.sqrt((means ** 2).mean() + (stds ** 2).mean() - means.mean() ** 2))
        scaling = 1.0 / max(latent_std, 1e-6)
        vae.register_to_config(scaling_factor=scaling)
        unet_losses = train_unet(unet, te, tokenizer, means, stds, captions, scaling, settings, generator,
                                 progress, timings, variants=variants)

    configs = {"unet": arch.unet_config(), "vae": arch.vae_config(scaling), "text_encoder": arch.te_config(),
               "scheduler": SD1_SCHEDULER}
    ckpt = out_dir / f"{name}.safetensors"
    state = sd1_state_dict(unet, vae, te, dtype=torch.float16)
    write_safetensors(ckpt, state, checkpoint_metadata(configs, settings.seed, name, arch.size))
    write_configs(out_dir / "configs", arch, scaling)

    def _mean(xs):
        return sum(xs) / len(xs) if xs else None

    manifest = {
        "name": name,
        "file": ckpt.name,
        "sha256": sha256_file(ckpt),
        "bytes": ckpt.stat().st_size,
        "seed": settings.seed,
        "vae_steps": settings.vae_steps,
        "unet_steps": settings.unet_steps,
        "settings": asdict(settings),
        "arch": asdict(arch),
        "configs": configs,
        "vae_scaling_factor": scaling,
        "loss": {"vae_first50": _mean(vae_losses[:50]), "vae_last50": _mean(vae_losses[-50:]),
                 "unet_first200": _mean(unet_losses[:200]), "unet_last200": _mean(unet_losses[-200:])},
        "timings": timings,
        "torch": torch.__version__,
        "started_at": started,
        "seconds": time.time() - started,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s (%d bytes, sha256 %s)", ckpt, manifest["bytes"], manifest["sha256"][:12])
    return manifest


def checkpoint_metadata(configs: dict, seed: int, name: str, size: int) -> dict[str, str]:
    """The safetensors metadata of a demo checkpoint: what marks it as one, and its configs."""
    return {
        "lora_core_demo_model": "1",
        "lora_core_demo_configs": json.dumps(configs, sort_keys=True),
        "lora_core_demo_seed": str(seed),
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.title": name,
        "modelspec.resolution": f"{size}x{size}",
    }


def demo_configs_from_metadata(metadata: dict[str, str]) -> dict | None:
    """The diffusers configs embedded in a demo checkpoint's metadata (None for other files)."""
    raw = metadata.get("lora_core_demo_configs")
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return copy.deepcopy(data) if isinstance(data, dict) else None
