"""Train and eval transforms (torchvision.transforms.v2), from PIL RGB images to normalised tensors.

Evaluation looks at the centre crop whose long side is at most `aspect` times its short side (4/3 by
default: the widest crop RandomResizedCrop draws in training, and the crop it falls back to on wide
photos) squashed to the square input: on the shared Stanford Cars photos (median 1.88:1) it scored 6-8
points of top-1 above the centre square and 9-10 above squashing the whole photo (docs/benchmarks.md).
Aspect 1 is the centre square (checkpoints written before the view had an aspect).

Training augmentation is built from an `Augment` recipe: a named preset whose parts (flip,
random affine, colour jitter, grayscale, RandAugment / TrivialAugment, random erasing) can each
be overridden. Mixup and CutMix act on whole batches: `batch_mixer` builds them. `view_transform` is a
checkpoint's own evaluation view (from its metadata), with the test-time augmentation views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from carcli.data.images import view_resize

AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
TTA_CROP = 0.875  # the five TTA crops each cover this share of the side of a slightly larger resize


@dataclass(frozen=True)
class Augment:
    """Every part of the training augmentation; a zero (or "none") turns that part off."""

    crop_scale: float = 0.35  # smallest area share of a random resized crop; 1 = whole image
    hflip: bool = True
    affine_degrees: float = 0.0
    affine_translate: float = 0.0  # share of width/height
    affine_scale: float = 0.0  # +- share
    affine_shear: float = 0.0  # degrees
    color_jitter: float = 0.2  # brightness, contrast and saturation
    grayscale: float = 0.0  # probability
    auto_augment: str = "none"
    random_erasing: float = 0.0  # probability
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0


PRESETS: dict[str, Augment] = {
    "none": Augment(crop_scale=1.0, hflip=False, color_jitter=0.0),
    "light": Augment(crop_scale=0.5, color_jitter=0.1),
    "standard": Augment(),
    "strong": Augment(
        crop_scale=0.25,
        affine_degrees=10.0,
        affine_translate=0.1,
        affine_shear=5.0,
        color_jitter=0.3,
        grayscale=0.05,
        auto_augment="trivialaugment",
        random_erasing=0.25,
        mixup=0.2,
        cutmix=1.0,
    ),
}
AUGMENT_PARTS = tuple(f.name for f in fields(Augment))


def resolve_augment(preset: str, overrides: dict[str, object]) -> Augment:
    """A preset with the parts the user set explicitly (None values keep the preset's)."""
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], augment: Augment | None = None, view_aspect: float = 1.0
) -> v2.Compose:
    """The per-image training pipeline `augment` describes (default: the standard preset), then normalise; crops
    of scale 1 are the evaluation view of `view_aspect`."""
    a = augment or PRESETS["standard"]
    crop = v2.RandomResizedCrop(img_size, scale=(a.crop_scale, 1.0), antialias=True)
    steps: list[v2.Transform] = [crop] if a.crop_scale < 1 else [CentreView(img_size, view_aspect)]  # as eval sees it
    if a.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if a.affine_degrees or a.affine_translate or a.affine_scale or a.affine_shear:
        steps.append(
            v2.RandomAffine(
                degrees=a.affine_degrees,
                translate=(a.affine_translate, a.affine_translate) if a.affine_translate else None,
                scale=(1 - a.affine_scale, 1 + a.affine_scale) if a.affine_scale else None,
                shear=a.affine_shear or None,
            )
        )
    if a.auto_augment == "randaugment":
        steps.append(v2.RandAugment())
    elif a.auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    if a.color_jitter:
        steps.append(v2.ColorJitter(brightness=a.color_jitter, contrast=a.color_jitter, saturation=a.color_jitter))
    if a.grayscale:
        steps.append(v2.RandomGrayscale(p=a.grayscale))
    steps += _to_tensor(mean, std)
    if a.random_erasing:
        steps.append(v2.RandomErasing(p=a.random_erasing))
    return v2.Compose(steps)


@dataclass(frozen=True)
class CentreView:
    """A PIL image's evaluation view (`carcli.data.images.view_box`) at size x size: the image resized so that
    the view becomes that square (`view_resize`, bilinear, antialiased), then the centre square cut."""

    size: int
    aspect: float = 1.0

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = view_resize(img.width, img.height, self.size, self.aspect)
        resized = v2.functional.resize(img, [height, width], antialias=True)
        return v2.functional.center_crop(resized, [self.size, self.size])


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], aspect: float = 1.0) -> v2.Compose:
    """The evaluation view of `aspect` at img_size x img_size, normalised."""
    return v2.Compose([CentreView(img_size, aspect), *_to_tensor(mean, std)])


def view_transform(
    size: int, mean: Sequence[float], std: Sequence[float], tta: bool = False, aspect: float = 1.0
) -> Callable[[Any], Tensor]:
    """A model's eval preprocessing at `size`; with `tta`, a (6, 3, S, S) stack of views (mirrors are added later).

    The views are the whole view and the four corner and centre crops of the view at S / 0.875.
    """
    plain = eval_transform(size, mean, std, aspect)
    if not tta:
        return plain
    larger = eval_transform(round(size / TTA_CROP), mean, std, aspect)
    five = v2.FiveCrop(size)
    return lambda img: torch.stack([plain(img), *five(larger(img))])


def batch_mixer(augment: Augment, num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """Mixup and/or CutMix on a batch: (images, labels) -> (mixed images, soft fine labels); None when both are off.

    With both on, each batch gets one of the two at random (as timm does).
    """
    mixers: list[v2.Transform] = []
    if augment.mixup:
        mixers.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
    if augment.cutmix:
        mixers.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
