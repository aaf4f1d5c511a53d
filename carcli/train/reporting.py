"""What a training run tells its caller: progress through a `Reporter`, the `TrainResult` at the end, and
the next commands to run (`next_steps`). Torch-free: the CLI and carcli.tune read these before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from carcli.data.taxonomy import FINE
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


class Reporter(Protocol):
    """Receives progress; the CLI renders it with rich, tests may ignore it.

    `epoch_end` is called after the epoch's files and resumable state are written, so it may raise
    to end the run there (carcli.tune stops a pruned trial so); the exception leaves `train` as is.
    """

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, stats: dict[str, float]) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


class SilentReporter:
    """A Reporter that ignores everything."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, stats: dict[str, float]) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass


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
