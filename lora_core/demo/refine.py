"""Second training stage of the demo model: a sharper decoder and a longer-trained UNet.

Why a second stage: measured on the stage-1 model, its VAE was the bottleneck. Encoding and
decoding training scenes kept the object's colour in only 52% and its shape in 27% of them (flat
scenes, yet the objects came back as blurred blobs), so no UNet could draw better than that.
The plain MSE is dominated by the background (an 18 px object covers ~6% of the picture).

Stage 2 starts from a stage-1 checkpoint and runs two independent jobs, in two processes when
asked (one CPU thread each):
* decoder: only the VAE decoder (+ post_quant_conv) is trained, with the loss weighted up on and
  around the object (ground-truth masks from the scene renderer). The encoder is frozen, so the
  latent space, and with it everything the UNet learned, stays valid.
* unet: UNet + text encoder continue the stage-1 objective on the same frozen latents.
The results are combined into one checkpoint with a manifest that records the stage-1 file's
sha256, the settings and the losses, so the file can be rebuilt from the seed.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineSettings:
    seed: int = 4321
    n_images: int = 8192
    decoder_steps: int = 1500
    decoder_batch: int = 32
    decoder_lr: float = 4e-4
    object_weight: float = 4.0  # loss weight on (dilated) object pixels, background = 1
    unet_steps: int = 2400
    unet_batch: int = 64
    unet_lr: float = 3e-4
    warmup: int = 100
    threads: int = 1
    parallel: bool = True  # decoder and UNet jobs in two processes


def _load(src: Path, config_root: Path, data_dir: Path):
    import torch

    from lora_core.app.checkpoints import load_checkpoint

    return load_checkpoint(src, data_dir, config_root=config_root, dtype=torch.float32).components


def _scenes(settings: RefineSettings, size: int):
    """Training scenes (uint8 N,3,H,W), captions and object masks (float N,1,H,W)."""
    import numpy as np
    import torch

    from lora_core.demo.data import BASE

    arrays, captions, masks = [], [], []
    for image, caption, rendered in BASE.items(settings.seed, settings.n_images, size):
        arrays.append(np.asarray(image, dtype=np.uint8))
        captions.append(caption)
        masks.append(rendered.mask.astype(np.float32))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, captions, torch.from_numpy(np.stack(masks))[:, None]


def train_decoder(vae, images, masks, means, stds, settings: RefineSettings, generator, progress=True) -> list[float]:
    """Fit the decoder to the frozen encoder's latents, weighting object pixels (dilated by 2 px
    so the edges count too) by settings.object_weight."""
    import torch

    from lora_core.demo.model import (_bar, _lr_at, _to_pixels, near_object_masks, object_weighted_loss,
                                            optimizer_step)

    near_object = near_object_masks(masks)
    vae.requires_grad_(False)
    trained = [vae.decoder, vae.post_quant_conv]
    for module in trained:
        module.requires_grad_(True)
        module.train()
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=settings.decoder_lr)
    bar = _bar(settings.decoder_steps, "decoder", progress)
    losses = []
    for step in range(settings.decoder_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings.decoder_steps, settings.decoder_lr, settings.warmup)
        idx = torch.randint(0, len(images), (settings.decoder_batch,), generator=generator)
        x = _to_pixels(images[idx])
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator)
        loss = object_weighted_loss(vae.decode(z).sample, x, near_object[idx], settings.object_weight)
        optimizer_step(opt, loss, losses, bar)
    if bar is not None:
        bar.close()
    vae.eval().requires_grad_(False)
    return losses


def _job(kind: str, src: str, config_root: str, data_dir: str, settings: RefineSettings, out: str,
         progress: bool) -> dict:
    """One stage-2 job (runs in its own process when parallel); writes its modules' weights to out."""
    import torch
    from safetensors.torch import save_file

    from lora_core.demo.model import DemoTrainSettings, encode_all, train_unet

    torch.set_num_threads(max(1, settings.threads))
    t0 = time.perf_counter()
    comps = _load(Path(src), Path(config_root), Path(data_dir))
    vae, unet, te = comps["vae"], comps["unet"], comps["text_encoder"]
    vae.eval().requires_grad_(False)
    images, captions, masks = _scenes(settings, int(vae.config.sample_size))
    generator = torch.Generator("cpu").manual_seed(settings.seed + (0 if kind == "decoder" else 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        means, stds = encode_all(vae, images)
        if kind == "decoder":
            losses = train_decoder(vae, images, masks, means, stds, settings, generator, progress)
            state = {f"decoder.{k}": v for k, v in vae.decoder.state_dict().items()}
            state.update({f"post_quant_conv.{k}": v for k, v in vae.post_quant_conv.state_dict().items()})
        else:
            stage1 = replace(DemoTrainSettings(), unet_steps=settings.unet_steps, unet_batch=settings.unet_batch,
                             unet_lr=settings.unet_lr, warmup=settings.warmup, seed=settings.seed)
            losses = train_unet(unet, te, comps["tokenizer"], means, stds, captions,
                                float(vae.config.scaling_factor), stage1, generator, progress)
            state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
            state.update({f"te.{k}": v for k, v in te.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, out)
    return {"kind": kind, "seconds": time.perf_counter() - t0,
            "loss_first50": sum(losses[:50]) / max(1, len(losses[:50])),
            "loss_last50": sum(losses[-50:]) / max(1, len(losses[-50:]))}


def refine_demo_model(src, config_root, out_dir, settings: RefineSettings = RefineSettings(), data_dir=None,
                      progress: bool = True, name: str = "lora_core-demo", stage1: dict | None = None) -> dict:
    """Run stage 2 on the stage-1 checkpoint `src`; write `<out_dir>/<name>.safetensors`, configs and
    `<name>.json` (the manifest). stage1: the stage-1 manifest (seed, steps, losses), recorded in the
    new one. Returns the manifest."""
    import torch
    from safetensors.torch import load_file

    from safetensors import safe_open

    from lora_core.demo.model import checkpoint_metadata, demo_configs_from_metadata, sha256_file
    from lora_core.train.ldm_export import sd1_state_dict
    from lora_core.train.safetensors_io import write_safetensors

    src, config_root, out_dir = Path(src), Path(config_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir or out_dir / ".cache")
    started = time.time()
    parts = {kind: out_dir / f".stage2-{kind}.safetensors" for kind in ("decoder", "unet")}
    args = {kind: (kind, str(src), str(config_root), str(data_dir), settings, str(path), progress)
            for kind, path in parts.items()}
    if settings.parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {kind: pool.submit(_job, *a) for kind, a in args.items()}
            results = {kind: f.result() for kind, f in futures.items()}
    else:
        results = {kind: _job(*a) for kind, a in args.items()}

    comps = _load(src, config_root, data_dir)
    vae, unet, te = comps["vae"], comps["unet"], comps["text_encoder"]
    for kind, path in parts.items():
        for key, value in load_file(str(path)).items():
            owner, _, rest = key.partition(".")
            module = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv, "unet": unet, "te": te}[owner]
            module.state_dict()[rest].copy_(value)
        path.unlink()

    # same architecture and configs as stage 1 (the latent scale is unchanged: the encoder is frozen)
    with safe_open(str(src), "pt") as fh:
        configs = demo_configs_from_metadata(fh.metadata() or {})
    if configs is None:
        raise ValueError(f"{src}: not a lora_core demo checkpoint (no embedded configs)")
    ckpt = out_dir / f"{name}.safetensors"
    metadata = checkpoint_metadata(configs, settings.seed, name, int(vae.config.sample_size))
    write_safetensors(ckpt, sd1_state_dict(unet, vae, te, dtype=torch.float16), metadata)
    shutil.copytree(config_root, out_dir / "configs", dirs_exist_ok=True)
    stage1 = stage1 or {}
    manifest = {
        "name": name,
        "file": ckpt.name,
        "sha256": sha256_file(ckpt),
        "bytes": ckpt.stat().st_size,
        "seed": stage1.get("seed"),
        "vae_steps": stage1.get("vae_steps"),
        "unet_steps": stage1.get("unet_steps"),
        "settings": stage1.get("settings"),
        "arch": stage1.get("arch"),
        "configs": configs,
        "vae_scaling_factor": float(vae.config.scaling_factor),
        "loss": stage1.get("loss"),
        "timings": stage1.get("timings"),
        "stage1_seconds": stage1.get("seconds"),
        "stage2": {"from_sha256": sha256_file(src), "settings": asdict(settings), "jobs": results,
                   "seconds": time.time() - started},
        "torch": torch.__version__,
        "started_at": started,
        "seconds": (stage1.get("seconds") or 0.0) + time.time() - started,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s (stage 2, %d bytes, sha256 %s)", ckpt, manifest["bytes"], manifest["sha256"][:12])
    return manifest
