"""The trained demo model shipped inside the package: where it lies, what its manifest says, and
whether the files on disk are the ones the manifest describes.

Layout of the asset folder (`lora_core/app/demo_assets/`, written by tools/install_demo_assets.py):

    manifest.json                      format, checkpoint {file, sha256, bytes}, configs, seed, steps,
                                       default_size, loras [{name, file, sha256, kind, activation_text,
                                       preferred_weight, sidecar, preview}], quality (measured), training
    lora_core-demo.safetensors         A1111/LDM single-file checkpoint (fp16)
    configs/sd15/...                   diffusers configs: load_checkpoint(..., config_root=<folder>/configs)
    loras/<name>.safetensors|.json|.preview.png

No torch here: reading and checking the pack must not pull in the model stack.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "demo_assets"
ASSETS_ENV = "LORA_CORE_DEMO_ASSETS"  # another folder with the same layout (development, tests)
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class DemoPackError(Exception):
    """The shipped demo model cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class DemoLoraAsset:
    name: str
    path: Path
    sha256: str
    kind: str  # "style" | "concept" | "locon"
    activation_text: str
    preferred_weight: float
    sidecar: Path | None
    preview: Path | None


@dataclass(frozen=True)
class DemoPack:
    root: Path
    manifest: dict
    checkpoint: Path
    sha256: str
    config_root: Path
    default_size: int
    loras: tuple[DemoLoraAsset, ...]

    @property
    def short_hash(self) -> str:
        """A1111's model hash (first 10 hex digits of the file's sha256)."""
        return self.sha256[:10]


def assets_dir() -> Path:
    """The folder the embedded default is read from: $LORA_CORE_DEMO_ASSETS, else the package's."""
    override = os.environ.get(ASSETS_ENV)
    return Path(override).expanduser() if override else ASSETS_DIR


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(root: Path, rel, what: str) -> Path:
    """root/rel, refusing names that leave the folder (the manifest is data, not trusted paths)."""
    if not isinstance(rel, str) or not rel:
        raise DemoPackError(f"{root / MANIFEST_NAME}: {what} is missing")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise DemoPackError(f"{root / MANIFEST_NAME}: {what} {rel!r} is outside the asset folder")
    return path


def read_pack(root=None) -> DemoPack:
    """Parse the manifest and locate the files; DemoPackError when something is missing."""
    root = Path(root) if root is not None else assets_dir()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DemoPackError(f"{manifest_path}: not found (install a build with tools/install_demo_assets.py)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoPackError(f"{manifest_path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DemoPackError(f"{manifest_path}: not a format-{MANIFEST_FORMAT} demo manifest")
    try:
        return _pack_from_manifest(root, manifest_path, manifest)
    except (AttributeError, TypeError, ValueError) as exc:  # a field of the wrong type
        raise DemoPackError(f"{manifest_path}: malformed ({type(exc).__name__}: {exc})") from None


def _pack_from_manifest(root: Path, manifest_path: Path, manifest: dict) -> DemoPack:
    ckpt = manifest.get("checkpoint") or {}
    checkpoint = _inside(root, ckpt.get("file"), "checkpoint file")
    sha = ckpt.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise DemoPackError(f"{manifest_path}: checkpoint sha256 missing or malformed")
    if not checkpoint.is_file():
        raise DemoPackError(f"{checkpoint}: demo checkpoint not found")
    config_root = _inside(root, manifest.get("configs", "configs"), "configs folder")
    if not (config_root / "sd15").is_dir():
        raise DemoPackError(f"{config_root}: no sd15 configs for the demo checkpoint")
    loras = []
    for item in manifest.get("loras") or []:
        name = str(item.get("name", ""))
        sidecar = item.get("sidecar")
        preview = item.get("preview")
        loras.append(DemoLoraAsset(
            name=name, path=_inside(root, item.get("file"), f"LoRA {name!r} file"),
            sha256=str(item.get("sha256", "")), kind=str(item.get("kind", "")),
            activation_text=str(item.get("activation_text", "")),
            preferred_weight=float(item.get("preferred_weight", 1.0)),
            sidecar=_inside(root, sidecar, f"LoRA {name!r} sidecar") if sidecar else None,
            preview=_inside(root, preview, f"LoRA {name!r} preview") if preview else None,
        ))
    return DemoPack(root=root, manifest=manifest, checkpoint=checkpoint, sha256=sha.lower(),
                    config_root=config_root, default_size=int(manifest.get("default_size", 64)),
                    loras=tuple(loras))


def verify_pack(pack: DemoPack, loras: bool = True) -> None:
    """DemoPackError unless the checkpoint (and with loras, every LoRA) hashes to what the manifest says."""
    actual = sha256_of(pack.checkpoint)
    if actual != pack.sha256:
        raise DemoPackError(f"{pack.checkpoint}: sha256 {actual[:12]}… does not match the manifest's "
                            f"{pack.sha256[:12]}… (changed weights without re-running install_demo_assets?)")
    for lora in pack.loras if loras else ():
        if not lora.path.is_file():
            raise DemoPackError(f"{lora.path}: demo LoRA not found")
        got = sha256_of(lora.path)
        if got != lora.sha256:
            raise DemoPackError(f"{lora.path}: sha256 {got[:12]}… does not match the manifest's {lora.sha256[:12]}…")


def load_verified_pack(root=None, loras: bool = True) -> DemoPack:
    pack = read_pack(root)
    verify_pack(pack, loras=loras)
    return pack
