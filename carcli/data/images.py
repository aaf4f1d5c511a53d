"""Reading images robustly, finding unreadable ones, and the torch Dataset over samples.

Grayscale, palette, CMYK, 16-bit and RGBA images are converted to RGB (transparency over
white); large JPEGs are decoded at reduced scale when only a small image is needed (PIL's
draft mode). `find_unreadable` decodes every file once, at the smallest JPEG scale, so a
truncated or corrupt file is found before training instead of crashing an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from carcli.data.layouts import Sample

# Large photos are fine; PIL's default bomb guard (89 Mpx) stays in force at 4x that size.
Image.MAX_IMAGE_PIXELS = 4 * 89_478_485


Box = tuple[int, int, int, int]


def open_rgb(path: Path, min_size: int | None = None, box: Box | None = None, margin: float = 0.0) -> Image.Image:
    """Open `path` as an RGB image, cropped to `box` (x1, y1, x2, y2) grown by `margin` of its size when given.

    JPEGs are decoded at reduced scale when the result (the crop, if any) keeps `min_size` on its shorter side.
    """
    with Image.open(path) as img:
        width, height = img.size
        crop = grow_box(box, margin, width, height) if box else None
        if min_size and img.format == "JPEG":
            zoom = 1.0 if crop is None else max(width / (crop[2] - crop[0]), height / (crop[3] - crop[1]))
            img.draft("RGB", (math.ceil(min_size * zoom), math.ceil(min_size * zoom)))
        if crop is not None:
            sx, sy = img.size[0] / width, img.size[1] / height
            img = img.crop((crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy))
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def centre_square(width: int, height: int) -> tuple[float, float, float]:
    """(left, top, side) of the centre square of a width x height image: the part evaluation looks at."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side


def grow_box(box: Box, margin: float, width: int, height: int) -> Box:
    """`box` grown by `margin` times its width/height on every side, clipped to the image (never empty)."""
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, math.ceil(x2 + dx)), min(height, math.ceil(y2 + dy))
    if right - left < 2 or bottom - top < 2:
        return (0, 0, width, height)
    return (left, top, right, bottom)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white."""
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except Exception:  # noqa: BLE001 - PIL raises many error types for broken files
        return False
    return True


def find_unreadable(paths: Sequence[Path], threads: int = 4) -> list[Path]:
    """The paths that cannot be decoded (missing, truncated, corrupt, not an image)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        ok = list(pool.map(_readable, paths, chunksize=64))
    return [p for p, good in zip(paths, ok, strict=True) if not good]


class ImageDataset:
    """Samples -> (transformed image, fine label). Works as a map-style torch Dataset.

    A file that fails to decode after the up-front check (changed on disk mid-run) is replaced by
    the next sample, so an epoch never crashes; `find_unreadable` keeps this rare. With `crop_margin`
    set, samples that have a bounding box are cropped to it (grown by that share of its size).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any],
        min_size: int,
        crop_margin: float | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.min_size = min_size
        self.crop_margin = crop_margin

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.samples)):
            sample = self.samples[(index + offset) % len(self.samples)]
            try:
                box = sample.bbox if self.crop_margin is not None else None
                img = open_rgb(sample.path, self.min_size, box, self.crop_margin or 0.0)
            except OSError:
                continue
            return self.transform(img), sample.label
        raise OSError("no readable image left in the data set")
