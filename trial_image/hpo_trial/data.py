"""Image classification data held in memory: scikit-learn's digits, or a folder of class sub-folders."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("hpo_trial.train")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: The validation split is the same for every trial of a study, whatever its seed, so that trials
#: are compared on the same images.
SPLIT_SEED = 0


class DataError(Exception):
    """The data set cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class Data:
    """Images as (N, C, H, W) tensors: uint8 for decoded files, float in [0, 1] for digits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    flip: bool
    """Whether a horizontal flip is a valid augmentation (photos yes, digits no)."""

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    def to(self, device: torch.device) -> Data:
        return Data(
            self.train_x.to(device),
            self.train_y.to(device),
            self.val_x.to(device),
            self.val_y.to(device),
            self.classes,
            self.flip,
        )


def as_input(images: torch.Tensor) -> torch.Tensor:
    """A batch as the model's input: float, centred on 0."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (x - 0.5) / 0.5


def _split(labels: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class split so every class is in both parts (when it has two images or more)."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    train: list[torch.Tensor] = []
    val: list[torch.Tensor] = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = min(len(members) - 1, max(1, math.ceil(val_fraction * len(members))))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _make(
    images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], flip: bool, val_fraction: float
) -> Data:
    train_idx, val_idx = _split(labels, val_fraction)
    if len(val_idx) == 0:
        raise DataError("no class has two images: there is nothing to validate on")
    return Data(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], classes, flip)


def _digits_table() -> list[list[int]]:
    """Rows of 64 pixels (0-16) and a label, read from the file scikit-learn ships.

    Read directly rather than through ``sklearn.datasets.load_digits``: importing scikit-learn adds
    seconds to every trial's start, which short trials in a study pay many times over.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                rows = [[int(float(v)) for v in line.split(",")] for line in handle if line.strip()]
            if rows and all(len(row) == 65 for row in rows):
                return rows
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in digits come with scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    pairs = zip(bunch.images, bunch.target, strict=True)
    return [[*map(int, image.flatten()), int(label)] for image, label in pairs]


def digits(image_size: int, val_fraction: float) -> Data:
    """scikit-learn's 1797 handwritten digits (8x8 grey), resized to ``image_size``; no download."""
    table = torch.tensor(_digits_table(), dtype=torch.float32)
    images = (table[:, :64] / 16.0).view(-1, 1, 8, 8)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = table[:, 64].long()
    return _make(images, labels, tuple(str(i) for i in range(10)), flip=False, val_fraction=val_fraction)


def image_folder(root: Path, image_size: int, val_fraction: float) -> Data:
    """A folder with one sub-folder of images per class (the flower_photos layout), decoded into memory.

    Images are resized to ``image_size`` squared and kept as uint8 (flower_photos at 128 pixels
    takes about 180 MB), so each epoch costs no decoding.
    """
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading an image folder needs Pillow: pip install pillow") from None
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (give a folder of class sub-folders, or 'digits')")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (index, path)
        for index, folder in enumerate(class_dirs)
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if len(class_dirs) < 2 or not files:
        raise DataError(f"{root} needs at least two class sub-folders with images in them")
    images = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(len(files), dtype=torch.long)
    log.info("decoding %d images of %d classes from %s", len(files), len(class_dirs), root)
    for i, (label, path) in enumerate(files):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        images[i] = pixels.view(image_size, image_size, 3).permute(2, 0, 1)
        labels[i] = label
    return _make(images, labels, tuple(p.name for p in class_dirs), flip=True, val_fraction=val_fraction)


def load(dataset: str, image_size: int, val_fraction: float) -> Data:
    """``digits`` for the built-in set, otherwise a path to an image folder."""
    if dataset == "digits":
        return digits(image_size, val_fraction)
    return image_folder(Path(dataset).expanduser(), image_size, val_fraction)
