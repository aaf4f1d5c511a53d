"""What a `carcli tune` folder holds besides its trials: trials.csv, best.toml, history.png, importance.png.

Everything is read back from the study (so any machine sharing it writes the same files) and
written atomically: an interrupted write never leaves a torn file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carcli.files import csv_text, write_text

if TYPE_CHECKING:
    import optuna

ERROR_ATTR = "error"  # set on a trial that failed by itself (FAIL without it: stopped from outside)
COUNTED = {"complete", "pruned", "running", "waiting", "fail"}


@dataclass
class TrialRow:
    """One trial as trials.csv and the end table show it."""

    number: int
    state: str  # complete, pruned, fail, running, waiting, or interrupted (stopped from outside, not counted)
    value: float | None
    params: dict[str, Any]
    top1: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    error: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def counted(self) -> bool:
        """Whether the trial counts toward --trials (finished, or running in some process)."""
        return self.state in COUNTED


def trial_row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    attrs = trial.user_attrs
    state = trial.state.name.lower()
    if state == "fail" and ERROR_ATTR not in attrs:
        state = "interrupted"
    return TrialRow(
        trial.number, state, trial.value, dict(trial.params), dict(attrs.get("top1", {})),
        int(attrs.get("epochs", 0)), float(attrs.get("seconds", 0.0)), str(attrs.get(ERROR_ATTR, "")),
        dict(attrs.get("config", {})),
    )  # fmt: skip


def write_outputs(study: optuna.Study, out: Path, metric: str, plots: bool = True) -> list[Path]:
    """trials.csv and best.toml (when a trial completed), and with `plots` history.png and importance.png."""
    rows = [trial_row(t) for t in study.get_trials()]
    written = [out / "trials.csv"]
    write_text(written[0], trials_csv(rows))
    done = [row for row in rows if row.state == "complete" and row.value is not None]
    if done:
        best = max(done, key=lambda row: row.value or 0.0)
        written.append(out / "best.toml")
        write_text(written[-1], best_toml(best, metric, len(rows)))
    if plots and done:
        written += _plots(study, out, metric, len(done))
    return written


def trials_csv(rows: list[TrialRow]) -> str:
    """One row per trial: number, state, the searched values, validation top-1 per task, epochs, seconds."""
    params = list(dict.fromkeys(name for row in rows for name in row.params))
    tasks = list(dict.fromkeys(task for row in rows for task in row.top1))
    header = ["number", "state", *params, *(f"top1_{task}" for task in tasks), "epochs", "seconds", "error"]
    return csv_text(header, [
        [
            row.number, row.state, *(row.params.get(name, "") for name in params),
            *(f"{row.top1[task]:.4f}" if task in row.top1 else "" for task in tasks), row.epochs, row.seconds,
            row.error,
        ]
        for row in rows
    ])  # fmt: skip


def best_toml(row: TrialRow, metric: str, trials: int) -> str:
    """The best trial's full train configuration as a `carcli train --config` file."""
    lines = [
        f"# carcli tune: the best of {trials} trials, trial {row.number}: "
        f"validation top-1 of {metric} {100 * (row.value or 0.0):.2f} %",
        "# reproduce it with: carcli train --config best.toml",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in row.config.items() if value is not None]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def _plots(study: optuna.Study, out: Path, metric: str, completed: int) -> list[Path]:
    """Optuna's matplotlib history and (from two completed trials) parameter importance plots."""
    from carcli.plots import pyplot, save_figure

    pyplot()  # the Agg backend, before Optuna's matplotlib charts are imported
    from optuna.visualization import matplotlib as optuna_plots

    charts = [("history.png", lambda: optuna_plots.plot_optimization_history(study, target_name=f"{metric} top-1"))]
    if completed >= 2 and study.best_trial.params:
        charts.append(("importance.png", lambda: optuna_plots.plot_param_importances(study)))
    written = []
    for name, draw in charts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                figure = draw().figure
            except (ValueError, RuntimeError):  # importance needs varied values; say nothing, try next time
                continue
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        save_figure(figure, out / name)
        written.append(out / name)
    return written
