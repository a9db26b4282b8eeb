"""Where the standalone app runs its model: the device (a GPU when there is one) and the precision of
the weights, chosen once for the session (`serve`/`generate` `--device`, `--precision`).

auto device: CUDA when torch sees a CUDA GPU, else the CPU. auto precision: fp32 on the CPU (fp16
matrix products are slow there), fp16 on a GPU for SD1/SD2/SDXL (what A1111 and diffusers use; the
SDXL VAE is upcast by the pipeline, its config says force_upcast), bf16 for Flux/SD3 (their
activations overflow fp16) where the GPU has it, else fp32. Seeds use the CPU generator on every
device, so a seed gives the same starting noise on the CPU and on a GPU."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_BF16_FAMILIES = frozenset({"flux", "sd3"})


class PlacementError(ValueError):
    """A device or precision this machine cannot use (the message says which and why)."""


@dataclass(frozen=True)
class Placement:
    device: str = "cpu"       # a torch device string: cpu, cuda, cuda:1, ...
    precision: str = "auto"   # one of PRECISIONS

    @property
    def on_cpu(self) -> bool:
        return self.device.split(":", 1)[0] == "cpu"

    def dtype_for(self, family: str | None):
        """The weights' dtype for a model of `family` (None: a single-file SD1/SD2/SDXL checkpoint
        whose family is read later)."""
        import torch

        if self.precision != "auto":
            return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        if self.on_cpu:
            return torch.float32
        if family in _BF16_FAMILIES:
            return torch.bfloat16 if _has_bf16(self.device) else torch.float32
        return torch.float16

    def describe(self, family: str | None) -> str:
        return f"{self.device}, {str(self.dtype_for(family)).removeprefix('torch.')}"


def _has_bf16(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="where the model runs: auto (a CUDA GPU when there is one, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="weights' precision: auto (fp32 on the CPU; on a GPU fp16, bf16 for Flux/SD3), fp32, fp16, bf16")


def choose(device: str = "auto", precision: str = "auto") -> Placement:
    """A usable Placement, or PlacementError naming what is missing (never a silent CPU fallback
    for an explicitly requested GPU)."""
    import torch

    if precision not in PRECISIONS:
        raise PlacementError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    device = (device or "auto").strip().lower()
    if device == "auto":
        return Placement("cuda" if torch.cuda.is_available() else "cpu", precision)
    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        raise PlacementError(f"--device {device!r} is not a device name ({exc})") from exc
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlacementError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; "
                                 "use --device cpu, or install a CUDA build of torch")
        if torch_device.index is not None and torch_device.index >= torch.cuda.device_count():
            raise PlacementError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    elif torch_device.type != "cpu":
        try:
            torch.empty(1, device=torch_device)
        except (RuntimeError, AssertionError) as exc:
            raise PlacementError(f"--device {device}: not usable here ({exc})") from exc
    if precision == "bf16" and not _has_bf16(str(torch_device)):
        raise PlacementError(f"--precision bf16: {device} has no bfloat16 support; use fp16 or fp32")
    return Placement(str(torch_device), precision)


def from_args(args: argparse.Namespace) -> Placement:
    return choose(getattr(args, "device", "auto"), getattr(args, "precision", "auto"))
