"""Everything carcli prints: the rich consoles, error lines, training progress and result tables.

This is the only module that writes to the terminal; library modules report through the one
`carcli.progress.Reporter` protocol, which the progress renderers here implement for each command:
`TrainProgress` (train, prune's fine-tuning), `StageProgress` (eval, predict), `FetchProgress`, `TuneProgress`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from carcli.progress import Event
from carcli.train.reporting import EpochEnd, EpochStart, Step
from carcli.tune import SearchStart, TrialEnd, TrialEpoch, TrialStart

if TYPE_CHECKING:
    from pathlib import Path

    from carcli.data.fetch import DataSetInfo, FetchResult
    from carcli.evaluate import EvalResult
    from carcli.predict import PredictResult
    from carcli.train import TrainResult
    from carcli.tune import TuneResult
    from carcli.tune_files import TrialRow as TuneRow

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_stopped(message: str) -> None:
    """The line for a run the user stopped (Ctrl-C): not an error, so not labelled as one."""
    err_console.print(f"[yellow]stopped:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_info(message: str) -> None:
    console.print(escape(message), highlight=False, soft_wrap=True)


def plural(count: int, noun: str) -> str:
    """'1 file', '2 files'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class _Bars:
    """A carcli.progress Reporter drawn as rich bars on `out`, live only on a terminal, with info and warning
    lines printed above them: a bar a stage; the subclasses draw the events of their command."""

    blank: ClassVar[dict[str, str]] = {}  # the task fields that a subclass's columns read, before any value

    def __init__(self, *columns: str | ProgressColumn, out: Console, transient: bool = False) -> None:
        self.live = out.is_terminal
        self.bars = Progress(*columns, console=out, transient=transient)

    def __enter__(self: _B) -> _B:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    def info(self, message: str) -> None:
        self.bars.console.print(escape(message), highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.bars.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        task_id = self.bars.add_task(description, total=total, **self.blank)
        return lambda done: self.bars.update(task_id, completed=done)

    def progress(self, event: Event) -> None:
        pass


_B = TypeVar("_B", bound=_Bars)


class _RunBars(_Bars):
    """The bars of a long run on stdout (train, tune): count, `fields`, elapsed time and optionally the ETA.

    Stopped out of a terminal too, where rich then ends the output with an empty line."""

    def __init__(self, fields: str, eta: bool = False) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(fields)]
        columns += [TimeElapsedColumn(), *((TextColumn("ETA"), TimeRemainingColumn()) if eta else ())]
        super().__init__(*columns, out=console)
        self.task_id: Any = None

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()


class TrainProgress(_RunBars):
    """Training progress: an overall bar for the run (ETA to the end) and a bar per epoch, then a validation line.

    When stdout is not a terminal (a log file, `| tee`, CI) there are no live bars: a plain line
    reports the running figures every 10 % of an epoch or 30 s, and each epoch ends with one line
    that carries the training figures too, so logs stay readable and show that the run is alive.
    """

    PLAIN_EVERY_S = 30.0
    PLAIN_EVERY_SHARE = 0.1
    blank: ClassVar[dict[str, str]] = {"stats": ""}

    def __init__(self) -> None:
        super().__init__("{task.fields[stats]}", eta=True)
        self.run_id: Any = None
        self.epochs = 0
        self.epoch = 0
        self.steps = 0
        self.done = 0
        self.plain_at = (0.0, 0)  # (time, step) of the last plain progress line
        self.started = 0.0  # when the run's first epoch started

    def progress(self, event: Event) -> None:
        match event:
            case EpochStart():
                self._epoch_start(event.epoch, event.epochs, event.steps)
            case Step():
                self._step(f"loss {event.loss:.3f}  top1 {_percent(event.top1)}  {event.images_per_s:.0f} img/s")
            case EpochEnd():
                self._epoch_end(event.record)

    def _epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs, self.epoch, self.steps, self.done = epochs, epoch, steps, 0
        if self.run_id is None:  # the whole run, from this epoch on (a resumed run starts later)
            self.started = time.perf_counter()
            self.run_id = self.bars.add_task("run", total=steps * (epochs - epoch + 1), stats="")
        elif self.task_id is not None:
            self.bars.update(self.task_id, visible=False)
        self.task_id = self.bars.add_task(f"epoch {epoch}/{epochs}", total=steps, stats="")
        self.plain_at = (time.perf_counter(), 0)

    def _step(self, figures: str) -> None:
        self.done += 1
        self.bars.update(self.task_id, advance=1, stats=figures)
        self.bars.update(self.run_id, advance=1)
        if not self.live and self._plain_line_due():
            run = self.bars.tasks[self.run_id]
            elapsed = time.perf_counter() - self.started
            eta = _clock(elapsed * ((run.total or 0) - run.completed) / run.completed)
            self.info(f"epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps}: {figures}, run ETA {eta}")
            self.plain_at = (time.perf_counter(), self.done)

    def _plain_line_due(self) -> bool:
        since, at_step = self.plain_at
        every = max(1, round(self.steps * self.PLAIN_EVERY_SHARE))
        due = self.done - at_step >= every or time.perf_counter() - since >= self.PLAIN_EVERY_S
        return due and self.done < self.steps  # the epoch's last step is reported by its end line

    def _epoch_end(self, record: dict[str, Any]) -> None:
        tasks = "  ".join(f"{task} {_percent(v)}" for task, v in record["val_top1"].items())
        val = "no validation" if record["val_loss"] is None else f"val loss {record['val_loss']:.3f}  top-1: {tasks}"
        line = f"epoch {record['epoch']}/{self.epochs} {val}  ({record['seconds']:.1f} s)"
        if not self.live:
            line = (
                f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.3f}"
                f"  top1 {_percent(record['train_top1'])}  {record['images_per_s']:.0f} img/s | {val}"
                f"  ({record['seconds']:.1f} s)"
            )
        self.bars.console.print(line, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    """'1:02:03' or '2:03'."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_train_summary(result: TrainResult) -> None:
    """The end-of-run table (a row per figure, so any number of tasks fits 80 columns), the files, what to do next."""
    rows = [
        ("best epoch", f"{result.best_epoch}/{result.epochs}"),
        *((f"{task} top-1", _percent(v)) for task, v in result.best_top1.items()),
        ("parameters", f"{result.parameters / 1e6:.2f} M"),
        ("images/s", f"{result.images_per_s:.0f}"),
        ("wall time", f"{result.seconds:.0f} s"),
    ]
    render_table("training finished", ("", "best epoch's value"), rows)
    files = [name for name in RUN_OUTPUTS if (result.run_dir / name).exists()]
    print_info(f"run folder {result.run_dir}: {', '.join(files)}")
    for hint in result.hints:
        print_info(hint)


RUN_OUTPUTS = ("best.st", "last.st", "metrics.jsonl", "metrics.csv", "curves.png")  # listed after training


def render_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], left: Collection[int] = (0,)
) -> None:
    """A plain table whose columns are right-aligned except those numbered in `left` (default: the first)."""
    table = _table(title, columns, left)
    for row in rows:
        table.add_row(*row)
    console.print(table)


class StageProgress(_Bars):
    """Progress of eval/predict on stderr (so stdout stays clean for --json): info lines, warnings, one bar a stage."""

    def __init__(self) -> None:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        super().__init__(*columns, out=err_console, transient=True)


def print_json_line(obj: Any) -> None:
    """One compact JSON object on its own line of stdout, nothing else (machine-readable output)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _table(title: str | None, columns: Sequence[str], left: Collection[int]) -> Table:
    """An empty table whose columns are right-aligned except those numbered in `left`.

    On a narrow terminal the left (name, path) columns keep their width and the others wrap first; a
    word that still does not fit folds onto the next line: nothing is ever cut short with an ellipsis.
    """
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i in left else "right", no_wrap=i in left, overflow="fold")
    return table


def render_eval(result: EvalResult) -> None:
    """The tables of `carcli eval`: metrics per task, hierarchy consistency, the most confused pairs, the files."""
    report = result.report
    console.print(
        f"[bold]{escape(report['checkpoint'])}[/] on {plural(report['n_images'], 'image')} ({report['split']}) "
        f"of {escape(report['data'])} ({report['seconds']:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    tasks = report["tasks"]
    crop = any("plain_top1" in m for m in tasks.values())
    rows = [
        [
            task if m["source"] == "head" else f"{task} (from fine)",
            str(m["classes"]),
            *(_percent(m[k]) for k in ("top1", "top5", "macro_precision", "macro_recall", "macro_f1")),
            f"{m['loss']:.3f}",
            _percent(m.get("ece")),
            *([_percent(m["plain_top1"])] if crop else []),
        ]
        for task, m in tasks.items()
    ]
    columns = ["task", "classes", "top-1", "top-5", "precision", "recall", "F1", "loss", "ECE"]
    render_table("metrics (macro averages over classes)", [*columns, *(["top-1 w/o crop"] if crop else [])], rows)
    hierarchy = [(task, m) for task, m in tasks.items() if "agreement" in m]
    if hierarchy:  # only heads of their own can disagree with the fine prediction mapped up
        render_table(
            "hierarchy: each head against the predicted model's own make, type, year (the fine answer mapped up)",
            ("task", "head top-1", "mapped-up top-1", "head agrees with it"),
            [(t, _percent(m["top1"]), _percent(m["implied_top1"]), _percent(m["agreement"])) for t, m in hierarchy],
        )
    if "hierarchy" in report:  # issue 14: hierarchy-consistent answers
        h = report["hierarchy"]
        console.print(
            f"hierarchy-consistent model top-1 {_percent(h['top1'])} (fine head alone {_percent(h['plain_top1'])}; "
            f"heads agree on {_percent(h['heads_agree'])} of the images){' - used' if h['used'] else ''}",
            highlight=False,
        )
    if result.most_confused:
        title = f"most confused pairs (top {len(result.most_confused)})"
        table = _table(title, ("true class", "predicted as", "images", "share"), left={0, 1})
        for pair in result.most_confused:
            table.add_row(pair["true"], pair["predicted"], str(pair["count"]), _percent(pair["share"]))
        console.print(table)
    if "calibration" in report:
        c = report["calibration"]
        render_table(
            f"calibration: a temperature per task, fitted on {c['fitted_on']['images']} val images",
            ("task", "temperature", "ECE before", "ECE after"),
            [
                (t, f"{v:.3f}", _percent(c["ece_before"].get(t)), _percent(c["ece_after"].get(t)))
                for t, v in c["temperatures"].items()
            ],
        )
        console.print(f"temperatures stored in {escape(c['checkpoint'])}")
    if result.submission_top1 is not None:
        console.print(f"submission scored by the devkit rule: top-1 {_percent(result.submission_top1)}")
    console.print(f"wrote {', '.join(escape(p.name) for p in result.files)} to {escape(str(result.out_dir))}")


def render_predictions(result: PredictResult) -> None:
    """A table per image: the top-k fine classes, then make, body type, year and modernity when there are any."""
    for p in result.predictions:
        console.print(f"[bold]{escape(p.image)}[/]", highlight=False, soft_wrap=True)
        table = _table(None, ("#", "class", "probability"), left={1})
        for rank, item in enumerate(p.top_k, start=1):
            table.add_row(str(rank), item["label"], _percent(item["score"]))
        coarse = [f"{task} {a['label']} ({_percent(a['score'])})" for task, a in p.coarse.items() if a is not None]
        year = p.coarse.get("year") or {}
        if "expected" in year:
            coarse.append(f"expected year {year['expected']:.1f}")
        if p.modernity is not None:
            coarse.append(f"modernity {p.modernity:.2f}")
        console.print(table)
        if coarse:
            console.print("  ·  ".join(coarse), highlight=False, soft_wrap=True)
    if result.files:
        console.print(
            f"wrote {plural(len(result.files), 'file')}: {escape(', '.join(str(f) for f in result.files[:3]))}"
            + (" ..." if len(result.files) > 3 else "")
        )


def _amount(done: float, unit: str) -> str:
    return filesize.decimal(int(done)) if unit == "B" else f"{int(done):,} {unit}"


class _AmountColumn(ProgressColumn):
    """Bytes done / total and the speed for downloads; a count for the other steps."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if unit != "B":
            return Text(f"{int(task.completed):,}/{f'{int(task.total):,}' if task.total else '?'} {unit}")
        total = filesize.decimal(int(task.total)) if task.total else "?"
        speed = f"  {filesize.decimal(int(task.speed))}/s" if task.speed else ""
        return Text(f"{filesize.decimal(int(task.completed))} / {total}{speed}")


class FetchProgress(_Bars):
    """fetch-data's progress: a bar per download (bytes, speed, ETA) and per step (extract, convert, check).

    A stage started again under the same description (a download's retry) continues its bar, which
    appears with the first amount done. When stdout is not a terminal there are no live bars: each
    finished stage prints one line instead.
    """

    def __init__(self) -> None:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), _AmountColumn(), TimeRemainingColumn())
        super().__init__(*columns, out=console)
        self.tasks: dict[str, Any] = {}
        self.finished: set[str] = set()

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        return lambda done: self._update(description, done, total, unit)

    def _update(self, task: str, done: int, total: int | None, unit: str) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bars.add_task(task, total=total, unit=unit)
        self.bars.update(self.tasks[task], completed=done, total=total)
        if total is not None and done >= total and task not in self.finished:
            self.finished.add(task)
            if not self.live:
                seconds = self.bars.tasks[self.tasks[task]].elapsed or 0.0
                self.info(f"{task}: {_amount(done, unit)} in {seconds:.1f} s")


def render_fetch_result(result: FetchResult) -> None:
    """The data set(s) fetch-data made: classes, images per split, what was left out, where, how to use it."""
    results = [result, *([result.prepared] if result.prepared else [])]
    table = Table(title="data set ready", title_justify="left")
    for column in ("name", "classes", "images", "unreadable", "path"):
        table.add_column(column, justify="right" if column in ("classes", "unreadable") else "left")
    for item in results:
        images = ", ".join(f"{split} {count:,}" for split, count in item.images.items())
        name = f"{item.name} (already there)" if item.reused else item.name
        table.add_row(name, str(item.classes), images, str(item.unreadable), str(item.path))
    console.print(table)
    print_info(f"source: {result.source}")
    if result.unverified:
        print_warning(f"not verified (no published checksum): {', '.join(result.unverified)}")
    for item in results:
        if item.report is not None:
            print_warning(f"unreadable images were left out; the list is in {item.report}")
    print_info(f"train on it: carcli train --data {results[-1].path}")


def render_data_list(root: Path, infos: Sequence[DataSetInfo]) -> None:
    """`fetch-data --list`: the known data sets, whether each is there, its size on disk."""
    rows = [
        (
            info.name if info.kind == info.name else f"{info.name} ({info.kind})",
            "present" if info.present else "not fetched",
            "-" if info.images is None else f"{info.images:,}",
            "-" if info.size_bytes is None else filesize.decimal(info.size_bytes),
            str(info.path.relative_to(root) if info.path.is_relative_to(root) else info.path),
        )
        for info in infos
    ]
    title = f"data sets in {root} (paths below it are relative)"
    render_table(title, ("name (kind)", "status", "images", "size", "path"), rows, left=(0, 4))


class TuneProgress(_RunBars):
    """`carcli tune` progress: a bar over trials with the best value so far, and one line per finished trial."""

    blank: ClassVar[dict[str, str]] = {"best": "", "now": ""}

    def __init__(self) -> None:
        super().__init__("best {task.fields[best]}  {task.fields[now]}")

    def progress(self, event: Event) -> None:
        match event:
            case SearchStart(total=total, finished=done, best=best):
                self.task_id = self.bars.add_task("trials", total=total, completed=done, best=_percent(best), now="")
            case TrialStart():
                self.bars.update(self.task_id, now=f"trial {event.number} training")
            case TrialEpoch():
                top1 = _percent(event.record["val_top1"].get("model"))
                self.bars.update(self.task_id, now=f"trial {event.number} epoch {event.record['epoch']}: {top1}")
            case TrialEnd():
                self._trial_end(event.row, event.best)

    def _trial_end(self, row: TuneRow, best: float | None) -> None:
        self.bars.update(self.task_id, advance=1 if row.counted else 0, best=_percent(best), now="")
        values = ", ".join(f"{name} {_short(value)}" for name, value in row.params.items())
        result = _percent(row.value) if row.value is not None else row.state
        self.bars.console.print(
            f"trial {row.number} {row.state} after {row.epochs} epochs: {result}  ({escape(values)})",
            highlight=False,
            soft_wrap=True,
        )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render_tune_result(result: TuneResult, top: int = 5) -> None:
    """The best trials of the study side by side (a column each, so it fits 80 columns), then the files."""
    ranked = sorted((r for r in result.rows if r.value is not None), key=lambda r: -(r.value or 0.0))[:top]
    params = list(dict.fromkeys(name for row in ranked for name in row.params))
    rows = [
        (f"{result.metric} top-1", *(_percent(r.value) for r in ranked)),
        ("epochs", *(str(r.epochs) for r in ranked)),
        *((name, *(_short(r.params.get(name, "-")) for r in ranked)) for name in params),
    ]
    finished = len(result.finished)
    render_table(
        f"best trials of {finished} ({result.ran} run now)", ("trial", *(f"#{r.number}" for r in ranked)), rows
    )
    console.print(f"study {escape(result.study)} in {escape(result.storage)}")
    console.print("files: " + ", ".join(escape(str(path)) for path in result.files), soft_wrap=True)
