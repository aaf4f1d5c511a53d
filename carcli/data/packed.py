"""The prepared image store behind `carcli train --cache`: photos decoded and resized once into a
memory-mapped uint8 array, so no epoch decodes a JPEG again.

Each split is stored as one `.npy` file of shape (N, side, side, 3): every image's centre square,
as the evaluation transform takes it (training stores a margin larger so random crops keep
detail, evaluation exactly the input size). The file name is a hash of everything that changes the
pixels (paths, sizes and modification times of the photos, boxes, side), so an edited data set
gets a fresh store and an unchanged one is reused by every later run. Stores are written to a
temporary name and renamed when complete: an interrupted build never leaves a store to trust.

The build decodes with PIL's draft mode on CPU threads (the JPEG decoder scales by 1/2 to 1/8 as
it decodes, the fastest CPU path for full-size photos: benchmarks/decode.py). Given a CUDA device,
plain RGB or grayscale JPEGs are decoded there instead, a batch at a time with nvjpeg
(`torchvision.io.decode_jpeg`), and cropped and resized on the GPU; other files (PNG, CMYK, EXIF-
rotated photos), and a batch the device decoder refuses, keep the PIL path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from carcli.data.images import Box, centre_square, grow_box, open_rgb
from carcli.data.layouts import Sample
from carcli.errors import CarcliError
from carcli.files import atomic_output

TRAIN_MARGIN = 1.15  # training images are stored this much larger than the input size
DEVICE_BATCH = 64  # photos decoded together on the device
EXIF_ORIENTATION = 0x0112


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
    device: torch.device | None = None,
) -> PackedImages:
    """The store of `samples` at `side` px in `cache_dir`: reused when present, else built (reporting progress).

    `device`: where JPEGs are decoded during a build (None: PIL on CPU threads; meant for CUDA).
    """
    path = store_path(samples, side, cache_dir, crop_margin)
    if not path.is_file():
        _build(samples, side, path, crop_margin, progress, threads or os.cpu_count() or 1, device)
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
    device: torch.device | None,
) -> None:
    with atomic_output(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), side, side, 3))
        for done, (index, pixels) in enumerate(_decoded(samples, side, crop_margin, threads, device), start=1):
            out[index] = pixels
            if progress is not None:
                progress(done, len(samples))
        out.flush()
        del out


def _decoded(
    samples: Sequence[Sample], side: int, crop_margin: float | None, threads: int, device: torch.device | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, side x side x 3 pixels) of every sample: first those decoded on `device`, then the PIL ones."""

    def box(sample: Sample) -> Box | None:
        return sample.bbox if crop_margin is not None else None

    def pil_pixels(index: int) -> np.ndarray:
        img = open_rgb(samples[index].path, side, box(samples[index]), crop_margin or 0.0)
        return np.asarray(ImageOps.fit(img, (side, side), Image.Resampling.BILINEAR))

    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes and resizes without the GIL
        on_device: list[int] = []
        if device is not None:
            on_device = [i for i, ok in enumerate(pool.map(_device_decodable, (s.path for s in samples))) if ok]
        failed: list[int] = []
        for start in range(0, len(on_device), DEVICE_BATCH):
            batch = on_device[start : start + DEVICE_BATCH]
            blobs = list(pool.map(lambda i: _read_bytes(samples[i].path), batch))
            try:
                pixels = _device_pixels(blobs, [box(samples[i]) for i in batch], crop_margin, side, device)
            except RuntimeError:  # a JPEG variant the device decoder refuses: PIL takes the batch
                failed += batch
                continue
            yield from zip(batch, pixels, strict=True)
        rest = sorted(set(range(len(samples))) - set(on_device) | set(failed))
        yield from zip(rest, pool.map(pil_pixels, rest), strict=True)


def _device_decodable(path: Path) -> bool:
    """A JPEG in RGB or grayscale without an EXIF rotation: what the device decoder takes as PIL would."""
    try:
        with Image.open(path) as img:
            plain = img.format == "JPEG" and img.mode in ("RGB", "L")
            return plain and img.getexif().get(EXIF_ORIENTATION, 1) == 1
    except OSError:
        return False


def _read_bytes(path: Path) -> Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def _device_pixels(
    blobs: list[Tensor], boxes: list[Box | None], margin: float | None, side: int, device: torch.device
) -> list[np.ndarray]:
    """JPEG files decoded on `device`, each cropped to its box (if any) and centre square, resized to side x side."""
    decoded = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    resized = []
    for image, box in zip(decoded, boxes, strict=True):
        height, width = image.shape[-2:]
        if box is not None:
            x1, y1, x2, y2 = grow_box(box, margin or 0.0, width, height)
            image, height, width = image[:, y1:y2, x1:x2], y2 - y1, x2 - x1
        left, top, size = (round(v) for v in centre_square(width, height))
        square = image[None, :, top : top + size, left : left + size].float()
        resized.append(F.interpolate(square, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
    pixels = torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()  # one copy back
    return list(pixels.numpy())
