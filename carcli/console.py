"""Everything carcli prints: the rich consoles, error lines, training progress and result tables.

This is the only module that writes to the terminal; library modules report through the
`Reporter` protocol of `carcli.train`, which `RichReporter` implements here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from carcli.train import TrainResult

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_info(message: str) -> None:
    console.print(escape(message), highlight=False, soft_wrap=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class RichReporter:
    """Training progress: one bar per epoch with loss, accuracy and images/s, then a validation line.

    When stdout is not a terminal (a log file, CI) there are no live bars: each epoch ends with one
    line that carries the training figures too, so logs stay readable.
    """

    def __init__(self) -> None:
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  top1 {task.fields[top1]}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task_id: Any = None
        self.epochs = 0

    def __enter__(self) -> RichReporter:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def info(self, message: str) -> None:
        self.progress.console.print(escape(message), highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        self.task_id = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, loss=0.0, top1="-", ips=0.0)

    def step(self, stats: dict[str, float]) -> None:
        self.progress.update(
            self.task_id, advance=1, loss=stats["loss"], top1=_percent(stats["top1"]), ips=stats["images_per_s"]
        )

    def epoch_end(self, record: dict[str, Any]) -> None:
        tasks = "  ".join(f"{task} {_percent(v)}" for task, v in record["val_top1"].items())
        line = f"  val loss {record['val_loss']:.3f}  top-1: {tasks}  ({record['seconds']:.1f} s)"
        if not self.live:
            line = (
                f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.3f}"
                f"  top1 {_percent(record['train_top1'])}  {record['images_per_s']:.0f} img/s |{line[1:]}"
            )
        self.progress.console.print(line, highlight=False, soft_wrap=True)


def render_train_summary(result: TrainResult) -> None:
    """The end-of-run table."""
    table = Table(title="training finished", title_justify="left")
    for column in ("best epoch", *(f"{t} top-1" for t in result.best_top1), "parameters", "img/s", "wall time"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.best_epoch}/{result.epochs}",
        *(_percent(v) for v in result.best_top1.values()),
        f"{result.parameters / 1e6:.2f} M",
        f"{result.images_per_s:.0f}",
        f"{result.seconds:.0f} s",
    )
    console.print(table)
    console.print(f"checkpoints: {escape(str(result.run_dir / 'best.st'))} (best), last.st, metrics.jsonl")


def render_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A plain table with right-aligned columns after the first."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
