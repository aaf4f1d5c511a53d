"""The `carcli` command line: one small function per subcommand (parse -> call -> render).

Heavy modules (torch, timm, the training loop) are imported inside the commands so that
`carcli --help` answers at once. Every CarcliError or bad flag becomes one red line and a
non-zero exit (2 for usage, 1 for run time); `CARCLI_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 ships its own copy of click; its exceptions are the ones raised
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer uses click itself
    import click  # type: ignore[no-redef]

from carcli import __version__
from carcli.console import print_error, print_info, render_table
from carcli.errors import CarcliError


class CarcliGroup(TyperGroup):
    """Runs the app and turns every user error into one line on stderr and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        debug = os.environ.get("CARCLI_DEBUG") == "1"
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except click.ClickException as exc:
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "carcli"
            if exc.format_message():  # empty after `carcli` alone, which has printed the help
                print_error(f"{exc.format_message()} (see `{command} --help`)")
            code = exc.exit_code
        except typer.Abort:
            print_error("aborted")
            code = 1
        except CarcliError as exc:
            if debug:
                raise
            print_error(str(exc))
            code = exc.exit_code
        except Exception as exc:
            if debug:
                raise
            print_error(f"unexpected {type(exc).__name__}: {exc} (set CARCLI_DEBUG=1 for the traceback)")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=CarcliGroup,
    name="carcli",
    help="Fine-grained image classification: car make/model recognition and any folder of labelled images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print_info(f"carcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Fine-grained image classification: car make/model recognition and any folder of labelled images."""


def _not_yet(command: str) -> None:
    raise CarcliError(f"`carcli {command}` is not yet available in carcli {__version__}")


@app.command("fetch-data")
def fetch_data(
    name: Annotated[str, typer.Argument(help="Data set: stanford-cars, folder, demo.")] = "stanford-cars",
    root: Annotated[Path | None, typer.Option(help="Data root (default $CARCLI_HOME/data).")] = None,
) -> None:
    """Download, verify and prepare a data set (Stanford Cars, class folders, the demo set)."""
    _not_yet("fetch-data")


@app.command()
def train(
    data: Annotated[
        Path | None, typer.Option(help="Data set root (devkit, class folders or CSV). Default: the demo set.")
    ] = None,
    arch: Annotated[str, typer.Option(help="Backbone: a name from `carcli archs`, timm:NAME or tv:NAME.")] = "ghostnet",
    head: Annotated[str, typer.Option(help="Head: linear, mtl (make/type priors) or mtl-aux.")] = "linear",
    img_size: Annotated[int | None, typer.Option(help="Square input size (default: the arch's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 30; the demo set: its own).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3 AdamW, 0.05 SGD).")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (Nesterov).")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Weight decay of weights (not biases/norms).")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup before the cosine decay.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of every task's loss.")] = 0.1,
    loss_weights: Annotated[
        str | None, typer.Option(help="Per-task loss weights, e.g. 'make=0.5,type=0.5,year=0.2'.")
    ] = None,
    drop_rate: Annotated[float, typer.Option(help="Dropout before the classifiers.")] = 0.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and augmentation.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Validation share when the data set has no val/test split.")
    ] = 0.2,
    weights: Annotated[
        Path | None, typer.Option(help="Local backbone weights (.pth/.safetensors) to start from.")
    ] = None,
    pretrained: Annotated[bool, typer.Option(help="Start from the library's pretrained weights (network).")] = False,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<time>-<arch>-<head>).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Data loading processes (default: GPU: cores, CPU: half the cores; max 8).")
    ] = None,
) -> None:
    """Train a classifier and write safetensors checkpoints (best.st, last.st) to a run folder."""
    from carcli.console import RichReporter, render_train_summary
    from carcli.train import TrainConfig, parse_loss_weights
    from carcli.train import train as run_training

    config = TrainConfig(
        data=str(data) if data else None,
        arch=arch,
        head=head,
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        loss_weights=parse_loss_weights(loss_weights),
        drop_rate=drop_rate,
        device=device,
        seed=seed,
        val_fraction=val_fraction,
        weights=str(weights) if weights else None,
        pretrained=pretrained,
        out=str(out) if out else None,
        workers=workers,
    )
    try:
        with RichReporter() as reporter:
            result = run_training(config, reporter)
    except KeyboardInterrupt:
        print_error(f"interrupted; checkpoints written so far are in {config.out or 'the run folder'}")
        raise typer.Exit(130) from None
    render_train_summary(result)


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A .st checkpoint.")],
    data: Annotated[Path | None, typer.Option(help="Data set root.")] = None,
) -> None:
    """Per-task metrics, confusion matrices and reports for a checkpoint on a data set."""
    _not_yet("eval")


@app.command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="A .st checkpoint.")],
    data: Annotated[Path | None, typer.Option(help="Data set root.")] = None,
) -> None:
    """Prune a model (magnitude or channel) and report accuracy against size."""
    _not_yet("prune")


@app.command()
def ensemble(
    checkpoints: Annotated[list[Path], typer.Argument(help="Two or more .st checkpoints.")],
    data: Annotated[Path | None, typer.Option(help="Data set root.")] = None,
) -> None:
    """Combine checkpoints into one ensemble checkpoint (mean, weighted or greedy)."""
    _not_yet("ensemble")


@app.command()
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: newest runs/*/best.st).")] = None,
) -> None:
    """Top-k predictions (model, make, type, year) for images."""
    _not_yet("predict")


@app.command()
def archs() -> None:
    """List the registered architectures with their library, parameters (196 classes) and image size."""
    from carcli.models.registry import count_parameters, list_archs

    rows = [
        (
            spec.name,
            f"{spec.library} {spec.model_name}",
            f"{count_parameters(spec.name, {'model': 196}) / 1e6:.2f} M",
            str(spec.feature_dim),
            str(spec.img_size),
        )
        for spec in list_archs()
    ]
    render_table(
        "architectures (also timm:NAME, tv:NAME)",
        ("name", "library", "params (196 cls)", "features", "img size"),
        rows,
    )
