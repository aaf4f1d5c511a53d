"""What a training run tells its caller: its progress events (`EpochStart`, `Step`, `EpochEnd`, sent to a
carcli.progress `Reporter`), the `TrainResult` at the end, and the next commands to run (`next_steps`).
Torch-free: the CLI and carcli.tune read these before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carcli.data.taxonomy import FINE
from carcli.progress import Event
from carcli.train.config import TrainConfig

LOW_SCRATCH_TOP1 = 0.5  # below this fine top-1, a from-scratch run on real data gets the pretrained-weights hint


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_epoch: int
    best_top1: dict[str, float]
    epochs: int
    parameters: int
    images_per_s: float
    seconds: float
    records: list[dict[str, Any]]
    stopped_early: bool = False
    hints: list[str] = field(default_factory=list)  # what to do next, as lines for the user


@dataclass(frozen=True)
class EpochStart(Event):
    """Epoch `epoch` of `epochs` starts; it has `steps` training steps."""

    epoch: int
    epochs: int
    steps: int


@dataclass(frozen=True)
class Step(Event):
    """A training step is done: the epoch's running loss, top-1 and images/s so far."""

    loss: float
    top1: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd(Event):
    """An epoch ended with `record` (a line of metrics.jsonl).

    Sent after the epoch's files and resumable state are written, so the reporter may raise to end the
    run there (carcli.tune stops a pruned trial so); the exception leaves `train` as is.
    """

    record: dict[str, Any]


def next_steps(config: TrainConfig, result: TrainResult, on_demo: bool) -> list[str]:
    """The commands to run on this run's checkpoint; advice when a from-scratch run on real data scored low."""
    best = result.run_dir / "best.st"
    hints = [f"next: carcli eval {best}", f"      carcli predict IMAGES... --model {best}"]
    top1 = result.best_top1.get(FINE)
    from_scratch = not (config.pretrained or config.weights)
    if from_scratch and not on_demo and top1 is not None and top1 < LOW_SCRATCH_TOP1:
        hints.append(
            f"hint: {FINE} top-1 {100 * top1:.1f}% from random weights; fine-grained classes need ImageNet "
            "features: add --pretrained (downloads timm's weights) or --weights FILE (docs/train.md)"
        )
    return hints
