"""`carcli tune`: a hyper-parameter search (Optuna) whose trials are real carcli training runs.

`tune(request, reporter)` opens (or continues) an Optuna study, in a SQLite file inside the tune
folder or in any RDB storage (`--storage postgresql://...`, shared by many machines), and runs
trials until the study holds `trials` finished ones. Each trial samples the searched options
(carcli.search_space) over the fixed ones, trains with `carcli.train.train` in this process (run
folder `trials/NNN/`), reports the validation top-1 of the metric task after every epoch, and is
stopped by the pruner when hopeless. A trial that fails (non-finite loss, out of memory) is recorded
as failed; one stopped by Ctrl-C or a kill is marked failed without counting toward `trials`, so a
rerun of the same command replaces it. The outputs (tune_files) are rewritten after every trial.
Progress goes to a carcli.progress `Reporter` as the events below (`SearchStart`, `TrialStart`, ...).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError, Interrupted, UsageError
from carcli.progress import Event, Reporter, SilentReporter
from carcli.search_space import Dimension, check_against_fixed, default_space, read_space, sample
from carcli.train.config import TrainConfig, check_config, make_config
from carcli.train.reporting import EpochEnd
from carcli.tune_files import ERROR_ATTR, TrialRow, trial_row, write_outputs

if TYPE_CHECKING:
    import optuna

TUNES_DIR = Path("tunes")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S, GRACE_S = 30, 120  # a trial whose process stopped beating this long ago is failed by the next one
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class TuneRequest:
    """What `carcli tune` was asked: the fixed train options and how to search."""

    options: dict[str, Any]  # train options given as flags (None: not given)
    trials: int
    config_file: Path | None = None
    space_file: Path | None = None
    out: Path | None = None
    storage: str | None = None
    study: str | None = None
    timeout: float | None = None
    pruner: str = "median"
    metric: str = FINE


@dataclass
class TuneResult:
    """The study after this process stopped adding trials."""

    out: Path
    study: str
    storage: str
    metric: str
    rows: list[TrialRow]
    ran: int  # trials this process ran
    files: list[Path]

    @property
    def finished(self) -> list[TrialRow]:
        return [row for row in self.rows if row.counted and row.state != "running"]


@dataclass(frozen=True)
class SearchStart(Event):
    """This process starts adding trials to a study that has `finished` of the `total` asked for."""

    total: int
    finished: int
    best: float | None


@dataclass(frozen=True)
class TrialStart(Event):
    """Trial `number` starts training with the sampled `params`."""

    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class TrialEpoch(Event):
    """Trial `number` ended an epoch with `record` (validation top-1 per task)."""

    number: int
    record: dict[str, Any]


@dataclass(frozen=True)
class TrialEnd(Event):
    """A trial ended (complete, pruned or failed) and was recorded; `best` is the study's best value now."""

    row: TrialRow
    best: float | None


class _TrialReporter(SilentReporter):
    """The train Reporter of one trial: reports each epoch's top-1 to Optuna and prunes when it says so.

    Its info lines (model, sizes, folder) are dropped: they would repeat for every trial."""

    def __init__(self, trial: optuna.Trial, metric: str, outer: Reporter) -> None:
        self.trial, self.metric, self.outer = trial, metric, outer
        self.records: list[dict[str, Any]] = []

    def warn(self, message: str) -> None:
        self.outer.warn(f"trial {self.trial.number}: {message}")

    def progress(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            self._epoch_end(event.record)

    def _epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        if self.metric not in record["val_top1"]:
            raise UsageError(f"--metric {self.metric}: this model reports {', '.join(record['val_top1'])}")
        self.records.append(record)
        self.trial.report(record["val_top1"][self.metric], record["epoch"])
        self.outer.progress(TrialEpoch(self.trial.number, record))
        if self.trial.should_prune():  # train() has written this epoch's files and state before calling us
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")


def tune(request: TuneRequest, reporter: Reporter) -> TuneResult:
    """Run the search as `request` says (see the module docstring); returns the study's trials."""
    optuna = _import_optuna()
    base, space, out = _prepare(request)
    storage_url = _with_driver(request.storage) if request.storage else f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = request.study or "carcli-tune"
    study = _open_storage(optuna, storage_url, study_name, request, base, out)
    reporter.info(f"study {study_name!r} in {_safe_url(storage_url)}; searching {'; '.join(map(_describe, space))}")
    _fail_abandoned(optuna, study)
    runner = _Runner(optuna, study, storage_url, base, space, request, out, reporter)
    try:
        runner.run()
    except (KeyboardInterrupt, Interrupted):
        files = write_outputs(study, out, request.metric)
        done = sum(row.counted and row.state != "running" for row in map(trial_row, study.get_trials()))
        raise Interrupted(
            f"tune stopped: {done} of {request.trials} trials finished, the stopped trial does not count; "
            f"results in {files[0].parent}; continue with the same command and --out {out}"
        ) from None
    files = write_outputs(study, out, request.metric)
    rows = [trial_row(t) for t in study.get_trials()]
    return TuneResult(out, study_name, _safe_url(storage_url), request.metric, rows, runner.ran, files)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CarcliError('carcli tune needs Optuna: pip install "carcli[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # we beat ourselves around ask/tell
    return optuna


def _prepare(request: TuneRequest) -> tuple[TrainConfig, list[Dimension], Path]:
    """The checked fixed configuration, the space and the tune folder; every mistake before any training."""
    if request.trials < 1:
        raise UsageError("--trials must be at least 1")
    if request.pruner not in PRUNERS:
        raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}")
    if request.timeout is not None and request.timeout <= 0:
        raise UsageError("--timeout must be positive (seconds)")
    if request.storage and not request.study:
        raise UsageError("--storage needs --study NAME: every machine joins the study by that name")
    base = make_config(request.options, request.config_file)
    base.data, base.weights = (str(Path(p).resolve()) if p else None for p in (base.data, base.weights))
    head_is_linear = base.head == "linear" or (base.head is None and not base.pretrained_start)
    if head_is_linear and request.metric != FINE:
        raise UsageError(f"--metric {request.metric} needs --head mtl or mtl-aux (the linear head predicts {FINE})")
    if base.data is not None and not Path(base.data).exists():
        raise CarcliError(f"--data {base.data} not found")
    fixed = {name for name, value in request.options.items() if value is not None}
    if request.space_file is not None:
        space = read_space(request.space_file)
        check_against_fixed(space, fixed, str(request.space_file))
    else:
        from carcli.config import read_config_file

        in_file = set(read_config_file(request.config_file)) if request.config_file else set()
        space = default_space(bool(base.weights or base.pretrained), fixed | in_file)
    for values in _corner_values(space):  # every end of every range makes a valid configuration
        check_config(TrainConfig(**{**asdict(base), **values}))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = request.out or TUNES_DIR / f"{stamp}-{base.arch.replace(':', '-')}"
    out.mkdir(parents=True, exist_ok=True)
    return base, space, out


def _corner_values(space: list[Dimension]) -> Iterator[dict[str, Any]]:
    for dim in space:
        for value in dim.choices or (dim.low, dim.high):
            yield {dim.name: int(value) if dim.integer else value}


def _describe(dim: Dimension) -> str:
    return dim.describe()


def _with_driver(url: str) -> str:
    """`postgresql://` with the PostgreSQL driver that is installed (psycopg 3, else psycopg2)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, scheme in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return scheme + url.removeprefix("postgresql")
    raise CarcliError("--storage postgresql://... needs a PostgreSQL driver: pip install psycopg2-binary")


def _safe_url(url: str) -> str:
    """The storage URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}@{tail}"


def _open_storage(optuna: Any, url: str, name: str, request: TuneRequest, base: TrainConfig, out: Path) -> optuna.Study:
    """The study in the storage at `url`, opened by one process at a time (creating the tables races)."""
    import sqlalchemy.exc

    try:
        with study_lock(url, name, out):
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            return _open_study(optuna, storage, name, request, base)
    except ImportError:
        raise CarcliError(f"--storage {_safe_url(url)}: its database driver is not installed") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CarcliError(f"--storage {_safe_url(url)}: cannot open the study: {reason}") from None


def _open_study(optuna: Any, storage: Any, name: str, request: TuneRequest, base: TrainConfig) -> optuna.Study:
    """Create the study or load it (a rerun); the sampler is seeded from --seed (and, when shared, the process)."""
    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        existing = 0
    seed = base.seed + 1000 * existing  # a continued study does not replay its first trials' values
    if request.storage:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000  # machines differ
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, request.trials // 3)))
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=_pruner(optuna, request.pruner, base),
        direction="maximize", load_if_exists=True,
    )  # fmt: skip
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", request.metric)
    elif metric != request.metric:
        raise UsageError(f"study {name!r} maximises the top-1 of {metric!r}; rerun it with --metric {metric}")
    return study


def _pruner(optuna: Any, name: str, base: TrainConfig) -> Any:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.epochs or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def _fail_abandoned(optuna: Any, study: optuna.Study) -> None:
    """Mark as failed (not counted) the running trials of processes that are gone: here, or silent too long."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(int(attrs.get("pid", -1))):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Runner:
    """This process's share of the study: reserve a trial number, train it, record it; until done."""

    def __init__(
        self,
        optuna: Any,
        study: optuna.Study,
        url: str,
        base: TrainConfig,
        space: list[Dimension],
        request: TuneRequest,
        out: Path,
        reporter: Reporter,
    ) -> None:
        self.optuna, self.study, self.url, self.base, self.space = optuna, study, url, base, space
        self.request, self.out, self.reporter = request, out, reporter
        self.ran, self.failures = 0, 0
        self.started = time.monotonic()

    def run(self) -> None:
        rows = [trial_row(t) for t in self.study.get_trials()]
        counted = [r for r in rows if r.counted and r.state != "running"]
        self.reporter.progress(SearchStart(self.request.trials, len(counted), _best(rows)))
        while not self._out_of_time():
            trial = self._reserve()
            if trial is None:
                return
            self._run_trial(trial)

    def _out_of_time(self) -> bool:
        timeout = self.request.timeout
        if timeout is not None and time.monotonic() - self.started >= timeout:
            self.reporter.info(f"--timeout {timeout:g} s reached; no new trial started")
            return True
        return False

    def _reserve(self) -> optuna.Trial | None:
        """A new trial if the study holds fewer than --trials counted ones (finished or running), atomically."""
        with study_lock(self.url, self.study.study_name, self.out):
            self.optuna.storages.fail_stale_trials(self.study)
            if sum(trial_row(t).counted for t in self.study.get_trials(deepcopy=False)) >= self.request.trials:
                return None
            trial = self.study.ask()
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            return trial

    def _run_trial(self, trial: optuna.Trial) -> None:
        from carcli.train import train

        params = sample(self.space, trial, self.base)
        config = TrainConfig(**{**asdict(self.base), **params, "out": str(self.out / "trials" / f"{trial.number:03d}")})
        self.reporter.progress(TrialStart(trial.number, params))
        trial_reporter = _TrialReporter(trial, self.request.metric, self.reporter)
        started = time.monotonic()
        state, error = self.optuna.trial.TrialState.COMPLETE, None
        with _heartbeat(self.study, trial):
            try:
                train(config, trial_reporter)
            except self.optuna.TrialPruned:
                state = self.optuna.trial.TrialState.PRUNED
            except (KeyboardInterrupt, Interrupted, UsageError):
                self._record(trial, config, trial_reporter, started, self.optuna.trial.TrialState.FAIL, None)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded; the search goes on
                state, error = self.optuna.trial.TrialState.FAIL, _one_line(exc)
        self._record(trial, config, trial_reporter, started, state, error)

    def _record(
        self,
        trial: optuna.Trial,
        config: TrainConfig,
        trial_reporter: _TrialReporter,
        started: float,
        state: Any,
        error: str | None,
    ) -> None:
        records = trial_reporter.records
        best = max(records, key=lambda r: r["val_top1"][self.request.metric]) if records else None
        trial.set_user_attr("config", {k: v for k, v in asdict(config).items() if k != "out"})
        trial.set_user_attr("run_dir", config.out)
        trial.set_user_attr("epochs", len(records))
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("top1", best["val_top1"] if best else {})
        if error is not None:
            trial.set_user_attr(ERROR_ATTR, error)
            self.reporter.warn(f"trial {trial.number} failed: {error}")
        value = best["val_top1"][self.request.metric] if best and state.name == "COMPLETE" else None
        self.study.tell(trial, value, state=state)
        self.ran += 1
        self.failures = self.failures + 1 if error else 0
        write_outputs(self.study, self.out, self.request.metric, plots=False)
        rows = [trial_row(t) for t in self.study.get_trials()]
        self.reporter.progress(TrialEnd(next(r for r in rows if r.number == trial.number), _best(rows)))
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            raise CarcliError(f"{self.failures} trials in a row failed, the last with: {error}")


def _best(rows: list[TrialRow]) -> float | None:
    values = [row.value for row in rows if row.value is not None]
    return max(values) if values else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, CarcliError) else text[0]


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S seconds while it trains (other processes see it alive)."""
    storage, stop = study._storage, threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def study_lock(url: str, name: str, out: Path) -> Iterator[None]:
    """Serialise opening the study and "count the trials, then ask for one" between processes: a PostgreSQL
    advisory lock on a shared server, a file lock in --out otherwise (enough for SQLite, which is local;
    other shared databases run unlocked and may rarely get an extra trial)."""
    if url.startswith("postgresql"):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine, key = sqlalchemy.create_engine(url, poolclass=NullPool), zlib.crc32(name.encode()) % 2**31
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
        return
    import fcntl

    with open(out / "study.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
