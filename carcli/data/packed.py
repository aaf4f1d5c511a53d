"""The prepared image store behind `carcli train --cache`: photos decoded and resized once into a
memory-mapped uint8 array, so no epoch decodes a JPEG again.

Each split is stored as one `.npy` file of shape (N, height, width, 3). Evaluation stores hold every
image's evaluation view (`data.images.view_box`) squashed to the input size, as the evaluation transform
takes it. Training stores hold
the whole photo, as the per-image pipeline's random crops see it, a margin larger than the input size
and squashed to a FRAME_ASPECT landscape frame; each photo's own width / height ratio is kept beside
it (`<store>.aspects.npy`), so batch augmentation draws crops in the photo's true proportions
(`data.batch_augment`). The file name is a hash of everything that changes the pixels (paths, sizes
and modification times of the photos, boxes, shape), so an edited data set gets a fresh store and an
unchanged one is reused by every later run. Stores are written to a
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
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from carcli.data.images import Box, grow_box, open_rgb, view_box
from carcli.data.layouts import Sample
from carcli.errors import CarcliError
from carcli.files import atomic_output

TRAIN_MARGIN = 1.15  # training images are stored this much larger than the input size
FRAME_ASPECT = 1.5  # a training store's width / height: 4:3 and 3:2 photos keep every pixel row's detail
DEVICE_BATCH = 64  # photos decoded together on the device
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class StoreShape:
    """What a store keeps of each photo: its evaluation view of `aspect`, squashed to side x side (evaluation),
    or (`whole`) the whole photo squashed to side high and FRAME_ASPECT x side wide (training)."""

    side: int
    whole: bool = False
    aspect: float = 1.0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of each stored image."""
        return (round(self.side * FRAME_ASPECT) if self.whole else self.side), self.side


def store_shape(img_size: int, training: bool, view_aspect: float = 1.0) -> StoreShape:
    """The store for an input size: the whole photo a margin larger for training, the evaluation view of
    `view_aspect` at the input size for evaluation."""
    if training:
        return StoreShape(round(img_size * TRAIN_MARGIN), whole=True)
    return StoreShape(img_size, aspect=view_aspect)


class Frame(NamedTuple):
    """A whole stored photo (uint8, (3, side, FRAME_ASPECT x side)) and its true width / height; batched
    by the DataLoader into (B, 3, H, W) pixels and (B,) aspects."""

    pixels: Tensor
    aspect: float | Tensor


@dataclass
class PackedImages:
    """A split's images as one (N, height, width, 3) uint8 array (memory-mapped), their fine labels and,
    for a whole-photo store, each photo's width / height."""

    path: Path
    images: np.ndarray
    labels: list[int]
    aspects: np.ndarray | None = None


class PackedDataset:
    """A store as a map-style Dataset: (uint8 image (3, H, W) or, from a whole-photo store, its `Frame`, label),
    or (`transform(PIL image)`, label) when given, the whole photo back in its own proportions."""

    def __init__(self, store: PackedImages, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.store, self.transform = store, transform

    def __len__(self) -> int:
        return len(self.store.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = np.array(self.store.images[index])  # a copy: the map stays read-only
        label = self.store.labels[index]
        aspect = None if self.store.aspects is None else float(self.store.aspects[index])
        if self.transform is not None:
            image = Image.fromarray(pixels)
            if aspect is not None:
                image = image.resize((max(1, round(image.height * aspect)), image.height), Image.Resampling.BILINEAR)
            return self.transform(image), label
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        return (image if aspect is None else Frame(image, aspect)), label


def store_key(samples: Sequence[Sample], shape: StoreShape, crop_margin: float | None) -> str:
    """A hash of what decides the stored pixels."""
    what = [shape.side, crop_margin] + (["whole"] if shape.whole else ["view", shape.aspect])
    digest = hashlib.sha256(json.dumps(what).encode())
    for sample in samples:
        stat = sample.path.stat()
        box = sample.bbox if crop_margin is not None else None
        digest.update(json.dumps([str(sample.path.resolve()), stat.st_size, stat.st_mtime_ns, box]).encode())
    return digest.hexdigest()[:24]


def store_path(samples: Sequence[Sample], shape: StoreShape, cache_dir: Path, crop_margin: float | None = None) -> Path:
    """Where the store of `samples` in `shape` lives (whether or not it is built yet)."""
    return cache_dir / f"images-{store_key(samples, shape, crop_margin)}-{shape.side}px.npy"


def _aspects_path(path: Path) -> Path:
    return path.with_suffix(".aspects.npy")


def is_built(path: Path, shape: StoreShape) -> bool:
    """Whether the store at `path` is complete (a whole-photo store's aspects are written before it is)."""
    return path.is_file() and (not shape.whole or _aspects_path(path).is_file())


def load_or_build(
    samples: Sequence[Sample],
    shape: StoreShape,
    cache_dir: Path,
    crop_margin: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    device: torch.device | None = None,
    announce: Callable[[Path], None] | None = None,
) -> PackedImages:
    """The store of `samples` in `shape` in `cache_dir`: reused when present, else built (reporting progress).

    `device`: where JPEGs are decoded during a build (None: PIL on CPU threads; meant for CUDA).
    `announce` is called with the store's path before a build starts.
    """
    path = store_path(samples, shape, cache_dir, crop_margin)
    if not is_built(path, shape):
        if announce is not None:
            announce(path)
        _build(samples, shape, path, crop_margin, progress, threads or os.cpu_count() or 1, device)
    try:
        images = np.load(path, mmap_mode="r")
        aspects = np.load(_aspects_path(path)) if shape.whole else None
    except (OSError, ValueError) as exc:
        raise CarcliError(f"image store {path} cannot be read ({type(exc).__name__}); delete it to rebuild") from None
    width, height = shape.size
    if images.shape != (len(samples), height, width, 3):
        raise CarcliError(f"image store {path} has shape {images.shape}, not the expected one; delete it to rebuild")
    if aspects is not None and aspects.shape != (len(samples),):
        raise CarcliError(f"image store {path}: its aspects file holds {aspects.shape}; delete the store to rebuild")
    return PackedImages(path, images, [s.label for s in samples], aspects)


def _build(
    samples: Sequence[Sample],
    shape: StoreShape,
    path: Path,
    crop_margin: float | None,
    progress: Callable[[int, int], None] | None,
    threads: int,
    device: torch.device | None,
) -> None:
    width, height = shape.size
    aspects = np.ones(len(samples), dtype=np.float32)
    with atomic_output(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), height, width, 3))
        decoded = _decoded(samples, shape, crop_margin, threads, device)
        for done, (index, pixels, aspect) in enumerate(decoded, start=1):
            out[index], aspects[index] = pixels, aspect
            if progress is not None:
                progress(done, len(samples))
        out.flush()
        del out
        if shape.whole:
            with atomic_output(_aspects_path(path)) as aspects_tmp, aspects_tmp.open("wb") as file:
                np.save(file, aspects)


def _decoded(
    samples: Sequence[Sample], shape: StoreShape, crop_margin: float | None, threads: int, device: torch.device | None
) -> Iterator[tuple[int, np.ndarray, float]]:
    """(index, height x width x 3 pixels, the photo's width / height) of every sample: first those decoded on
    `device`, then the PIL ones."""

    def box(sample: Sample) -> Box | None:
        return sample.bbox if crop_margin is not None else None

    def pil_pixels(index: int) -> tuple[int, np.ndarray, float]:
        img = open_rgb(samples[index].path, shape.side, box(samples[index]), crop_margin or 0.0)
        if shape.whole:
            return index, np.asarray(img.resize(shape.size, Image.Resampling.BILINEAR)), img.width / img.height
        left, top, width, height = view_box(img.width, img.height, shape.aspect)
        view = (left, top, left + width, top + height)
        return index, np.asarray(img.resize(shape.size, Image.Resampling.BILINEAR, box=view)), 1.0

    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes and resizes without the GIL
        on_device: list[int] = []
        if device is not None:
            on_device = [i for i, ok in enumerate(pool.map(_device_decodable, (s.path for s in samples))) if ok]
        failed: list[int] = []
        for start in range(0, len(on_device), DEVICE_BATCH):
            batch = on_device[start : start + DEVICE_BATCH]
            blobs = list(pool.map(lambda i: _read_bytes(samples[i].path), batch))
            try:
                pixels = _device_pixels(blobs, [box(samples[i]) for i in batch], crop_margin, shape, device)
            except RuntimeError:  # a JPEG variant the device decoder refuses: PIL takes the batch
                failed += batch
                continue
            yield from ((i, image, aspect) for i, (image, aspect) in zip(batch, pixels, strict=True))
        rest = sorted(set(range(len(samples))) - set(on_device) | set(failed))
        yield from pool.map(pil_pixels, rest)


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
    blobs: list[Tensor], boxes: list[Box | None], margin: float | None, shape: StoreShape, device: torch.device
) -> list[tuple[np.ndarray, float]]:
    """JPEG files decoded on `device`, each cropped to its box (if any) and, unless `shape.whole`, its
    evaluation view, resized to the shape's size; with each the photo's width / height."""
    decoded = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    out_hw = shape.size[::-1]  # (height, width), as interpolate takes it
    resized, aspects = [], []
    for image, box in zip(decoded, boxes, strict=True):
        height, width = image.shape[-2:]
        if box is not None:
            x1, y1, x2, y2 = grow_box(box, margin or 0.0, width, height)
            image, height, width = image[:, y1:y2, x1:x2], y2 - y1, x2 - x1
        if not shape.whole:
            left, top, view_w, view_h = (round(v) for v in view_box(width, height, shape.aspect))
            image = image[:, top : top + view_h, left : left + view_w]
        aspects.append(width / height if shape.whole else 1.0)
        resized.append(F.interpolate(image[None].float(), out_hw, mode="bilinear", antialias=True, align_corners=False))
    pixels = torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()  # one copy back
    return list(zip(pixels.numpy(), aspects, strict=True))
