"""`python -m lora_core merge CHECKPOINT --lora NAME|PATH[:WEIGHT[:UNET]] ... --out OUT.safetensors`.

Bakes LoRAs into a single-file checkpoint with the same math as live patching (W0 + Σ m·ΔW in
fp32, rounded once; fp8 weights merged in fp32 and rounded to nearest): LDM-layout SD1, SD2, SDXL;
Flux.1 in BFL names (`model.diffusion_model.double_blocks...`, or the transformer-only file with
bare `double_blocks...` keys) and SD3/3.5 MMDiT (`joint_blocks...`), with their
`text_encoders.clip_l/clip_g/t5xxl` when the file has them. Every key, dtype and non-weight entry of the
checkpoint is kept; the checkpoint's metadata is kept and a `lora_core.merged` entry lists what was
baked in. WEIGHT sets both multipliers like `<lora:name:WEIGHT>`; a second number sets the UNet's
(`<lora:name:TE:UNET>`). A LoRA is a file path, or a name looked up in the LoRA folders (--lora-dir,
default MODELS_DIR/Lora) the way a prompt tag's name is. CHECKPOINT is a file path or a name under
MODELS_DIR/Stable-diffusion. The output gets the mode of the file it replaces, or the umask's default.
A .safetensors checkpoint is not loaded whole: only the tensors the LoRAs write are read, the rest
is copied byte for byte (merge_file.py), so a 12B Flux merge holds the touched tensors, not the model.

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
    """(state dict, metadata) of a .ckpt/.pt checkpoint, without executing pickle code
    (.safetensors files are read lazily: `open_safetensors`)."""
    import torch

    if not os.path.isfile(path):
        raise MergeError(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
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
    """Do the merge; returns a summary. Raises MergeError (nothing written) on bad input.

    A .safetensors checkpoint is bound on shape-only tensors, only the tensors the LoRAs write are
    read, and the output is streamed from the input (`merge_file`): memory holds the touched
    tensors, not the model. Other files (.ckpt/.pt) are read whole and written with save_file."""
    from lora_core.patcher import Patcher

    source = open_safetensors(checkpoint) if checkpoint.lower().endswith(".safetensors") else None
    if source is not None:
        state, metadata = source.meta_state(), dict(source.metadata)
    else:
        state, metadata = read_checkpoint(checkpoint)
    binding = bind_checkpoint(state, checkpoint)
    stack = load_stack(loras, binding, checkpoint)
    # what the patcher may write (zero multipliers included): the tensors to read
    touched = changed_tensors(binding, stack, nonzero_only=False)
    if source is not None:
        try:
            state.update(source.load(sorted(touched)))
        except Exception as exc:  # truncated data area, unreadable file
            raise MergeError(f"{checkpoint}: cannot read checkpoint ({exc})", EXIT_BAD_INPUT) from exc
        binding = bind_checkpoint(state, checkpoint)

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

    if source is not None:
        changed = {name: state[name] for name in touched}

        def writer(tmp: str) -> None:
            source.write(tmp, changed, metadata)
    else:
        from safetensors.torch import save_file

        tensors = _unshared(state)

        def writer(tmp: str) -> None:
            save_file(tensors, tmp, metadata=metadata)
    try:
        atomic_write(out, writer)
    except OSError as exc:
        raise MergeError(f"{out}: cannot write ({exc.strerror or exc})", EXIT_BAD_INPUT) from exc
    except (ValueError, RuntimeError) as exc:  # a tensor that no longer fits its place; nothing kept
        raise MergeError(f"{out}: cannot write ({exc})", EXIT_BAD_INPUT) from exc
    return {"family": binding.family, "tensors": len(changed_tensors(binding, stack)), "seconds": report.seconds,
            "loras": [(r.name, r.matched, r.unmatched) for r in report.loras], "warnings": report.warnings}


def open_safetensors(path: str):
    """The checkpoint's header (`merge_file.CheckpointFile`). Raises MergeError."""
    from lora_core.commands.merge_file import CheckpointFile
    from lora_core.formats.header import HeaderError

    if not os.path.isfile(path):
        raise MergeError(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
        return CheckpointFile(path)
    except HeaderError as exc:
        raise MergeError(f"{path}: cannot read checkpoint ({exc.problem})", EXIT_BAD_INPUT) from exc


def load_stack(loras: list[ApplyRequest], binding, checkpoint: str) -> list:
    """The LoRA files as the patcher's stack; a file that cannot be read, is for another family or
    fits nothing in the checkpoint raises MergeError."""
    from lora_core.engine import active_lora
    from lora_core.formats import LoraFormatError, load_lora
    from lora_core.formats.family import family_fits

    stack = []
    for req in loras:
        path = req.path
        try:
            lora = load_lora(path)
        except LoraFormatError as exc:
            raise MergeError(str(exc), EXIT_BAD_INPUT) from exc
        except OSError as exc:
            raise MergeError(f"{path}: {exc.strerror or exc}", EXIT_BAD_INPUT) from exc
        if not family_fits(lora.family, binding.family):
            raise MergeError(f"{path}: LoRA is for {lora.family}, the checkpoint is {binding.family}",
                             EXIT_INCOMPATIBLE)
        matched, unmatched = binding.match(lora)
        if matched == 0:
            raise MergeError(f"{path}: none of its {unmatched} modules exist in {os.path.basename(checkpoint)}",
                             EXIT_INCOMPATIBLE)
        stack.append(active_lora(req, lora))
    return stack


def bind_checkpoint(state: dict, checkpoint: str):
    """The binding of a checkpoint's denoiser and text encoders. A file with LDM prefixes
    (`model.diffusion_model.*`, `cond_stage_model.*`, `text_encoders.*`) binds as such; a file
    that is a Flux/SD3 transformer alone (BFL `double_blocks.*`, MMDiT `joint_blocks.*`, or
    diffusers' names, as flux1-dev.safetensors ships) binds its keys as they are, so the output
    keeps those names. Raises MergeError when neither is there."""
    from lora_core.targets import Binding
    from lora_core.targets.layout_dit import dit_family

    binding = Binding.from_ldm(state)
    if len(binding) and "unet" in binding.components:
        return binding
    if dit_family(state) is not None:
        binding = Binding.from_parts(list(state.items()), [])
        if len(binding):
            return binding
    raise MergeError(f"{checkpoint}: no model to merge into: neither an SD1/SD2/SDXL UNet nor a Flux/SD3 "
                     "transformer (model.diffusion_model.*, or a transformer-only file with double_blocks.*, "
                     "single_blocks.* or joint_blocks.* keys)", EXIT_BAD_INPUT)


def changed_tensors(binding, stack, nonzero_only: bool = True) -> set[str]:
    """Names of the checkpoint tensors the stack writes (`nonzero_only`: with a multiplier that is
    not 0). One tensor may take several slots (the q, k and v rows of a fused qkv each count once
    in the patcher's report), so the summary counts tensors here rather than slot writes."""
    names: set[str] = set()
    for active in stack:
        for key, adapter in active.lora.adapters.items():
            weight = active.unet if key.startswith("unet:") else active.te
            if nonzero_only and not weight:
                continue
            parts = ["weight"]
            bias = getattr(getattr(adapter, "spec", None), "bias_suffix", None)
            if bias and bias in adapter.tensors:
                parts.append("bias")
            for part in parts:
                slots = binding.resolve_parts(key, part)
                if slots is None:
                    slot = binding.resolve(key, part)
                    slots = [] if slot is None else [(slot, None)]
                names.update(slot.name for slot, _rows in slots)
    return names


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
    print(f"wrote {out} ({summary['family']}, {summary['tensors']} tensors changed in {summary['seconds']:.1f} s)")
    return 0
