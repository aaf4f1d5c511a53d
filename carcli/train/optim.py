"""Optimizers and learning-rate schedules.

Parameter groups: weights decay, biases and norm parameters do not; the backbone may learn at a
smaller rate than the head (discriminative learning rates). Schedules are per optimizer step:
`cosine`, `multistep` and `exponential` start with a linear warmup; `onecycle` is torch's
OneCycleLR (its own warm-up phase). Every schedule is a function of the step count alone, so a
resumed run rebuilds it by stepping it forward.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "multistep", "exponential", "onecycle")
DEFAULT_GAMMA = {"multistep": 0.1, "exponential": 0.9}
ONECYCLE_DIV = 25.0


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    backbone_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov momentum over four groups: (backbone, head) x (decayed, not decayed).

    AdamW is the fused implementation (all tensors updated in one kernel, on CPUs as on GPUs): its
    step is 3-4x faster than the default on the CPU (resnet34 14.6 against 52.8 ms on 2 cores).
    """
    groups = []
    for part, scale in (("backbone", backbone_lr_scale), ("head", 1.0)):
        params = list(getattr(model, part).parameters())
        for decayed in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decayed]
            if chosen:
                groups.append({"params": chosen, "lr": lr * scale, "weight_decay": weight_decay if decayed else 0.0})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    milestones: Sequence[int] = (),
    gamma: float | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The named per-step schedule over `epochs * steps_per_epoch` steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    total = max(1, epochs * steps_per_epoch)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=min(0.5, max(0.05, warmup_epochs / max(1, epochs))),
            div_factor=ONECYCLE_DIV,
        )
    warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)
    rate = gamma if gamma is not None else DEFAULT_GAMMA.get(name, 0.1)
    marks = sorted(m * steps_per_epoch for m in milestones)

    def decay(step: int) -> float:
        if name == "multistep":
            return rate ** sum(step >= m for m in marks)
        if name == "exponential":
            return rate ** (step / steps_per_epoch)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def factor(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else decay(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Advance a fresh schedule by `steps` optimizer steps (used when resuming)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            scheduler.step()
