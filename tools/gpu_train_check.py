#!/usr/bin/env python
"""Check `python -m lora_core train` on a real-size SD1.5 architecture on a GPU (issue 7, section 2).

    python tools/gpu_train_check.py --out /tmp/gpucheck              # on a machine with a CUDA GPU
    python tools/gpu_train_check.py --out /tmp/gpucheck --tiny       # the same plumbing on the CPU, in seconds

No weights are downloaded: the UNet, CLIP-L text encoder and VAE are built from the SD1.5 configs
shipped in lora_core/app/configs (random initialisation), written as one A1111/LDM single-file
checkpoint, then the train command trains a LoRA on rendered demo scenes (the style set) on that
file, exactly as a user would. Pass criteria, printed as JSON: the loss of the last fifth of the
steps is lower than that of the first fifth (per-step losses from --loss-log), the LoRA file loads back through lora_core.formats with every module bound to the
model, and the run's wall time and peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = Path(__file__).resolve().parent.parent / "lora_core" / "app" / "configs"


def build_checkpoint(out: Path, tiny: bool) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.train.ldm_export import sd1_state_dict
    from lora_core.train.safetensors_io import write_safetensors

    def cfg(part):
        data = json.loads((CONFIGS / "sd15" / part / "config.json").read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}

    unet_cfg, vae_cfg, te_cfg = cfg("unet"), cfg("vae"), cfg("text_encoder")
    if tiny:  # SD1's block layout at a toy width: the same code paths in seconds
        unet_cfg.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, cross_attention_dim=32,
                        attention_head_dim=2, norm_num_groups=8)
        vae_cfg.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=8, layers_per_block=1)
        te_cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      projection_dim=32)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_cfg.items() if k != "architectures"}))
    path = out / ("sd15-tiny-random.safetensors" if tiny else "sd15-random.safetensors")
    write_safetensors(path, sd1_state_dict(unet, vae, te, dtype=torch.float16), {"note": "random init"})
    if tiny:  # the tiny model needs its own configs next to it
        root = out / "configs" / "sd15"
        for part, data in (("unet", unet_cfg), ("vae", vae_cfg), ("text_encoder", te_cfg)):
            (root / part).mkdir(parents=True, exist_ok=True)
            (root / part / "config.json").write_text(json.dumps(data))
        for part in ("tokenizer", "scheduler"):
            src = CONFIGS / "sd15" / part
            (root / part).mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                (root / part / f.name).write_bytes(f.read_bytes())
        (root / "model_index.json").write_text((CONFIGS / "sd15" / "model_index.json").read_text())
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="toy widths on the CPU (plumbing check)")
    p.add_argument("--steps", type=int, default=None, help="default 300 (GPU) / 20 (tiny)")
    p.add_argument("--resolution", type=int, default=None, help="default 512 (GPU) / 64 (tiny)")
    p.add_argument("--device", default=None, help="default cuda (GPU) / cpu (tiny)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from lora_core.demo.data import STYLE
    from lora_core.formats import load_lora
    from lora_core.cli import main as cli

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cpu" if args.tiny else "cuda")
    steps = args.steps or (20 if args.tiny else 300)
    resolution = args.resolution or (64 if args.tiny else 512)
    t0 = time.perf_counter()
    ckpt = build_checkpoint(out, args.tiny)
    data = STYLE.write(out / "data", seed=7, n=16, size=resolution)
    lora = out / "gpu_check_lora.safetensors"
    argv = ["train", "--checkpoint", str(ckpt), "--data", str(data.parent), "--out", str(lora),
            "--steps", str(steps), "--rank", "16", "--alpha", "16", "--lr", "1e-3", "--batch-size", "4",
            "--resolution", str(resolution), "--device", device, "--no-preview", "--loss-log", str(out / "losses.json"), "--data-dir", str(out / "cache")]
    if args.tiny:
        argv += ["--config-root", str(out / "configs")]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    rc = cli(argv)
    train_s = time.perf_counter() - t1
    if rc != 0:
        print(json.dumps({"ok": False, "rc": rc}))
        return 1
    lf = load_lora(lora)
    losses = json.loads((out / "losses.json").read_text())
    fifth = max(1, len(losses) // 5)
    first, last = (sum(losses[:fifth]) / fifth, sum(losses[-fifth:]) / fifth) if losses else (None, None)
    report = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "steps": steps, "resolution": resolution, "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - t0, 1), "modules": len(lf.adapters), "family": lf.family,
        "loss_first_fifth": first, "loss_last_fifth": last,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.startswith("cuda") else None,
    }
    from lora_core.app.checkpoints import load_checkpoint
    from lora_core.targets import Binding

    loaded = load_checkpoint(ckpt, out / "cache", config_root=(out / "configs") if args.tiny else None)
    matched, unmatched = Binding.from_diffusers(loaded.components["unet"], [loaded.components["text_encoder"]]).match(lf)
    report.update(matched=matched, unmatched=unmatched)
    report["ok"] = bool(losses) and last < first and lf.family == "sd1" and matched == len(lf.adapters) > 0
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
