"""Tiny LoRA folders for the UI tests: real safetensors files (kohya key names) read by the real
`lora_core.library.Library`, with sidecars, previews and hostile metadata where a test wants it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

# Every place untrusted text can come from carries this; a browser that ran it would set the flag.
XSS_SCRIPT = "<script>window.__pwned=1</script>"
XSS_IMG = "<img src=x onerror=\"window.__pwned=2\">"
XSS = XSS_SCRIPT + XSS_IMG

_CROSS_DIM = {"sd1": 768, "sd2": 1024, "sdxl": 2048}


def write_lora(path: Path, family: str = "sd1", metadata: dict | None = None, rank: int = 2) -> Path:
    """A kohya-style LoRA on one cross-attention key projection (enough for family detection)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {
        f"{base}.lora_down.weight": np.zeros((rank, _CROSS_DIM[family]), dtype=np.float16),
        f"{base}.lora_up.weight": np.zeros((640, rank), dtype=np.float16),
        f"{base}.alpha": np.array(float(rank), dtype=np.float16),
    }
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def write_preview(lora_path: Path, colour=(200, 40, 40)) -> Path:
    out = lora_path.with_suffix(".png")
    Image.new("RGB", (32, 32), colour).save(out)
    return out


def write_user_metadata(lora_path: Path, data: dict) -> Path:
    out = lora_path.with_suffix(".json")
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def hostile_lora(folder: Path) -> Path:
    """A LoRA whose file name, alias, training tags, sidecar and Civitai info all carry XSS."""
    path = write_lora(
        folder / f"evil{XSS_IMG.replace('/', '_')}.safetensors",
        metadata={
            "ss_output_name": "evil" + XSS,
            "ss_tag_frequency": json.dumps({"1_set": {XSS: 5, "red hat": 3}}),
            "ss_base_model_version": "sd_v1" + XSS,
            XSS: XSS,
        },
    )
    write_user_metadata(path, {"activation text": "trigger" + XSS, "description": XSS, "notes": XSS})
    (path.parent / (path.stem + ".civitai.info")).write_text(json.dumps({
        "id": 1, "modelId": 2, "name": XSS, "baseModel": XSS, "trainedWords": [XSS],
        "model": {"name": XSS},
    }), encoding="utf-8")
    return path


def plain_library(root: Path, count: int) -> list[Path]:
    """`count` sd1 LoRAs named lora_0000.. in two folders, plus two sdxl ones."""
    paths = []
    for i in range(count):
        folder = root / ("style" if i % 2 else "chars")
        paths.append(write_lora(folder / f"lora_{i:04d}.safetensors", metadata={
            "ss_output_name": f"alias_{i:04d}",
            "ss_tag_frequency": json.dumps({"1_img": {f"tag{i}": 10, "common tag": 2}}),
        }))
    for i in range(2):
        paths.append(write_lora(root / "xl" / f"xl_{i}.safetensors", family="sdxl"))
    return paths
