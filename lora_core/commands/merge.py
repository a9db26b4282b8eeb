"""`python -m lora_core merge CHECKPOINT --lora NAME|PATH[:WEIGHT[:UNET]] ... --out OUT.safetensors`.

Bakes LoRAs into a single-file LDM-layout checkpoint (SD1, SD2, SDXL) with the same math as live
patching (W0 + Σ m·ΔW in fp32, rounded once). Every key, dtype and non-weight entry of the
checkpoint is kept; the checkpoint's metadata is kept and a `lora_core.merged` entry lists what was
baked in. WEIGHT sets both multipliers like `<lora:name:WEIGHT>`; a second number sets the UNet's
(`<lora:name:TE:UNET>`). A LoRA is a file path, or a name looked up in the LoRA folders (--lora-dir,
default MODELS_DIR/Lora) the way a prompt tag's name is. CHECKPOINT is a file path or a name under
MODELS_DIR/Stable-diffusion. The output gets the mode of the file it replaces, or the umask's default.

Exit status: 0 merged, 2 unreadable input, 3 a LoRA does not fit the checkpoint (nothing written).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from lora_core.request import ApplyRequest

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_INCOMPATIBLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lora_core.library.locations import add_data_dir_argument, add_location_arguments

    parser.add_argument("checkpoint", help="single-file checkpoint (.safetensors; .ckpt/.pt read without pickle code), "
                                           "a path or a name under MODELS_DIR/Stable-diffusion")
    parser.add_argument("--lora", action="append", required=True, metavar="NAME|PATH[:WEIGHT[:UNET]]",
                        help="a LoRA to bake in (repeatable): a file, or a name as in <lora:NAME>; WEIGHT defaults to 1")
    add_location_arguments(parser)
    add_data_dir_argument(parser)
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def parse_lora_arg(text: str) -> ApplyRequest:
    """NAME|PATH[:WEIGHT[:UNET]] -> ApplyRequest(path=NAME|PATH, te, unet); `resolve_loras` turns
    a name into its file. Numbers are taken from the right, so a path may itself contain ':'
    (C:\\loras\\x.safetensors)."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            value = float(parts[-1])
        except ValueError:
            break
        numbers.insert(0, value)
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise ValueError(f"--lora {text!r}: no path")
    te = numbers[0] if numbers else 1.0
    unet = numbers[1] if len(numbers) > 1 else te
    return ApplyRequest(path, te=te, unet=unet)


class MergeError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def read_checkpoint(path: str):
    """(state dict, metadata) of a single-file checkpoint, without executing pickle code."""
    import torch

    if not os.path.isfile(path):
        raise MergeError(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors import safe_open

            state, metadata = {}, {}
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
                for key in f.keys():
                    state[key] = f.get_tensor(key)
            return state, metadata
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise MergeError(f"{path}: not a checkpoint state dict", EXIT_BAD_INPUT)
        return dict(obj), {}
    except MergeError:
        raise
    except Exception as exc:  # corrupt header, truncated file, pickle refused
        raise MergeError(f"{path}: cannot read checkpoint ({exc})", EXIT_BAD_INPUT) from exc


def merge(checkpoint: str, loras: list[ApplyRequest], out: str) -> dict:
    """Do the merge; returns a summary. Raises MergeError (nothing written) on bad input."""
    from safetensors.torch import save_file

    from lora_core.engine import active_lora
    from lora_core.formats import LoraFormatError, load_lora
    from lora_core.patcher import Patcher
    from lora_core.targets import Binding

    state, metadata = read_checkpoint(checkpoint)
    binding = Binding.from_ldm(state)
    if len(binding) == 0 or "unet" not in binding.components:
        raise MergeError(f"{checkpoint}: no Stable Diffusion UNet (model.diffusion_model.*) in this file",
                         EXIT_BAD_INPUT)
    stack = []
    for req in loras:
        path = req.path
        try:
            lora = load_lora(path)
        except LoraFormatError as exc:
            raise MergeError(str(exc), EXIT_BAD_INPUT) from exc
        except OSError as exc:
            raise MergeError(f"{path}: {exc.strerror or exc}", EXIT_BAD_INPUT) from exc
        if lora.family not in ("unknown", binding.family) and binding.family != "unknown":
            raise MergeError(f"{path}: LoRA is for {lora.family}, the checkpoint is {binding.family}",
                             EXIT_INCOMPATIBLE)
        matched, unmatched = binding.match(lora)
        if matched == 0:
            raise MergeError(f"{path}: none of its {unmatched} modules exist in {os.path.basename(checkpoint)}",
                             EXIT_INCOMPATIBLE)
        stack.append(active_lora(req, lora))

    # No backups: the originals are not needed after a one-shot bake (halves peak memory).
    patcher = Patcher(binding, keep_originals=False)
    from tqdm import tqdm

    with tqdm(total=0, unit="tensor", desc="merging", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = patcher.apply(stack, progress=progress)
        except Exception as exc:
            raise MergeError(f"merge failed: {exc}", EXIT_INCOMPATIBLE) from exc
    for warning in report.warnings:
        log.warning("%s", warning)

    metadata = dict(metadata)
    metadata["lora_core.merged"] = json.dumps(
        [{"file": os.path.basename(r.path), "te": r.te, "unet": r.unet} for r in loras])
    from lora_core.library.atomic import atomic_write

    tensors = _unshared(state)
    try:
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except OSError as exc:
        raise MergeError(f"{out}: cannot write ({exc.strerror or exc})", EXIT_BAD_INPUT) from exc
    return {"family": binding.family, "slots": report.slots_recomputed, "seconds": report.seconds,
            "loras": [(r.name, r.matched, r.unmatched) for r in report.loras], "warnings": report.warnings}


def _unshared(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied weights of some .ckpt files): copy the
    later ones; names, dtypes and values stay as they are."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        ident = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if ident is not None and ident in seen:
            tensor = tensor.clone()
        elif ident is not None:
            seen.add(ident)
        out[key] = tensor
    return out


def resolve_loras(loras: list[ApplyRequest], args: argparse.Namespace) -> list[ApplyRequest]:
    """Names -> files, as prompt tags resolve them (paths pass through). Raises MergeError."""
    from lora_core.library.locations import looks_like_path, lora_dirs

    if all(looks_like_path(req.path) for req in loras):
        return loras
    from lora_core.library import Library

    out = []
    with Library(lora_dirs(args), getattr(args, "data_dir", None)) as lib:
        lib.scan()
        for req in loras:
            spec = req.path
            if looks_like_path(spec):
                out.append(req)
                continue
            try:
                entry = lib.find(spec)
                out.append(dataclasses.replace(req, path=entry.path, name=spec, entry=entry))
            except LookupError as exc:
                raise MergeError(f"--lora {spec}: {exc} (looked in {', '.join(lora_dirs(args))})",
                                 EXIT_BAD_INPUT) from exc
    return out


def resolve_checkpoint(spec: str, args: argparse.Namespace) -> str:
    """A checkpoint path as given, else a name under MODELS_DIR/Stable-diffusion."""
    from lora_core.library.locations import checkpoint_dir

    if os.path.isfile(spec):
        return spec
    candidate = os.path.join(checkpoint_dir(args), spec)
    return candidate if os.path.isfile(candidate) else spec


def run(args: argparse.Namespace) -> int:
    try:
        loras = [parse_lora_arg(x) for x in args.lora]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.checkpoint = resolve_checkpoint(args.checkpoint, args)
    try:
        loras = resolve_loras(loras, args)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    out = args.out
    if not out.lower().endswith(".safetensors"):
        print(f"error: {out}: the output must be a .safetensors file", file=sys.stderr)
        return EXIT_BAD_INPUT
    if os.path.exists(out) and os.path.abspath(out) == os.path.abspath(args.checkpoint):
        print("error: the output would overwrite the input checkpoint", file=sys.stderr)
        return EXIT_BAD_INPUT
    if os.path.exists(out) and not args.overwrite:
        print(f"error: {out} exists (use --overwrite)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        summary = merge(args.checkpoint, loras, out)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    for name, matched, unmatched in summary["loras"]:
        print(f"{name}: {matched} modules merged" + (f", {unmatched} not in the checkpoint" if unmatched else ""))
    print(f"wrote {out} ({summary['family']}, {summary['slots']} tensors patched in {summary['seconds']:.1f} s)")
    return 0
