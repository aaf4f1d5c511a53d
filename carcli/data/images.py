"""Reading images robustly, finding unreadable ones, and the torch Dataset over samples.

Grayscale, palette, CMYK, 16-bit and RGBA images are converted to RGB (transparency over
white); large JPEGs are decoded at reduced scale when only a small image is needed (PIL's
draft mode). `image_problem` is the one check of every command that reads images: it decodes a file
once, at the smallest JPEG scale, so a truncated, corrupt or bomb file (or one in a pixel format that
cannot become RGB) is found and listed before any batch instead of crashing an epoch.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from carcli.data.layouts import Sample
from carcli.errors import CarcliError

# Large photos are fine; PIL's default bomb guard (89 Mpx) stays in force at 4x that size. Between that
# and twice it PIL only warns: `_check_pixels` refuses that range itself, so the warning is not shown.
Image.MAX_IMAGE_PIXELS = 4 * 89_478_485
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


Box = tuple[int, int, int, int]


class UnreadableImage(CarcliError):
    """An image file that cannot be decoded; `why` says how, in a few words."""

    def __init__(self, path: Path, why: str) -> None:
        named = isinstance(path, str | os.PathLike)  # an in-memory upload (BytesIO) has no name to show
        super().__init__(f"{path}: {why}" if named else why)
        self.path, self.why = path, why


def open_rgb(path: Path, min_size: int | None = None, box: Box | None = None, margin: float = 0.0) -> Image.Image:
    """Open `path` as an RGB image, cropped to `box` (x1, y1, x2, y2) grown by `margin` of its size when given.

    JPEGs are decoded at reduced scale when the result (the crop, if any) keeps `min_size` on its shorter side.
    Any decoding failure (missing, truncated, bomb, corrupt data, odd mode) is an UnreadableImage.
    """
    try:
        with Image.open(path) as img:
            _check_pixels(img)
            return _decode(img, min_size, box, margin)
    except Exception as exc:  # PIL raises many error types for broken files
        raise UnreadableImage(path, why_unreadable(exc)) from exc


def _decode(img: Image.Image, min_size: int | None, box: Box | None, margin: float) -> Image.Image:
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


def _check_pixels(img: Image.Image) -> None:
    """PIL only warns between its limit and twice it; carcli refuses all of that range too."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ValueError(f"the image is {width} x {height} pixels")
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width} x {height} pixels")


def why_unreadable(exc: BaseException) -> str:
    """A few words for the user on why an image failed to decode."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too many pixels (over {Image.MAX_IMAGE_PIXELS:,}): a decompression bomb?"
    if isinstance(exc, zlib.error):
        return "corrupt compressed data"
    if isinstance(exc, MemoryError):
        return "too large to decode in the memory available"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot be read ({(exc.strerror or str(exc)).lower()})"
    if isinstance(exc, OSError | EOFError | SyntaxError) or "truncated" in str(exc):
        return "corrupt or truncated image"
    if isinstance(exc, ValueError) and ("mode" in str(exc) or "conversion" in str(exc)):
        return f"unsupported pixel format ({exc})"
    return f"corrupt image ({type(exc).__name__})"


def view_box(width: int, height: int, aspect: float = 1.0) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the part of a width x height image that evaluation looks at: the centre
    crop whose long side is at most `aspect` times its short side (1: the centre square), squashed to the
    square input by `view_resize`."""
    short = min(width, height)
    long = min(max(width, height), aspect * short)
    view_w, view_h = (long, short) if width >= height else (short, long)
    return (width - view_w) / 2, (height - view_h) / 2, view_w, view_h


def view_resize(width: int, height: int, size: int, aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) to resize a width x height image to so that its centre size x size crop is its
    `view_box` squashed to a square (with `aspect` 1: the shorter side resized to `size`, as torchvision's
    Resize(size) computes it)."""
    _, _, view_w, view_h = view_box(width, height, aspect)
    return (size, int(size * height / view_h)) if width <= height else (int(size * width / view_w), size)


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


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None when it decodes: the one check every command uses.

    Decodes at the smallest JPEG scale and converts to RGB, so truncation, corrupt data, decompression
    bombs and pixel formats that cannot become RGB are all found here, before any batch is built.
    """
    try:
        with Image.open(path) as img:
            _check_pixels(img)
            img.draft("RGB", (1, 1))
            img.load()
            to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - PIL raises many error types for broken files
        return why_unreadable(exc)
    return None


def image_problems(paths: Sequence[Path], threads: int = 4) -> dict[Path, str]:
    """{path: why} for the paths that cannot be decoded (missing, truncated, corrupt, a bomb, not an image)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        found = list(pool.map(image_problem, paths, chunksize=64))
    return {p: why for p, why in zip(paths, found, strict=True) if why is not None}


def find_unreadable(paths: Sequence[Path], threads: int = 4) -> list[Path]:
    """The paths that cannot be decoded (missing, truncated, corrupt, a bomb, not an image)."""
    return list(image_problems(paths, threads))


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
            except UnreadableImage:
                continue
            return self.transform(img), sample.label
        raise CarcliError("no readable image left in the data set (files changed or removed during the run?)")
