"""`carcli train`: everything a training run is, from its options to its run folder.

The package's face: `train(config, reporter)` runs a job and returns a `TrainResult`; `TrainConfig`
holds its options; progress goes to a carcli.progress `Reporter` (the run's events: `EpochStart`, `Step`,
`EpochEnd`); `resume_config` reads a stopped run back for `train(..., resume=True)`; `next_steps` says
what to run on its checkpoint.

Reading order:
- config.py: every option, declared once (flags, config files, checks); torch-free
- reporting.py: the progress events, TrainResult, next_steps; torch-free
- loop.py: the run top to bottom (`train`), then its epochs
- recipe.py: how unset options are filled (data set, architecture and general defaults)
- feed.py: splits, loaders and how batches reach the device
- runtime.py: device threads and seeds, precision, EMA, DDP / torch.compile wrapping
  (compiling.py: when `--compile auto` compiles)
- steps.py: one epoch's training steps and validation over a `StepContext`
  (losses.py, optim.py: the losses, optimizers and learning-rate schedules)
- run_files.py: the run folder's files; run_state.py: the resumable state.st
- distributed.py: torchrun (ranks, broadcast, rank 0 first)
- tracking.py: MLflow / W&B tracking around a Reporter

This module imports no torch (`carcli --help` builds its options from carcli.train.config): `train` and
`resume_config` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carcli.train.config import TrainConfig
from carcli.train.reporting import EpochEnd, EpochStart, Step, TrainResult, next_steps

if TYPE_CHECKING:
    from carcli.train.loop import train
    from carcli.train.run_files import resume_config

__all__ = ["EpochEnd", "EpochStart", "Step", "TrainConfig", "TrainResult", "next_steps", "resume_config", "train"]


def __getattr__(name: str) -> Any:
    """`train` and `resume_config`, imported when first asked for (they need torch)."""
    if name == "train":
        from carcli.train.loop import train

        return train
    if name == "resume_config":
        from carcli.train.run_files import resume_config

        return resume_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
