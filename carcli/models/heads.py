"""Heads on pooled backbone features and the assembled model.

Every head returns `{task: logits}`; "model" (the fine class) is always there.
- `linear`  (V1): z_model = W f.
- `mtl`     (V2): z_make = A f, z_type = B f, z_model = W [f; z_make; z_type]: the coarse
                  predictions feed the fine classifier as priors.
- `mtl-aux` (V3): z_model = W f (the same parameters as `linear`); the coarse heads are
                  auxiliary losses whose gradients reach the backbone only.
A `year` task, when the data set has one, joins both multi-task heads (z_year = Y f).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from carcli.data.taxonomy import FINE
from carcli.errors import UsageError

PRIOR_TASKS = ("make", "type")


class MultiTaskHead(nn.Module):
    """One linear classifier per task; `priors` name the tasks whose logits feed the fine classifier."""

    def __init__(
        self, feature_dim: int, tasks: dict[str, int], priors: tuple[str, ...] = (), drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.priors = priors
        self.dropout = nn.Dropout(drop_rate)
        prior_width = sum(tasks[t] for t in priors)
        self.tasks = list(tasks)
        # keys are "fc_<task>": a bare "type" would clash with nn.Module.type
        self.classifiers = nn.ModuleDict(
            {
                f"fc_{task}": nn.Linear(feature_dim + (prior_width if task == FINE else 0), n)
                for task, n in tasks.items()
            }
        )

    def classifier(self, task: str) -> nn.Linear:
        """The linear layer of one task."""
        return self.classifiers[f"fc_{task}"]  # type: ignore[return-value]

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        features = self.dropout(features)
        out = {task: self.classifier(task)(features) for task in self.tasks if task != FINE}
        fine_in = torch.cat([features, *(out[t] for t in self.priors)], dim=1) if self.priors else features
        return {FINE: self.classifier(FINE)(fine_in), **out}


def _linear(feature_dim: int, tasks: dict[str, int], drop_rate: float) -> MultiTaskHead:
    return MultiTaskHead(feature_dim, {FINE: tasks[FINE]}, drop_rate=drop_rate)


def _mtl(feature_dim: int, tasks: dict[str, int], drop_rate: float) -> MultiTaskHead:
    priors = tuple(t for t in PRIOR_TASKS if t in tasks)
    if not priors:
        raise UsageError(_needs_coarse("mtl", tasks))
    return MultiTaskHead(feature_dim, tasks, priors, drop_rate)


def _mtl_aux(feature_dim: int, tasks: dict[str, int], drop_rate: float) -> MultiTaskHead:
    if len(tasks) < 2:
        raise UsageError(_needs_coarse("mtl-aux", tasks))
    return MultiTaskHead(feature_dim, tasks, (), drop_rate)


def _needs_coarse(head: str, tasks: dict[str, int]) -> str:
    return (
        f"head {head!r} needs make/body-type tasks, but this data set's class names give only "
        f"{', '.join(tasks)}; use --head linear"
    )


HEADS: dict[str, Callable[[int, dict[str, int], float], MultiTaskHead]] = {
    "linear": _linear,
    "mtl": _mtl,
    "mtl-aux": _mtl_aux,
}


def create_head(name: str, feature_dim: int, tasks: dict[str, int], drop_rate: float = 0.0) -> MultiTaskHead:
    """Build the head `name` for tasks ({task: number of classes}, "model" first)."""
    if name not in HEADS:
        raise UsageError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    if FINE not in tasks:
        raise UsageError(f"the task list has no {FINE!r} (fine class) task")
    return HEADS[name](feature_dim, tasks, drop_rate)


class CarcliModel(nn.Module):
    """A backbone (images -> pooled features) and a head (features -> {task: logits})."""

    def __init__(self, backbone: nn.Module, head: MultiTaskHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head(self.backbone(images))
