"""The prepared image store behind `carcli train --cache`: photos decoded and resized once into a
memory-mapped uint8 array, so no epoch decodes a JPEG again.

Each split is stored as one `.npy` file of shape (N, side, side, 3): every image's centre square,
as the evaluation transform takes it (training stores a margin larger so random crops keep
detail, evaluation exactly the input size). The file name is a hash of everything that changes the
pixels (paths, sizes and modification times of the photos, boxes, side), so an edited data set
gets a fresh store and an unchanged one is reused by every later run. Stores are written to a
temporary name and renamed when complete: an interrupted build never leaves a store to trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from carcli.data.images import open_rgb
from carcli.data.layouts import Sample
from carcli.errors import CarcliError
from carcli.files import atomic_output

TRAIN_MARGIN = 1.15  # training images are stored this much larger than the input size


def store_side(img_size: int, training: bool) -> int:
    """The stored square side for an input size: a margin larger for training, exact for evaluation."""
    return round(img_size * TRAIN_MARGIN) if training else img_size


@dataclass
class PackedImages:
    """A split's images as one (N, side, side, 3) uint8 array (memory-mapped) and their fine labels."""

    path: Path
    images: np.ndarray
    labels: list[int]


class PackedDataset:
    """A store as a map-style Dataset: (uint8 image (3, side, side), label), or `transform(PIL image)` when given."""

    def __init__(self, store: PackedImages, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.store, self.transform = store, transform

    def __len__(self) -> int:
        return len(self.store.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = np.array(self.store.images[index])  # a copy: the map stays read-only
        label = self.store.labels[index]
        if self.transform is not None:
            return self.transform(Image.fromarray(pixels)), label
        return torch.from_numpy(pixels).permute(2, 0, 1), label


def store_key(samples: Sequence[Sample], side: int, crop_margin: float | None) -> str:
    """A hash of what decides the stored pixels."""
    digest = hashlib.sha256(json.dumps([side, crop_margin]).encode())
    for sample in samples:
        stat = sample.path.stat()
        box = sample.bbox if crop_margin is not None else None
        digest.update(json.dumps([str(sample.path.resolve()), stat.st_size, stat.st_mtime_ns, box]).encode())
    return digest.hexdigest()[:24]


def store_path(samples: Sequence[Sample], side: int, cache_dir: Path, crop_margin: float | None = None) -> Path:
    """Where the store of `samples` at `side` px lives (whether or not it is built yet)."""
    return cache_dir / f"images-{store_key(samples, side, crop_margin)}-{side}px.npy"


def load_or_build(
    samples: Sequence[Sample],
    side: int,
    cache_dir: Path,
    crop_margin: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> PackedImages:
    """The store of `samples` at `side` px in `cache_dir`: reused when present, else built (reporting progress)."""
    path = store_path(samples, side, cache_dir, crop_margin)
    if not path.is_file():
        _build(samples, side, path, crop_margin, progress, threads or os.cpu_count() or 1)
    images = np.load(path, mmap_mode="r")
    if images.shape != (len(samples), side, side, 3):
        raise CarcliError(f"image store {path} has shape {images.shape}, not the expected one; delete it to rebuild")
    return PackedImages(path, images, [s.label for s in samples])


def _build(
    samples: Sequence[Sample],
    side: int,
    path: Path,
    crop_margin: float | None,
    progress: Callable[[int, int], None] | None,
    threads: int,
) -> None:
    def load(sample: Sample) -> np.ndarray:
        box = sample.bbox if crop_margin is not None else None
        img = open_rgb(sample.path, side, box, crop_margin or 0.0)
        return np.asarray(ImageOps.fit(img, (side, side), Image.Resampling.BILINEAR))

    with atomic_output(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), side, side, 3))
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes and resizes without the GIL
            for done, pixels in enumerate(pool.map(load, samples), start=1):
                out[done - 1] = pixels
                if progress is not None:
                    progress(done, len(samples))
        out.flush()
        del out
