"""`python -m lora_core train`: train a kohya-format LoRA on a single-file SD1/SD2/SDXL checkpoint.

    python -m lora_core train --checkpoint model.safetensors --data DIR --out my_lora.safetensors \\
        --rank 8 --alpha 8 --lr 1e-4 --steps 500 --trigger mychar

DIR holds kohya-style `<repeats>_<name>` folders of images with `.txt` captions. Ctrl-C stops
training and still writes the LoRA trained so far (exit status 130).

The family comes from the checkpoint (lora_core.app.checkpoints). SDXL trains as kohya's
sdxl_train_network does: both text encoders (`lora_te1_` CLIP-L, `lora_te2_` OpenCLIP bigG), UNet
keys in kohya's LDM names, size/pooled-text conditioning; see lora_core/train/sdxl.py.
"""
from __future__ import annotations

import logging
import json
import os
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def add_arguments(parser) -> None:
    from lora_core.library.locations import add_location_arguments

    parser.add_argument("--checkpoint", required=True,
                        help="base model: A1111/LDM single-file SD1, SD2 or SDXL checkpoint (.safetensors), a path "
                             "or a name under MODELS_DIR/Stable-diffusion")
    parser.add_argument("--data", required=True, help="training folder with <repeats>_<name> sub-folders")
    parser.add_argument("--out", default=None,
                        help="output LoRA file (.safetensors; default: the first LoRA folder / NAME.safetensors, "
                             "NAME being --name or the --data folder's name)")
    add_location_arguments(parser)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (network dim)")
    parser.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (scale = alpha / rank)")
    parser.add_argument("--conv-rank", type=int, default=None, help="rank of 3x3 conv layers with --targets locon (default: --rank)")
    parser.add_argument("--conv-alpha", type=float, default=None, help="alpha of 3x3 conv layers (default: --alpha)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW)")
    parser.add_argument("--te-lr", type=float, default=None, help="text encoder learning rate (default: --lr)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=int, default=None, help="passes over images x repeats (default 10)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="training size in pixels (default: the model's native size, e.g. 512 for SD1, "
                             "1024 for SDXL)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trigger", default=None, help="word put in front of every caption")
    parser.add_argument("--targets", choices=["attn", "attn_ff", "locon"], default="attn_ff",
                        help="attn: attention projections; attn_ff: all transformer linears (kohya default); "
                             "locon: also the ResNet convs (LoCon)")
    parser.add_argument("--train-te", dest="train_te", action="store_true", default=True,
                        help="train the text encoder too (default)")
    parser.add_argument("--no-train-te", dest="train_te", action="store_false", help="UNet only")
    # (SDXL: both text encoders are trained unless --no-train-te)
    parser.add_argument("--base-lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                        help="a LoRA held frozen in the model while this one trains (kohya's --base_weights); "
                             "repeatable")
    parser.add_argument("--folder-lora", action="append", default=[], metavar="FOLDER=FILE[:WEIGHT]",
                        help="a LoRA held frozen while the images of one data sub-folder (e.g. 1_mix) train, so "
                             "the new LoRA learns to stack with it; repeatable; needs --batch-size 1")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="compute precision of the frozen model")
    parser.add_argument("--name", default=None, help="ss_output_name (default: the output file's stem)")
    parser.add_argument("--data-dir", default=None,
                        help="cache folder for the tokenizer files (default: $LORA_CORE_DATA_DIR or ~/.cache/lora_core)")
    parser.add_argument("--config-root", default=None,
                        help="folder of diffusers configs (<root>/sd15/unet/config.json, <root>/sdxl/..., ...) for a "
                             "non-standard checkpoint such as the demo model (default: the shipped SD1/SD2/SDXL configs)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is often faster on a busy machine)")
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--loss-log", default=None, help="also write every step's loss to this JSON file")
    parser.add_argument("--no-preview", action="store_true", help="do not render a preview PNG next to the LoRA")


def _data_dir(arg) -> Path:
    return Path(arg or os.environ.get("LORA_CORE_DATA_DIR") or Path.home() / ".cache" / "lora_core")


def _write_preview(family, components, prompt: str, out: Path, resolution: int, seed: int) -> Path | None:
    """Render one picture with the trained LoRA still applied; best effort (optional hook)."""
    try:
        import torch

        from lora_core.app.pipeline import build_pipeline
    except ImportError:
        return None
    try:
        pipe = build_pipeline(family, components)
        with torch.inference_mode():
            image = pipe(prompt=prompt, num_inference_steps=20, guidance_scale=7.0, width=resolution,
                         height=resolution, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        path = out.with_name(out.stem + ".preview.png")
        image.save(path)
        return path
    except Exception as exc:  # a preview is a nicety; the LoRA is already saved
        logger.warning("no preview for %s: %s", out.name, exc)
        return None


def _what_is_trained(family: str, spec) -> str:
    """One line on which parts get LoRA modules and how they are named."""
    if family == "sdxl":
        encoders = ("both text encoders (lora_te1_: CLIP-L, lora_te2_: OpenCLIP bigG)" if spec.train_te
                    else "no text encoder")
        return (f"SDXL: LoRA on the UNet (lora_unet_, kohya's LDM block names) and {encoders}; "
                "conditioned on both encoders' penultimate states, the pooled bigG embedding and each image's "
                "original size / crop / target size; metadata ss_base_model_version=sdxl_base_v1-0")
    encoder = " and the text encoder (lora_te_)" if spec.train_te else ""
    return f"{family.upper()}: LoRA on the UNet (lora_unet_){encoder}"


def _bad_numbers(args) -> str | None:
    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--rank", args.rank), ("--conv-rank", args.conv_rank), ("--resolution", args.resolution)):
        if value is not None and value < 1:
            return f"{flag} must be at least 1 (got {value})"
    if not args.lr > 0 or (args.te_lr is not None and not args.te_lr >= 0):
        return "learning rates must be positive"
    return None


def _base_lora_plan(args):
    """--base-lora / --folder-lora as a BaseLoraPlan; ValueError for a malformed --folder-lora."""
    from lora_core.train.base_loras import BaseLora, BaseLoraPlan

    by_folder: dict[str, tuple] = {}
    for text in args.folder_lora:
        folder, sep, spec = text.partition("=")
        if not sep or not folder or not spec:
            raise ValueError(f"--folder-lora {text!r}: want FOLDER=FILE[:WEIGHT], e.g. 1_mix=other.safetensors:0.8")
        by_folder[folder] = by_folder.get(folder, ()) + (BaseLora.parse(spec),)
    return BaseLoraPlan(tuple(BaseLora.parse(t) for t in args.base_lora), by_folder)


def run(args) -> int:
    import torch

    from lora_core.app.checkpoints import CheckpointError, file_sha256, load_checkpoint
    from lora_core.train import (Components, DatasetError, NetworkSpec, TrainConfig, build_metadata,
                                 save_lora_file, scan_folder, train_lora)

    from lora_core.commands.merge import resolve_checkpoint
    from lora_core.library.locations import lora_dirs

    args.checkpoint = resolve_checkpoint(args.checkpoint, args)
    if args.out:
        out = Path(args.out)
    else:
        out = Path(lora_dirs(args)[0]) / f"{args.name or Path(args.data).resolve().name}.safetensors"
    problem = _bad_numbers(args)
    if out.suffix.lower() != ".safetensors":
        problem = f"--out must end in .safetensors (got {out.name})"
    if problem:
        print(f"error: {problem}")
        return 2
    try:
        base_loras = _base_lora_plan(args)
        spec = NetworkSpec(rank=args.rank, alpha=args.alpha, targets=args.targets, conv_rank=args.conv_rank,
                           conv_alpha=args.conv_alpha, train_te=args.train_te)
        dataset = scan_folder(args.data, trigger=args.trigger)
    except (ValueError, DatasetError) as exc:
        print(f"error: {exc}")
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data_dir = _data_dir(args.data_dir)
    try:
        loaded = load_checkpoint(args.checkpoint, data_dir, config_root=args.config_root)
        parts = Components.from_dict(loaded.components)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    # the size the model was trained at: latent sample size x the VAE's down-sampling
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    resolution = args.resolution or int(parts.unet.config.sample_size) * vae_factor
    if resolution % vae_factor:
        print(f"error: --resolution must be a multiple of {vae_factor} for this model (got {resolution})")
        return 2
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {device}: torch sees no CUDA GPU here")
        return 2
    config = TrainConfig(network=spec, lr=args.lr, te_lr=args.te_lr, steps=args.steps, epochs=args.epochs,
                         resolution=resolution, batch_size=args.batch_size, seed=args.seed, dtype=args.dtype,
                         device=device)
    print(f"training {out.name}: {len(dataset.items)} images, {dataset.num_train_images} per epoch with repeats, "
          f"{config.total_steps(dataset)} steps, {loaded.family}, targets={spec.targets}, rank={spec.rank}, "
          f"device={device}")
    print(_what_is_trained(loaded.family, spec))
    try:
        result = train_lora(parts, dataset, config, base_loras=base_loras, family=loaded.family)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    name = args.name or out.stem
    ckpt = Path(args.checkpoint)
    meta = build_metadata(name=name, family=loaded.family, config=config, dataset=dataset, result=result,
                          model_name=ckpt.stem, model_hash=file_sha256(ckpt, data_dir))
    try:
        save_lora_file(out, result.network, meta)
    except KeyboardInterrupt:  # a second Ctrl-C during the (atomic) save: nothing half-written
        print("save cancelled")
        return EXIT_INTERRUPTED
    losses = result.losses
    if args.loss_log:
        Path(args.loss_log).write_text(json.dumps([round(v, 6) for v in losses]) + "\n")
    tail = sum(losses[-20:]) / max(1, len(losses[-20:]))
    print(f"wrote {out} after {result.steps} steps (mean loss of the last {min(20, len(losses))} steps: {tail:.4f})")
    if result.interrupted:
        print("training was interrupted; the file holds the LoRA trained so far")
        return EXIT_INTERRUPTED
    if not args.no_preview:
        preview = _write_preview(loaded.family, loaded.components, dataset.items[0].caption, out, resolution,
                                 args.seed)
        if preview:
            print(f"preview: {preview}")
    return 0
