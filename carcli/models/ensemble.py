"""The ensemble module: several loaded models behind one forward pass (`EnsembleModel`), and `predicted_tasks`.

`EnsembleModel` takes an unnormalised [0, 1] image batch at the largest member's size; each member
resizes it to its own size (bilinear, antialiased) and normalises it with its own mean/std, and the
ensemble returns, for every task all members predict, the log of the weighted mean of the members'
softmax probabilities. Its metadata therefore says img_size = the largest, mean 0 and std 1, and
every consumer (eval, predict, export) treats it like a plain model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carcli.checkpoint_meta import CheckpointMeta

EPS = 1e-12  # probabilities are clamped to this before their log


def predicted_tasks(model: nn.Module) -> list[str]:
    """The tasks a loaded model returns logits for, in its own order."""
    tasks = getattr(model, "tasks", None)
    return list(tasks) if tasks is not None else list(model.head.tasks)  # type: ignore[union-attr]


class EnsembleModel(nn.Module):
    """Members with their own input size and normalisation; returns {task: log of weighted mean probability}."""

    def __init__(self, members: Sequence[nn.Module], metas: Sequence[CheckpointMeta], weights: Sequence[float]) -> None:
        super().__init__()
        member_tasks = [predicted_tasks(m) for m in members]
        self.tasks = [t for t in member_tasks[0] if all(t in tasks for tasks in member_tasks)]
        self.sizes = [meta.img_size for meta in metas]
        for i, (member, meta) in enumerate(zip(members, metas, strict=True)):
            self.add_module(f"member{i}", member)
            self.register_buffer(f"mean{i}", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1), False)
            self.register_buffer(f"std{i}", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), False)

    def member_inputs(self, images: Tensor, i: int) -> Tensor:
        """`images` as member i expects them: resized to its size, normalised with its mean and std."""
        size = self.sizes[i]
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (images - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        mixed: dict[str, Tensor] = {}
        for i in range(len(self.sizes)):
            logits = getattr(self, f"member{i}")(self.member_inputs(images, i))
            for task in self.tasks:
                share = self.weights[i] * logits[task].float().softmax(1)
                mixed[task] = mixed[task] + share if task in mixed else share
        return {task: probs.clamp_min(EPS).log() for task, probs in mixed.items()}
