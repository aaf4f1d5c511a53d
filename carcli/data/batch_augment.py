"""Augmentation of whole uint8 batches on the training device (the GPU when there is one).

Used with the prepared store (`--cache`): a batch arrives as (B, 3, H, W) uint8 (for training, whole
photos squashed to one frame, with each photo's true width / height: `data.packed.Frame`), is moved to
the device in channels-last order (the order the model trains in), and every sample gets its own
random resized crop, drawn in the photo's true proportions as torchvision's RandomResizedCrop draws
it (an antialiased bilinear resize of its box, in uint8 on a CPU, whose vectorised uint8 kernel is
several times faster than float resizing), horizontal flip, colour jitter (brightness, contrast,
saturation), grayscale and random erasing, then normalisation. The parts follow the same `Augment`
recipe as the per-image pipeline; affine, RandAugment and TrivialAugment have no batched form here
(`batchable` says so) and keep the per-image pipeline. Draws come from a generator seeded per (seed,
epoch, batch), so a resumed run repeats them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from carcli.data.packed import Frame
from carcli.data.transforms import Augment

GRAY = (0.299, 0.587, 0.114)
RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10  # draws per sample before the centre-crop fallback, as torchvision's RandomResizedCrop


def batchable(augment: Augment) -> bool:
    """Whether every part of `augment` has a batched form."""
    per_image_only = augment.affine_degrees or augment.affine_translate or augment.affine_scale
    return not (per_image_only or augment.affine_shear or augment.auto_augment != "none")


class BatchAugment:
    """uint8 batches -> normalised float batches, augmented (training) or only resized (evaluation)."""

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None,
        device: torch.device,
        seed: int = 0,
        view_aspect: float = 1.0,
    ) -> None:
        self.img_size, self.augment, self.device, self.seed = img_size, augment, device, seed
        self.view_aspect = view_aspect  # crops of scale 1 (no random crop) are the evaluation view of this aspect
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, images: Tensor | Frame, key: tuple[int, int] = (0, 0)) -> Tensor:
        """Augment a batch (pixels, or whole photos as a `Frame` batch); `key` (epoch, batch index) seeds its draws."""
        pixels, aspects = (images.pixels, images.aspect) if isinstance(images, Frame) else (images, None)
        x = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.device.type != "cpu":
            x = x.float()  # GPUs resize floats; a CPU resizes uint8 (0..255 either way)
        widths = self._true_widths(x, aspects)
        if self.augment is None:
            return self._normalised(self._centre(x, widths).float().div_(255))
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + key[0] * 10_007 + key[1])
        a = self.augment
        x = self._resized_crop(x, widths, a.crop_scale, g) if a.crop_scale < 1 else self._centre(x, widths)
        if a.hflip:
            flip = self._uniform(len(x), g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        x = x.float().div_(255)
        if a.color_jitter:
            x = self._jitter(x, a.color_jitter, g)
        if a.grayscale:
            gray = self._uniform(len(x), g) < a.grayscale
            x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        x = self._normalised(x)
        if a.random_erasing:
            x = self._erase(x, a.random_erasing, g)
        return x

    def _normalised(self, x: Tensor) -> Tensor:
        """(x - mean) / std in place (an out-of-place broadcast would leave channels-last order, and is slower)."""
        return x.sub_(self.mean).div_(self.std)

    def _true_widths(self, x: Tensor, aspects: Tensor | None) -> Tensor | None:
        """Each photo's width in stored rows (its width / height x H); None when the images are the photos' own
        squares (evaluation stores)."""
        return None if aspects is None else aspects.to(self.device, torch.float32) * x.shape[-2]

    def _centre(self, x: Tensor, widths: Tensor | None) -> Tensor:
        """Each photo's evaluation view (`data.images.view_box`) at the input size, as evaluation sees it;
        evaluation stores hold it already."""
        if widths is None:
            same = x.shape[-1] == self.img_size and x.shape[-2] == self.img_size
            return x if same else _resize(x, self.img_size)
        return self._cut(x, widths, *_view_boxes(widths, x.shape[-2], self.view_aspect))

    def _uniform(self, n: int, g: torch.Generator, low: float = 0.0, high: float = 1.0) -> Tensor:
        return torch.rand(n, generator=g, device=self.device) * (high - low) + low

    def _resized_crop(self, x: Tensor, widths: Tensor | None, min_scale: float, g: torch.Generator) -> Tensor:
        """A random resized crop per sample, drawn as torchvision's RandomResizedCrop draws it in the photo's
        true proportions: up to CROP_TRIES (area share in [min_scale, 1], aspect ratio 3/4..4/3) for one that
        fits, else the centre crop of the photo at the nearest allowed aspect ratio (on photos wider than 4:3,
        often: the 4:3 evaluation view)."""
        n, _, height, width = x.shape
        widths = torch.full((n,), float(width), device=self.device) if widths is None else widths
        area = self._uniform(n * CROP_TRIES, g, min_scale, 1.0).view(n, -1) * (height * widths)[:, None]
        ratio = torch.exp(self._uniform(n * CROP_TRIES, g, math.log(RATIO[0]), math.log(RATIO[1]))).view(n, -1)
        tried_w, tried_h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        fits = (tried_w <= widths[:, None]) & (tried_h <= height)
        first = fits.float().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
        w, h = tried_w.gather(1, first)[:, 0], tried_h.gather(1, first)[:, 0]
        x0, y0 = self._uniform(n, g) * (widths - w), self._uniform(n, g) * (height - h)
        found = fits.any(1)
        fallback = _view_boxes(widths, height, RATIO[1])  # the centre crop at the nearest ratio: the 4:3 view
        box = [torch.where(found, drawn, centred) for drawn, centred in zip((x0, y0, w, h), fallback, strict=True)]
        return self._cut(x, widths, *box)

    def _cut(self, x: Tensor, widths: Tensor, x0: Tensor, y0: Tensor, w: Tensor, h: Tensor) -> Tensor:
        """Boxes given in true proportions (columns of `widths` per photo) cut from the stored images and
        resized to the input size."""
        scale = x.shape[-1] / widths  # stored columns per true column
        x0, w = x0 * scale, w * scale
        boxes = torch.stack([x0.floor(), y0.floor(), w.round().clamp(min=1), h.round().clamp(min=1)], dim=1)
        crops = [
            _resize(x[i : i + 1, :, top : top + box_h, left : left + box_w], self.img_size)
            for i, (left, top, box_w, box_h) in enumerate(boxes.int().tolist())  # one transfer from a GPU
        ]
        return torch.cat(crops)

    def _jitter(self, x: Tensor, strength: float, g: torch.Generator) -> Tensor:
        """Brightness, contrast and saturation factors drawn from [1 - strength, 1 + strength] per sample."""
        low, high = max(0.0, 1 - strength), 1 + strength
        brightness, contrast, saturation = (self._uniform(len(x), g, low, high).view(-1, 1, 1, 1) for _ in range(3))
        x = (x * brightness).clamp_(0, 1)
        mean = _gray(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean).clamp_(0, 1)
        gray = _gray(x)
        return ((x - gray) * saturation + gray).clamp_(0, 1)

    def _erase(self, x: Tensor, p: float, g: torch.Generator) -> Tensor:
        """Random erasing: with probability p, a rectangle (2-33 % of the area) set to 0 (the mean colour)."""
        n, _, height, width = x.shape
        area = self._uniform(n, g, 0.02, 0.33) * height * width
        ratio = torch.exp(self._uniform(n, g, math.log(0.3), math.log(1 / 0.3)))
        h = torch.sqrt(area * ratio).clamp(max=height)
        w = torch.sqrt(area / ratio).clamp(max=width)
        top = self._uniform(n, g) * (height - h)
        left = self._uniform(n, g) * (width - w)
        rows = torch.arange(height, device=self.device).view(1, -1, 1)
        cols = torch.arange(width, device=self.device).view(1, 1, -1)
        inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
        inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))
        inside = inside & (self._uniform(n, g) < p).view(-1, 1, 1)
        return x.masked_fill(inside.unsqueeze(1), 0.0)


def _resize(x: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize to size x size (uint8 stays uint8, rounded)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _gray(x: Tensor) -> Tensor:
    weights = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _view_boxes(widths: Tensor, height: int, aspect: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x0, y0, w, h) of each photo's centre crop whose long side is at most `aspect` times its short side
    (`data.images.view_box`), in true proportions: `widths` columns, `height` rows."""
    longest = widths.clamp(max=height) * aspect
    landscape = widths >= height
    w = torch.where(landscape, widths.clamp(max=longest), widths)
    h = torch.where(landscape, torch.full_like(widths, height), longest.clamp(max=height))
    return (widths - w) / 2, (height - h) / 2, w, h
