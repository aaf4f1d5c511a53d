"""Experiment tracking: a training run's parameters, per-epoch metrics and files sent to MLflow or W&B.

`tracking(config, reporter)` wraps the Reporter that training reports to: at the end of each epoch
the wrapper logs that epoch's figures of every task (and, the first time, the run's resolved
parameters), then passes the record on. When the run ends, `curves.png` and `best.st` are logged
as artifacts and the tracked run is closed (failed when training raised). Nothing is opened
before the first epoch ends, so a refused configuration leaves no empty tracked run behind.

- mlflow: `--log-uri` (a tracking server, `sqlite:` or `file:` URI); by default a SQLite store
  beside the run folders (`runs/mlflow.db`, artifacts in `runs/mlartifacts`), since this MLflow's
  plain file store is in maintenance mode.
- wandb: offline (files in the run folder, `wandb sync` uploads them later) unless the user is
  logged in; `WANDB_MODE` wins; `--log-uri` is a W&B server's URL.
"""

from __future__ import annotations

import logging
import netrc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from carcli.progress import Event, Reporter
from carcli.train.config import TrainConfig, check_logger
from carcli.train.reporting import EpochEnd
from carcli.train.run_files import flat_record

EXPERIMENT = "carcli"  # the MLflow experiment and the W&B project
ARTIFACTS = ("curves.png", "best.st")
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def run_params(config: TrainConfig) -> dict[str, str]:
    """The resolved configuration as strings (lists and dicts as their text)."""
    return {key: str(value) for key, value in asdict(config).items()}


class Tracker(Protocol):
    def start(self, config: TrainConfig) -> str: ...
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def finish(self, run_dir: Path, ok: bool) -> None: ...


class MLflowTracker:
    """A run in an MLflow experiment, written through MlflowClient (no global active-run state)."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self.client: Any = None
        self.run_id = ""

    def start(self, config: TrainConfig) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines about creating tables would break our output
            logging.getLogger(name).setLevel(logging.WARNING)
        run_dir = Path(config.out or ".")
        runs = run_dir.resolve().parent
        uri = self.uri or f"sqlite:///{runs / MLFLOW_DB}"
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(EXPERIMENT, (runs / MLFLOW_ARTIFACTS).as_uri() if not self.uri else None)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [Param(key, value[:6000]) for key, value in run_params(config).items()]
        self.client.log_batch(self.run_id, params=params)
        return f"MLflow run {self.run_id} in {uri} (experiment {EXPERIMENT})"

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])

    def finish(self, run_dir: Path, ok: bool) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def wandb_mode() -> str:
    """WANDB_MODE when set; else online when the user is logged in (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


class WandbTracker:
    """A W&B run whose files live in the run folder (`wandb/`)."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self.run: Any = None

    def start(self, config: TrainConfig) -> str:
        import wandb

        run_dir = Path(config.out or ".")
        mode = wandb_mode()
        settings = wandb.Settings(silent=True, console="off", **({"base_url": self.uri} if self.uri else {}))
        self.run = wandb.init(
            project=EXPERIMENT, name=run_dir.name, dir=str(run_dir), config=run_params(config), mode=mode,
            settings=settings,
        )  # fmt: skip
        where = f"; upload it with: wandb sync {self.run.dir.removesuffix('/files')}" if mode == "offline" else ""
        return f"W&B run {self.run.id} ({mode}){where}"

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch)

    def finish(self, run_dir: Path, ok: bool) -> None:
        import wandb

        artifact = wandb.Artifact(f"{self.run.name}-model", type="model")
        files = [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]
        for path in files:
            artifact.add_file(str(path))
        if files:
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if ok else 1)


class TrackingReporter:
    """A Reporter that logs each `EpochEnd` record to a tracker, then hands everything on to `inner`."""

    def __init__(self, inner: Reporter, tracker: Tracker, config: TrainConfig) -> None:
        self.inner = inner
        self.tracker = tracker
        self.config = config
        self.started = False

    def info(self, message: str) -> None:
        self.inner.info(message)

    def warn(self, message: str) -> None:
        self.inner.warn(message)

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        return self.inner.stage(description, total, unit)

    def progress(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            self._log(event.record)
        self.inner.progress(event)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.started:  # the configuration is resolved (defaults filled, run folder made) by now
            self.inner.info(f"tracking: {self.tracker.start(self.config)}")
            self.started = True
        metrics = {name: float(v) for name, v in flat_record(record).items() if name != "epoch" and v is not None}
        self.tracker.log_epoch(int(record["epoch"]), metrics)


@contextmanager
def tracking(config: TrainConfig, reporter: Reporter) -> Iterator[Reporter]:
    """`reporter`, wrapped to track the run when `config.log` names a tracker; closes the tracked run at the end."""
    check_logger(config.log, config.log_uri)
    if config.log == "none":
        yield reporter
        return
    tracker: Tracker = MLflowTracker(config.log_uri) if config.log == "mlflow" else WandbTracker(config.log_uri)
    wrapped = TrackingReporter(reporter, tracker, config)
    ok = False
    try:
        yield wrapped
        ok = True
    finally:
        if wrapped.started:
            tracker.finish(Path(config.out or "."), ok)
