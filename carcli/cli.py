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

from carcli import __version__, usage
from carcli.console import print_error, print_info, print_stopped, render_table
from carcli.errors import CarcliError, Interrupted, UsageError, fault, one_line


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
            print_stopped("aborted (Ctrl-C)")
            code = 130
        except Interrupted as exc:
            print_stopped(str(exc))
            code = exc.exit_code
        except CarcliError as exc:
            if debug:
                raise
            print_error(one_line(str(exc)))
            code = exc.exit_code
        except Exception as exc:
            if debug:
                raise
            known = fault(exc)
            if known is None:
                print_error(f"unexpected {type(exc).__name__}: {exc} (set CARCLI_DEBUG=1 for the traceback)")
            else:
                print_error(str(known))
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


@app.command("fetch-data")
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


DATA, MODEL, OPTIM, AUG, LOSS, RUN = "Data", "Model", "Optimisation", "Augmentation", "Loss", "Run"


def _opt(help_text: str, panel: str, *names: str) -> Any:
    return typer.Option(*names, help=help_text, rich_help_panel=panel)


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None, _opt("Data set root (devkit, class folders or CSV). Default: the demo set.", DATA)
    ] = None,
    val_fraction: Annotated[
        float | None, _opt("Validation share when the data set has no val/test split (default 0.2).", DATA)
    ] = None,
    crop_to_bbox: Annotated[
        bool | None,
        _opt("Crop images to their bounding boxes (devkit data).", DATA, "--crop-to-bbox/--no-crop-to-bbox"),
    ] = None,
    bbox_margin: Annotated[float | None, _opt("Box margin, share of its size (default 0.1).", DATA)] = None,
    cache: Annotated[
        bool | None,
        _opt(
            "Decode and resize the images once into a memory-mapped store; augment batches on the device.",
            DATA,
            "--cache/--no-cache",
        ),
    ] = None,
    img_size: Annotated[int | None, _opt("Square input size, e.g. 224, 448 (default: the arch's).", DATA)] = None,
    arch: Annotated[
        str | None, _opt("Backbone: a name from `carcli archs`, timm:NAME or tv:NAME (default ghostnet).", MODEL)
    ] = None,
    head: Annotated[str | None, _opt("Head: linear, mtl (make/type priors), mtl-aux (default linear).", MODEL)] = None,
    drop_rate: Annotated[float | None, _opt("Dropout before the classifiers (default 0).", MODEL)] = None,
    weights: Annotated[Path | None, _opt("Local backbone weights (.pth/.safetensors) to start from.", MODEL)] = None,
    pretrained: Annotated[
        bool | None,
        _opt("Start from the library's pretrained weights (network).", MODEL, "--pretrained/--no-pretrained"),
    ] = None,
    freeze_backbone: Annotated[
        bool | None, _opt("Train the head only (frozen features).", MODEL, "--freeze-backbone/--no-freeze-backbone")
    ] = None,
    unfreeze_after: Annotated[
        int | None, _opt("Staged fine-tuning: head only for N epochs, then all (default 0).", MODEL)
    ] = None,
    epochs: Annotated[int | None, _opt("Epochs (default 30; the demo set: its own).", OPTIM)] = None,
    batch_size: Annotated[int | None, _opt("Images per step (default 32).", OPTIM)] = None,
    accum_steps: Annotated[int | None, _opt("Batches per optimizer update (default 1).", OPTIM)] = None,
    lr: Annotated[float | None, _opt("Peak learning rate (default 1e-3 AdamW, 0.05 SGD).", OPTIM)] = None,
    backbone_lr_scale: Annotated[float | None, _opt("Backbone lr = lr x this (default 1).", OPTIM)] = None,
    optimizer: Annotated[str | None, _opt("adamw or sgd (Nesterov) (default adamw).", OPTIM)] = None,
    weight_decay: Annotated[float | None, _opt("Weight decay, not on biases/norms (default 0.05).", OPTIM)] = None,
    momentum: Annotated[float | None, _opt("SGD momentum (default 0.9).", OPTIM)] = None,
    schedule: Annotated[str | None, _opt("cosine, multistep, exponential or onecycle (default cosine).", OPTIM)] = None,
    warmup_epochs: Annotated[
        float | None, _opt("Linear warmup epochs (onecycle: its rising phase) (default 1).", OPTIM)
    ] = None,
    milestones: Annotated[str | None, _opt("multistep: epochs where lr drops, e.g. '20,30'.", OPTIM)] = None,
    gamma: Annotated[
        float | None, _opt("multistep: drop factor [0.1]; exponential: per-epoch factor (default 0.9).", OPTIM)
    ] = None,
    ema: Annotated[
        bool | None, _opt("Keep an EMA of the weights; evaluate and save it.", OPTIM, "--ema/--no-ema")
    ] = None,
    ema_decay: Annotated[float | None, _opt("EMA decay per update (default 0.999).", OPTIM)] = None,
    patience: Annotated[int | None, _opt("Early stop after N epochs without a better top-1 (0: off).", OPTIM)] = None,
    clip_grad: Annotated[float | None, _opt("Clip the gradient norm to this (0: off).", OPTIM)] = None,
    loss: Annotated[str | None, _opt("ce, or cot (cross-entropy + complement entropy) (default ce).", LOSS)] = None,
    label_smoothing: Annotated[float | None, _opt("Label smoothing of every task's loss (default 0.1).", LOSS)] = None,
    loss_weights: Annotated[str | None, _opt("Per-task loss weights, e.g. 'make=0.5,type=0.5,year=0.2'.", LOSS)] = None,
    balance: Annotated[
        str | None, _opt("Class imbalance: none, sampler (balanced batches) or weights (loss).", LOSS)
    ] = None,
    augment: Annotated[str | None, _opt("Preset: none, light, standard or strong (default standard).", AUG)] = None,
    crop_scale: Annotated[float | None, _opt("Smallest area share of the random resized crop.", AUG)] = None,
    hflip: Annotated[bool | None, _opt("Random horizontal flips.", AUG, "--hflip/--no-hflip")] = None,
    affine_degrees: Annotated[float | None, _opt("Random affine: rotation degrees.", AUG)] = None,
    affine_translate: Annotated[float | None, _opt("Random affine: translation share.", AUG)] = None,
    affine_scale: Annotated[float | None, _opt("Random affine: +- scale share.", AUG)] = None,
    affine_shear: Annotated[float | None, _opt("Random affine: shear degrees.", AUG)] = None,
    color_jitter: Annotated[float | None, _opt("Brightness/contrast/saturation jitter.", AUG)] = None,
    grayscale: Annotated[float | None, _opt("Probability of a grayscale image.", AUG)] = None,
    auto_augment: Annotated[str | None, _opt("none, randaugment or trivialaugment.", AUG)] = None,
    random_erasing: Annotated[float | None, _opt("Probability of random erasing.", AUG)] = None,
    mixup: Annotated[float | None, _opt("Mixup alpha (0: off).", AUG)] = None,
    cutmix: Annotated[float | None, _opt("CutMix alpha (0: off).", AUG)] = None,
    config: Annotated[Path | None, _opt("TOML or YAML file setting any option; flags override it.", RUN)] = None,
    resume: Annotated[Path | None, _opt("Continue the run in this folder exactly where it stopped.", RUN)] = None,
    out: Annotated[Path | None, _opt("Run folder (default runs/<time>-<arch>-<head>).", RUN)] = None,
    device: Annotated[str | None, _opt("auto, cpu or cuda (default auto).", RUN)] = None,
    seed: Annotated[int | None, _opt("Seed for splits, initialisation and augmentation (default 0).", RUN)] = None,
    workers: Annotated[
        int | None, _opt("Loader processes (default: GPU: cores, CPU: half the cores; max 8).", RUN)
    ] = None,
    channels_last: Annotated[
        bool | None,
        _opt("channels_last (NHWC) memory format (default on).", RUN, "--channels-last/--no-channels-last"),
    ] = None,
    compile: Annotated[
        bool | None,
        _opt("torch.compile the model (default: on with CUDA, off on CPUs).", RUN, "--compile/--no-compile"),
    ] = None,
    precision: Annotated[
        str | None,
        _opt(
            "auto, fp32, bf16 or fp16 (default auto: bf16/fp16 autocast on GPUs; on CPUs bf16 for nets without "
            "depthwise convolutions when the CPU has bf16 instructions, else fp32).",
            RUN,
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None, _opt("Also log to TensorBoard (run folder/tensorboard).", RUN, "--tensorboard/--no-tensorboard")
    ] = None,
    profile: Annotated[
        bool | None,
        _opt("Print where each step's time goes: loader wait, preparation, compute.", RUN, "--profile/--no-profile"),
    ] = None,
    allow_large_images: Annotated[
        bool | None, _opt("Allow --img-size over 2048 (memory grows with its square).", DATA, "--allow-large-images")
    ] = None,
    log: Annotated[
        str | None,
        _opt("Track the run: none, mlflow (SQLite store in the runs folder) or wandb (offline unless logged in).", RUN),
    ] = None,
    log_uri: Annotated[str | None, _opt("--log mlflow: tracking URI or server; --log wandb: W&B server URL.", RUN)] = (
        None
    ),
) -> None:
    """Train a classifier and write safetensors checkpoints (best.st, last.st) to a run folder."""
    from carcli.console import RichReporter, render_train_summary
    from carcli.tracking import tracking
    from carcli.train import make_config, parse_loss_weights, parse_milestones, resume_config
    from carcli.train import train as run_training

    options = {k: v for k, v in ctx.params.items() if k not in ("config", "resume")}
    options.update(
        data=str(data) if data else None,
        weights=str(weights) if weights else None,
        out=str(out) if out else None,
        loss_weights=parse_loss_weights(loss_weights) if loss_weights else None,
        milestones=parse_milestones(milestones) if milestones else None,
    )
    if resume and config:
        raise UsageError("--resume continues a run with its saved configuration; --config cannot change it")
    if resume:
        run_config = resume_config(resume, {k: v for k, v in options.items() if v is not None})
    else:
        run_config = make_config(options, config)
    with RichReporter() as reporter, tracking(run_config, reporter) as tracked:
        result = run_training(run_config, tracked, resume=resume is not None)
    if result.records:
        render_train_summary(result)


@app.command("eval")
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
) -> None:
    """Per-task metrics, calibration, confusion matrices and reports for a checkpoint on a data set."""
    usage.check_eval(checkpoint, data, split, crop, tta, batch_size, device)
    from carcli.console import RichStages, print_json_line, render_eval
    from carcli.evaluate import evaluate as run_eval

    with RichStages() as reporter:
        result = run_eval(
            checkpoint, data, split, out, tta, crop, submission, batch_size, workers, device, reporter=reporter,
            calibrate=calibrate, calibrated_out=calibrated_out,
        )  # fmt: skip
    if json_output:
        print_json_line(result.report)
    else:
        render_eval(result)


@app.command()
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
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Pruned .st (default beside the checkpoint); with --sweep the CSV."),
    ] = None,
) -> None:
    """Prune a model (magnitude or channel) and report accuracy against size."""
    if sweep == (rate is not None):
        raise UsageError("give either --rate R or --sweep")
    if sweep and finetune_epochs:
        raise UsageError("--finetune-epochs needs --rate (a sweep does not fine-tune)")
    usage.check_prune(checkpoint, data, method, rate, finetune_epochs)
    from carcli.console import RichReporter
    from carcli.prune import prune_checkpoint
    from carcli.prune import sweep as run_sweep

    if sweep:
        swept = run_sweep(checkpoint, data, method, out, progress=print_info)
        columns = ("task", *(f"{r:g}" for r in swept.rates))
        render_table(f"top-1 after {method} pruning, by rate (0 = as trained)", columns, swept.rows())
        print_info(f"table: {swept.csv_path}  plot: {swept.png_path}")
        return
    assert rate is not None
    with RichReporter() as reporter:
        result = prune_checkpoint(checkpoint, data, method, rate, finetune_epochs, out, reporter)
    render_table(f"{method} pruning at rate {rate}", ("", "before", "after"), result.rows())
    print_info(f"pruned checkpoint: {result.out}")


@app.command()
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


@app.command()
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


@app.command()
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
    from carcli.bench import bench as run_bench
    from carcli.console import print_warning

    result = run_bench(checkpoint, arch, img_size, device, threads, allow_large_images)
    render_table("benchmark", ("", "value"), result.rows())
    for warning in result.warnings:
        print_warning(warning)


@app.command()
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
) -> None:
    """Top-k predictions (model, make, type, year) for images."""
    usage.check_predict(model, top_k, batch_size, explain, saliency, crop, device)
    from carcli.console import RichStages, print_json_line, render_predictions
    from carcli.predict import predict as run_predict

    with RichStages() as reporter:
        result = run_predict(
            images, model, top_k, csv, explain, saliency, crop, batch_size, device=device, reporter=reporter
        )
    if json_output:
        for answer in result.predictions:
            print_json_line(answer.to_json())
    else:
        render_predictions(result)


@app.command()
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


@app.command()
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
