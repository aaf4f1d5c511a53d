"""The `carcli` command line: one small function per subcommand (parse -> call -> render).

Heavy modules (torch, timm, the training loop) are imported inside the commands so that
`carcli --help` answers at once. Every CarcliError or bad flag becomes one red line and a
non-zero exit (2 for usage, 1 for run time; `carcli.cli_base`); `CARCLI_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from carcli import __version__, usage
from carcli.cli_base import CarcliCommand, CarcliGroup
from carcli.console import print_info, print_stopped, render_table
from carcli.errors import UsageError
from carcli.train.config import cli_options

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


@app.command("fetch-data", cls=CarcliCommand)
def fetch_data(
    name: Annotated[str | None, typer.Argument(help="Data set: stanford-cars, folder, demo.")] = None,
    path: Annotated[
        Path | None, typer.Argument(help="With `folder`: a class-folder or CSV data set (folder, .csv or archive).")
    ] = None,
    sources: Annotated[
        list[Path] | None,
        typer.Option("--from", help="stanford-cars: import local archives, folders or parquet files (repeatable)."),
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option(help="stanford-cars: download from this URL first (repeatable; #sha256=HEX).")
    ] = None,
    dataset_name: Annotated[str | None, typer.Option("--name", help="With `folder`: its name under the root.")] = None,
    root: Annotated[
        Path | None, typer.Option(help="Data root (default $CARCLI_HOME/data, else the cache folder).")
    ] = None,
    prepare_size: Annotated[
        int | None, typer.Option(help="Also store a copy with the shorter image side at N px (NAME-Npx).")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the known data sets, present or not, and sizes.")] = False,
) -> None:
    """Download, verify and prepare a data set (Stanford Cars, class folders, the demo set)."""
    from carcli.console import FetchProgress, render_data_list, render_fetch_result
    from carcli.data.fetch import FetchRequest, fetch, list_datasets
    from carcli.paths import data_home

    data_root = data_home(root)
    print_info(f"data root: {data_root}")
    if list_:
        if name is not None:
            raise UsageError("--list takes no data set name")
        render_data_list(data_root, list_datasets(data_root))
        return
    request = FetchRequest(
        name=name,
        root=data_root,
        path=path,
        dataset_name=dataset_name,
        sources=sources or [],
        urls=url or [],
        prepare_size=prepare_size,
    )
    try:
        with FetchProgress() as reporter:
            result = fetch(request, reporter)
    except KeyboardInterrupt:
        print_stopped("interrupted; nothing half-made was kept, partial downloads (*.part) resume next time")
        raise typer.Exit(130) from None
    render_fetch_result(result)


def with_train_options(*exclude: str, own_first: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command every `carcli train` option (from carcli.train.config) in place of its `**options`;
    its own options come after them in the help, or first with `own_first`."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        params = inspect.signature(command, eval_str=True).parameters.values()
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in params if p.kind != p.VAR_KEYWORD]
        shared = cli_options(exclude)
        ordered = [*own, *shared] if own_first else [*shared, *own]
        command.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
        return command

    return decorate


@app.command(cls=CarcliCommand)
@with_train_options()
def train(
    config: Annotated[
        Path | None,
        typer.Option(help="TOML or YAML file setting any option; flags override it.", rich_help_panel="Run"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder exactly where it stopped.", rich_help_panel="Run"),
    ] = None,
    **options: Any,
) -> None:
    """Train a classifier and write safetensors checkpoints (best.st, last.st) to a run folder."""
    from carcli.train.config import from_cli, make_config

    options = from_cli(options)
    if resume and config:
        raise UsageError("--resume continues a run with its saved configuration; --config cannot change it")
    if not resume:
        run_config = make_config(options, config)  # checked here, before torch is imported
    from carcli.console import TrainProgress, render_train_summary
    from carcli.train import resume_config
    from carcli.train import train as run_training

    if resume:
        run_config = resume_config(resume, {k: v for k, v in options.items() if v is not None})
    from carcli.train.tracking import tracking

    with TrainProgress() as reporter, tracking(run_config, reporter) as tracked:
        result = run_training(run_config, tracked, resume=resume is not None)
    if result.records:
        render_train_summary(result)


# issue 14: options shared by eval and predict
EvalSize = Annotated[
    int | None, typer.Option(help="Input size (default: the evaluation size stored in the checkpoint).")
]
EvalAspect = Annotated[
    float | None,
    typer.Option(min=1.0, help="Evaluation view: centre crop up to this long/short side ratio (default: as stored)."),
]
Hierarchy = Annotated[
    bool, typer.Option(help="Hierarchy-consistent answers: fine x make^a x type^b (multi-task checkpoints).")
]


@app.command("eval", cls=CarcliCommand)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A .st checkpoint, or an .onnx model made by `carcli export`.")],
    data: Annotated[
        Path | None, typer.Option(help="Data set root (default: the one the checkpoint was trained on).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="val, test or all (every labelled image) (default: val if the data has one, else test)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: eval-<split> beside the checkpoint).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the eval.json object to stdout, nothing else.")
    ] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average flips and five crops (12 views, 12x slower).")] = False,
    submission: Annotated[
        Path | None, typer.Option(help="Write the Stanford Cars devkit submission file here.")
    ] = None,
    crop: Annotated[str | None, typer.Option(help="cam: two-pass prediction on the Grad-CAM crop.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[
        int | None, typer.Option(help="Loader processes (default: 0 for one batch, else cores // 2).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    calibrate: Annotated[
        bool, typer.Option("--calibrate", help="Fit one temperature per task on the val split; store it.")
    ] = False,
    calibrated_out: Annotated[
        Path | None, typer.Option("-o", "--calibrated-out", help="With --calibrate: write a new .st instead.")
    ] = None,
    img_size: EvalSize = None,
    eval_aspect: EvalAspect = None,
    hierarchy: Hierarchy = False,
) -> None:
    """Per-task metrics, calibration, confusion matrices and reports for a checkpoint on a data set."""
    usage.check_eval(checkpoint, data, split, crop, tta, batch_size, device)
    from carcli.console import StageProgress, print_json_line, render_eval
    from carcli.evaluate import evaluate as run_eval

    with StageProgress() as reporter:
        result = run_eval(
            checkpoint, data, split, out, tta, crop, submission, batch_size, workers, device, reporter=reporter,
            calibrate=calibrate, calibrated_out=calibrated_out,
            img_size=img_size, eval_aspect=eval_aspect, hierarchy=hierarchy,
        )  # fmt: skip
    if json_output:
        print_json_line(result.report)
    else:
        render_eval(result)


@app.command(cls=CarcliCommand)
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="A .st checkpoint.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Data set root (default: the checkpoint's); scored on its own evaluation split."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Share of weights (magnitude) or of each layer's channels (channel) to remove.")
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Score rates 0.1..0.9 instead; writes a CSV and a PNG.")
    ] = False,
    method: Annotated[str, typer.Option(help="magnitude (global L1, unstructured) or channel (removes channels).")] = (
        "magnitude"
    ),
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune the pruned model this many epochs.")] = 0,
    teacher: Annotated[
        bool, typer.Option(help="With --finetune-epochs: distil from the unpruned model (default on).")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Pruned .st (default beside the checkpoint); with --sweep the CSV."),
    ] = None,
) -> None:
    """Prune a model (magnitude or channel) and report accuracy against size."""
    usage.check_prune_mode(rate, sweep, finetune_epochs)
    usage.check_prune(checkpoint, data, method, rate, finetune_epochs)
    from carcli.console import TrainProgress
    from carcli.prune import prune_checkpoint
    from carcli.prune import sweep as run_sweep

    if sweep:
        swept = run_sweep(checkpoint, data, method, out, progress=print_info)
        columns = ("task", *(f"{r:g}" for r in swept.rates))
        render_table(f"top-1 after {method} pruning, by rate (0 = as trained)", columns, swept.rows())
        print_info(f"table: {swept.csv_path}  plot: {swept.png_path}")
        return
    assert rate is not None
    with TrainProgress() as reporter:
        result = prune_checkpoint(checkpoint, data, method, rate, finetune_epochs, out, reporter, teacher)
    render_table(f"{method} pruning at rate {rate}", ("", "before", "after"), result.rows())
    print_info(f"pruned checkpoint: {result.out}")


@app.command(cls=CarcliCommand)
def ensemble(
    checkpoints: Annotated[list[Path], typer.Argument(help="Two or more .st checkpoints.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Data set root (default: the first member's); scored on its evaluation split."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="mean, weighted (log-loss optimal weights) or greedy (Caruana selection).")
    ] = "mean",
    out: Annotated[Path, typer.Option("-o", "--out", help="The ensemble checkpoint to write.")] = Path("ensemble.st"),
) -> None:
    """Combine checkpoints into one ensemble checkpoint (mean, weighted or greedy)."""
    usage.check_ensemble(checkpoints, data, method)
    from carcli.console import print_warning
    from carcli.ensemble import build_ensemble

    result = build_ensemble(checkpoints, data, method, out, progress=print_info)
    render_table(f"top-1 on {result.images} {result.split} images", result.columns(), result.rows())
    for note in result.notes:
        print_warning(note)
    print_info(f"ensemble checkpoint: {result.out}")


@app.command(cls=CarcliCommand)
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A .st checkpoint (plain, pruned or ensemble).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx, torchscript or openvino.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="File to write (default beside the checkpoint).")] = (
        None
    ),
    quantize: Annotated[str | None, typer.Option(help="int8: ONNX Runtime static quantisation (needs --data).")] = None,
    data: Annotated[Path | None, typer.Option(help="With --quantize: data set to calibrate and score on.")] = None,
    calibration_images: Annotated[int, typer.Option(help="With --quantize: training images to calibrate on.")] = 200,
) -> None:
    """Export to ONNX (dynamic batch, optionally int8), TorchScript or OpenVINO IR, checked after writing."""
    usage.check_export(checkpoint, fmt)
    from carcli.export import export_checkpoint

    result = export_checkpoint(checkpoint, fmt, out, quantize, data, calibration_images)
    render_table(f"exported {checkpoint.name} to {result.format}", ("", "value"), result.rows())
    if result.quantized is not None:
        q = result.quantized
        title = f"fp32 against int8 (calibrated on {q.calibration_images} images)"
        render_table(title, ("", "fp32", "int8"), q.rows())


@app.command(cls=CarcliCommand)
def bench(
    checkpoint: Annotated[Path | None, typer.Argument(help="A .st checkpoint (or use --arch).")] = None,
    arch: Annotated[str | None, typer.Option(help="Measure an untrained architecture instead (196 classes).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input size (default: the checkpoint's or arch's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_large_images: Annotated[
        bool, typer.Option("--allow-large-images", help="Allow --img-size over 2048.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads of both timings (default: 1 for latency, the physical cores for throughput)."),
    ] = None,
) -> None:
    """Parameters, FLOPs, file size, latency (batch 1) and throughput (batch 32) of a model."""
    usage.check_bench(checkpoint, arch, img_size, device, threads, allow_large_images)
    from carcli.models.registry import check_arch_name

    if arch is not None:
        check_arch_name(arch)
    from carcli.bench import bench as run_bench
    from carcli.console import print_warning

    result = run_bench(checkpoint, arch, img_size, device, threads, allow_large_images)
    render_table("benchmark", ("", "value"), result.rows())
    for warning in result.warnings:
        print_warning(warning)


@app.command(cls=CarcliCommand)
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint, or an exported .onnx (default: newest runs/*/best.st).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Fine classes shown per image.")] = 5,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per image per line (JSON Lines).")
    ] = False,
    csv: Annotated[Path | None, typer.Option(help="Also write the predictions as a CSV table.")] = None,
    explain: Annotated[Path | None, typer.Option(help="Write a Grad-CAM overlay PNG per image to this folder.")] = None,
    saliency: Annotated[bool, typer.Option("--saliency", help="With --explain: gradient saliency maps too.")] = False,
    crop: Annotated[str | None, typer.Option(help="cam: predict again on the Grad-CAM crop, average both.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    img_size: EvalSize = None,
    eval_aspect: EvalAspect = None,
    hierarchy: Hierarchy = False,
) -> None:
    """Top-k predictions (model, make, type, year) for images."""
    usage.check_inputs(images)
    usage.check_predict(model, top_k, batch_size, explain, saliency, crop, device)
    from carcli.console import StageProgress, print_json_line, render_predictions
    from carcli.predict import predict as run_predict

    with StageProgress() as reporter:
        result = run_predict(
            images, model, top_k, csv, explain, saliency, crop, batch_size, device=device, reporter=reporter,
            img_size=img_size, eval_aspect=eval_aspect, hierarchy=hierarchy,
        )  # fmt: skip
    if json_output:
        for answer in result.predictions:
            print_json_line(answer.to_json())
    else:
        render_predictions(result)


@app.command(cls=CarcliCommand)
def archs() -> None:
    """List the registered architectures with their library, parameters (196 classes) and image size."""
    from carcli.models.registry import count_parameters, list_archs

    rows = [
        (
            spec.name,
            f"{'tv' if spec.library == 'torchvision' else spec.library}:{spec.model_name}",
            f"{count_parameters(spec.name, {'model': 196}) / 1e6:.2f}",
            str(spec.feature_dim),
            str(spec.img_size),
        )
        for spec in list_archs()
    ]
    render_table(
        "architectures (any timm:NAME or tv:NAME works too); parameters in millions, with 196 classes",
        ("name", "library:model", "params", "features", "img size"),
        rows,
        left=(0, 1),
    )


@app.command(cls=CarcliCommand)
def serve(
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: newest runs/*/best.st).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most images per forward pass when requests arrive together.")] = 16,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, in MB (413 above).")] = 20,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """A web page and HTTP API that recognise a car from a photo (FastAPI on uvicorn)."""
    try:
        from carcli.serve import ServeOptions
        from carcli.serve import serve as run_server

        stats = run_server(ServeOptions(model, host, port, max_batch, max_upload_mb, device), notify=print_info)
    except KeyboardInterrupt:
        print_info("stopped")
        raise typer.Exit(130) from None
    print_info(f"stopped after {stats.requests} requests ({stats.images} images in {stats.batches} batches)")
    raise typer.Exit(130)


TUNE = "Search"


@app.command(cls=CarcliCommand)
@with_train_options("out", own_first=True)
def tune(
    trials: Annotated[
        int, typer.Option(help="The study's total of finished trials (a rerun adds up to it).", rich_help_panel=TUNE)
    ],
    space: Annotated[
        Path | None,
        typer.Option(help="TOML search space (default: one for fine-tuning or from scratch).", rich_help_panel=TUNE),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Tune folder (default tunes/<time>-<arch>).", rich_help_panel=TUNE)
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna RDB URL shared by many machines (default: SQLite in --out).", rich_help_panel=TUNE),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (needed with --storage).", rich_help_panel=TUNE)] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Start no new trial after this many seconds.", rich_help_panel=TUNE)
    ] = None,
    pruner: Annotated[
        str, typer.Option(help="median, hyperband or none: stop hopeless trials early.", rich_help_panel=TUNE)
    ] = "median",
    metric: Annotated[
        str, typer.Option(help="Task whose validation top-1 is maximised (default model).", rich_help_panel=TUNE)
    ] = "model",
    config: Annotated[
        Path | None,
        typer.Option(help="TOML or YAML file of fixed train options; flags override it.", rich_help_panel=TUNE),
    ] = None,
    **options: Any,
) -> None:
    """Search training options with Optuna: each trial a real training run; resumable, on one machine or many."""
    from carcli.console import TuneProgress, render_tune_result
    from carcli.train.config import from_cli
    from carcli.tune import TuneRequest
    from carcli.tune import tune as run_tune

    request = TuneRequest(from_cli(options), trials, config, space, out, storage, study, timeout, pruner, metric)
    with TuneProgress() as reporter:
        result = run_tune(request, reporter)
    render_tune_result(result)
