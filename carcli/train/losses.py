"""Training losses: per-task cross-entropy (label smoothing, class weights, soft targets), complement entropy.

Targets per task are class indices, or class probabilities when Mixup/CutMix mixed the batch; both come
from the fine labels through the taxonomy's lookups (`fine_to_tensors`, `task_targets`).
`complement_entropy` is the COT term (Chen et al., "Complement Objective Training", ICLR 2019):
it flattens the predicted distribution over the wrong classes, which helps fine-grained
classes that differ in small details; `--loss cot` adds it to each task's cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from carcli.data.taxonomy import FINE, Taxonomy

LOSSES = ("ce", "cot")


def complement_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Minus the mean normalised entropy of the non-target probabilities (in [-1, 0]; lower is flatter)."""
    classes = logits.shape[1]
    if classes < 3:
        return logits.new_zeros(())
    hard = targets if targets.ndim == 1 else targets.argmax(1)
    probs = logits.float().softmax(1)
    truth = probs.gather(1, hard[:, None])
    others = probs / (1 - truth).clamp_min(1e-7)
    mask = torch.ones_like(probs).scatter_(1, hard[:, None], 0.0)
    entropy = -(others * others.clamp_min(1e-12).log() * mask).sum(1)
    return -(entropy / math.log(classes - 1)).mean()


def multitask_loss(
    logits: dict[str, Tensor],
    targets: dict[str, Tensor],
    weights: dict[str, float] | None = None,
    label_smoothing: float = 0.0,
    class_weights: dict[str, Tensor] | None = None,
    complement: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum over the predicted tasks of weight * loss; also the per-task losses.

    Each task's loss is cross-entropy (optionally class-weighted), plus the complement-entropy
    term when `complement` is set.
    """
    weights = weights or {}
    class_weights = class_weights or {}
    per_task: dict[str, Tensor] = {}
    for task, z in logits.items():
        loss = F.cross_entropy(z, targets[task], weight=class_weights.get(task), label_smoothing=label_smoothing)
        if complement:
            loss = loss + complement_entropy(z, targets[task])
        per_task[task] = loss
    total = sum(weights.get(task, 1.0) * loss for task, loss in per_task.items())
    return total, per_task  # type: ignore[return-value]


def inverse_frequency_weights(labels: Tensor, classes: int) -> Tensor:
    """Per-class loss weights proportional to 1 / frequency, with mean 1 over the classes present."""
    counts = torch.bincount(labels, minlength=classes).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return weights * (counts > 0).sum() / weights.sum()


def fine_to_tensors(taxonomy: Taxonomy, device: torch.device) -> dict[str, Tensor]:
    """For each task, a lookup from fine label to that task's label (identity for the fine task)."""
    maps = {FINE: torch.arange(len(taxonomy.tasks[FINE]))}
    maps.update({task: torch.tensor(index) for task, index in taxonomy.fine_to.items()})
    return {task: m.to(device) for task, m in maps.items()}


def task_targets(labels: Tensor, fine_to: dict[str, Tensor], tasks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each task's targets from fine labels: indices, or class probabilities for mixed (soft) fine labels."""
    if labels.ndim == 1:
        return {task: fine_to[task][labels] for task in tasks}
    return {task: labels @ F.one_hot(fine_to[task]).to(labels.dtype) for task in tasks}


def task_class_weights(labels: Tensor, fine_to: dict[str, Tensor], tasks: dict[str, int]) -> dict[str, Tensor]:
    """`--balance weights`: inverse-frequency loss weights for every task, from the training labels."""
    return {task: inverse_frequency_weights(fine_to[task][labels], tasks[task]) for task in tasks}
