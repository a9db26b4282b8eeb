"""A kohya-style training folder: images with same-name caption files, in `<repeats>_<name>`
sub-folders (e.g. `10_mychar/img001.png` + `img001.txt` is seen 10 times per epoch).

Rules (as kohya sd-scripts' DreamBooth-style folders): a sub-folder whose name does not start with
`<number>_` is skipped with a warning; an image without a caption file is captioned with the
folder's class words (`10_sks dog` -> "sks dog"). A folder holding images directly (no repeat
sub-folders) is one subset seen once per epoch. The trigger word, when given, is put in front of
every caption that does not already start with it.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".caption")
_REPEAT_DIR = re.compile(r"^(\d+)_(.*)$")


class DatasetError(ValueError):
    """A training folder or file that cannot be used; names the path and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class TrainItem:
    image: Path
    caption: str
    repeats: int
    subset: str  # the sub-folder's name, e.g. "10_mychar" (kohya's ss_dataset_dirs key)


@dataclass
class TrainingSet:
    root: Path
    items: list[TrainItem]
    subsets: dict[str, dict] = field(default_factory=dict)  # name -> {"n_repeats", "img_count"}

    @property
    def num_train_images(self) -> int:
        """Images times repeats (kohya's ss_num_train_images)."""
        return sum(i.repeats for i in self.items)

    def epoch_order(self) -> list[int]:
        """Item indices, each repeated `repeats` times (unshuffled)."""
        return [i for i, item in enumerate(self.items) for _ in range(item.repeats)]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """subset -> {tag: images whose caption has it}: kohya's ss_tag_frequency (comma-split tags)."""
        out: dict[str, Counter] = {}
        for item in self.items:
            tags = {t.strip() for t in item.caption.split(",") if t.strip()}
            out.setdefault(item.subset, Counter()).update(tags)
        return {k: dict(v) for k, v in out.items()}

    def tag_frequency_json(self) -> str:
        return json.dumps(self.tag_frequency(), ensure_ascii=False)


def _read_caption(image: Path) -> str | None:
    for suffix in CAPTION_SUFFIXES:
        cap = image.with_suffix(suffix)
        if cap.is_file():
            try:
                text = cap.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DatasetError(cap, f"cannot read caption ({exc})") from exc
            # one caption per file; extra lines are joined (kohya reads the first line only)
            return " ".join(line.strip() for line in text.splitlines() if line.strip())
    return None


def with_trigger(caption: str, trigger: str | None) -> str:
    if not trigger:
        return caption
    trigger = trigger.strip()
    if caption == trigger or caption.startswith(trigger + ",") or caption.startswith(trigger + " "):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(root, trigger: str | None = None) -> TrainingSet:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "training data folder not found")
    subsets: list[tuple[Path, int, str]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _REPEAT_DIR.match(sub.name)
        if m is None:
            logger.warning("%s: skipped (folder name must be <repeats>_<name>, e.g. 10_%s)", sub, sub.name)
            continue
        repeats = int(m.group(1))
        if repeats < 1:
            logger.warning("%s: skipped (0 repeats)", sub)
            continue
        subsets.append((sub, repeats, m.group(2).strip()))
    if not subsets and _images_in(root):
        subsets.append((root, 1, ""))
    items: list[TrainItem] = []
    info: dict[str, dict] = {}
    for folder, repeats, class_words in subsets:
        images = _images_in(folder)
        if not images:
            logger.warning("%s: no images", folder)
            continue
        for image in images:
            caption = _read_caption(image)
            if caption is None:
                logger.warning("%s: no caption file, using %r", image, class_words)
                caption = class_words
            items.append(TrainItem(image, with_trigger(caption, trigger), repeats, folder.name))
        info[folder.name] = {"n_repeats": repeats, "img_count": len(images)}
    if not items:
        raise DatasetError(root, "no training images (expected <repeats>_<name> folders with .png/.jpg files and .txt captions)")
    return TrainingSet(root, items, info)


def load_image_tensor(path: Path, resolution: int):
    """RGB in [-1, 1], shape (3, res, res): shorter side resized to res, then centre-cropped."""
    return load_image_crop(path, resolution)[0]


def load_image_crop(path: Path, resolution: int):
    """(pixels as load_image_tensor gives them, (original height, width), (crop top, left)).

    SDXL is conditioned on the image's size before resizing and on where the crop starts (in
    the resized image), the `add_time_ids` that kohya and diffusers' SDXL trainers pass."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0, (h, w), (top, left)
