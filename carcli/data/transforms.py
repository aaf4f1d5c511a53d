"""Train and eval transforms (torchvision.transforms.v2), from PIL RGB images to normalised tensors.

Evaluation resizes the whole image to img_size x img_size instead of the usual resize +
centre crop: in a car photo the ends (grille, lamps) carry the make, and a centre crop cuts
them off. Training uses random resized crops, horizontal flips and colour jitter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

TRAIN_SCALE = (0.35, 1.0)
JITTER = 0.2


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Random resized crop, flip and colour jitter, then normalise."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=TRAIN_SCALE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
            *_to_tensor(mean, std),
        ]
    )


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the whole image to a square, then normalise."""
    return v2.Compose([v2.Resize((img_size, img_size), antialias=True), *_to_tensor(mean, std)])
