"""The training run, top to bottom: options -> data -> model -> run folder -> feed -> steps -> epochs -> result.

`train(config, reporter)` completes the configuration (carcli.train.recipe), builds the model, the run
folder and the data feed, gathers what the steps need into one `StepContext` and runs the epochs. Each
epoch trains (carcli.train.steps), validates (the EMA weights when `ema` is on), writes the epoch's files
(carcli.train.run_files) and the resumable `state.st` (carcli.train.run_state). Progress goes to the
`Reporter` the caller hands in.

Launched by `torchrun`, the same code runs DistributedDataParallel (carcli.train.distributed). Ctrl-C
saves a resumable state mid-epoch; `resume_config` + `train(..., resume=True)` continue a run exactly
where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carcli.data import demo
from carcli.data.layouts import DataSet, Sample
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.data.transforms import batch_mixer
from carcli.device import resolve_device
from carcli.distill import Teachers, load_teachers
from carcli.errors import CarcliError, Interrupted
from carcli.files import check_output_dir
from carcli.models.heads import CarcliModel
from carcli.models.registry import ArchSpec, create_model, get_arch
from carcli.models.weights import init_from_checkpoint, load_backbone_weights
from carcli.paths import data_home
from carcli.progress import Reporter, SilentReporter
from carcli.train.config import TrainConfig, check_config
from carcli.train.distributed import Dist, broadcast, init_distributed, leave
from carcli.train.feed import Feed, build_feed, image_sizes, readable_splits
from carcli.train.losses import fine_to_tensors, task_class_weights
from carcli.train.optim import build_optimizer, build_scheduler
from carcli.train.recipe import check_loss_weights, complete_config
from carcli.train.reporting import EpochEnd, EpochStart, TrainResult, next_steps
from carcli.train.run_files import (
    RunFiles,
    epoch_record,
    make_run_dir,
    metadata_base,
    previous_records,
    run_info,
    teacher_sums,
    tensorboard_writer,
    update_best,
    what_was_kept,
    write_json,
)
from carcli.train.run_state import Progress, RunState, load_run_state, restore_state, save_state
from carcli.train.runtime import (
    AutoCompile,
    Runtime,
    has_depthwise_conv,
    make_ema,
    make_runtime,
    seed_everything,
    set_trainable,
    share_cores,
    wrap_for_training,
)
from carcli.train.steps import NonFiniteLoss, StepContext, profile_line, report_hierarchy, train_one_epoch, validate

NO_VALIDATION: dict[str, Any] = {"loss": None, "top1": {}, "top5": {}}  # the val figures of a --val-fraction 0 run


def train(
    config: TrainConfig,
    reporter: Reporter | None = None,
    model: CarcliModel | None = None,
    extra_meta: dict[str, Any] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run one training job as `config` says; returns the best metrics and where the files are.

    `model` continues training a model built elsewhere (a pruned one, say) instead of building
    `config.arch`; `extra_meta` (CheckpointMeta fields) joins the checkpoint metadata so such a model can be rebuilt.
    `resume` continues the run in `config.out` from its `state.st` (see `resume_config`).
    """
    started = time.perf_counter()
    check_config(config)  # flag values first, before any slow work
    if config.out and not resume:
        check_output_dir(Path(config.out))
    ddp = init_distributed(config.device)
    try:
        return _train(config, reporter or SilentReporter(), model, extra_meta, resume, ddp, started)
    finally:
        leave(ddp)


def _train(
    config: TrainConfig,
    reporter: Reporter,
    model: CarcliModel | None,
    extra_meta: dict[str, Any] | None,
    resume: bool,
    ddp: Dist,
    started: float,
) -> TrainResult:
    reporter = reporter if ddp.main else SilentReporter()
    device = resolve_device(config.device, ddp.local_rank if ddp.world > 1 else None)
    spec = get_arch(config.arch)  # an unknown arch is a usage error: before any notice about the data
    dataset, recipe_line = complete_config(config, reporter, device, ddp)
    taxonomy = Taxonomy.from_class_names(dataset.class_names)
    check_loss_weights(config.loss_weights, config.head, _task_sizes(taxonomy))
    seed_everything(config.seed + ddp.rank)
    share_cores(device, config.workers or 0, ddp)
    model = _build_model(config, taxonomy, model, resume, device, reporter)
    if recipe_line:
        reporter.info(recipe_line)
    teachers = _teachers(config, taxonomy, spec, device, reporter)
    runtime = make_runtime(config, device, model)
    parameters = sum(p.numel() for p in model.parameters())
    run_dir = Path(config.out or "") if resume else make_run_dir(config, ddp, parameters)
    state = load_run_state(run_dir) if resume else None
    splits = readable_splits(dataset, run_dir, reporter, ddp, config.val_fraction == 0)
    feed = build_feed(config, splits, spec, device, reporter, ddp)
    ctx = _step_context(config, runtime, model, feed, taxonomy, splits[0], teachers, reporter, ddp, state)
    meta = metadata_base(config, spec.mean, spec.std, image_sizes(config, spec), taxonomy, dataset)
    meta = meta.replace(**(extra_meta or {}))
    files = RunFiles(run_dir, meta, previous_records(run_dir, ctx.progress.epoch) if resume else [])
    if ddp.main:
        facts = {
            **run_info(device, runtime.precision, parameters, dataset, ddp),
            **teacher_sums(config, run_dir, resume),
        }
        write_json(run_dir / "config.json", {**(meta.train or {}), "run": facts})
    reporter.info(_announcement(ctx, spec, parameters, splits, dataset.eval_split, run_dir, resume))
    files.writer = tensorboard_writer(run_dir, config, ddp)
    stopped_early = _run_epochs(ctx, files, validating=bool(splits[1]))
    if ddp.main and files.records and splits[1]:  # --val-fraction 0: nothing to fit the hierarchy weights on
        report_hierarchy(run_dir, ctx)
    return _result(config, ctx.progress, files, parameters, stopped_early, dataset, started)


# ---------------------------------------------------------------- set-up


def _task_sizes(taxonomy: Taxonomy) -> dict[str, int]:
    """{task: number of classes}."""
    return {task: len(names) for task, names in taxonomy.tasks.items()}


def _build_model(
    config: TrainConfig, taxonomy: Taxonomy, model: CarcliModel | None, resume: bool, device: torch.device,
    reporter: Reporter,
) -> CarcliModel:  # fmt: skip
    """The model to train on `device`: the one handed in, or --init's, or a new `config.arch`; --weights loaded."""
    if model is None and config.init:
        model, kept = init_from_checkpoint(Path(config.init), config.head, taxonomy.tasks, config.drop_rate)
        reporter.info(kept)
    if model is None:
        model = create_model(config.arch, config.head, _task_sizes(taxonomy), config.pretrained, config.drop_rate)
    if config.weights and not resume:
        report = load_backbone_weights(model.backbone, Path(config.weights))
        reporter.info(f"loaded {report.loaded} backbone tensors from {config.weights} (matched by {report.mode})")
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _teachers(
    config: TrainConfig, taxonomy: Taxonomy, spec: ArchSpec, device: torch.device, reporter: Reporter
) -> Teachers | None:
    """The --teacher models on `device` (None without any), announced in one line."""
    if not config.teacher:
        return None
    teachers = load_teachers(config.teacher, taxonomy.tasks, spec.mean, spec.std, device)
    reporter.info(
        f"distilling from {', '.join(config.teacher)} (weight {config.distill_weight:g}, "
        f"temperature {config.distill_temperature:g}; teachers at {', '.join(map(str, teachers.sizes))} px)"
    )
    return teachers


def _step_context(
    config: TrainConfig, runtime: Runtime, model: CarcliModel, feed: Feed, taxonomy: Taxonomy,
    train_samples: list[Sample], teachers: Teachers | None, reporter: Reporter, ddp: Dist, state: RunState | None,
) -> StepContext:  # fmt: skip
    """The targets, optimizer, schedule and EMA of the run (restored from `state` when resuming), and the
    model wrapped for training: all the steps need, in one place."""
    tasks, device = _task_sizes(taxonomy), runtime.device
    fine_to = fine_to_tensors(taxonomy, device)
    labels = torch.tensor([s.label for s in train_samples], device=device)
    class_weights = task_class_weights(labels, fine_to, tasks) if config.balance == "weights" else None
    mixer = batch_mixer(config.augment_parts, tasks[FINE])
    optimizer = build_optimizer(
        model, config.optimizer, config.lr or 0.0, config.weight_decay, config.momentum, config.backbone_lr_scale
    )
    updates_per_epoch = -(-len(feed.train_loader) // config.accum_steps)
    assert config.epochs is not None
    scheduler = build_scheduler(
        optimizer, config.schedule, config.epochs, updates_per_epoch, config.warmup_epochs, config.milestones,
        config.gamma,
    )  # fmt: skip
    ema = make_ema(model, config)
    progress = Progress()
    if state is not None:
        progress = restore_state(state, model, optimizer, scheduler, ema, runtime.scaler)
    net = wrap_for_training(model, config, ddp, device)
    return StepContext(
        config, runtime, model, net, optimizer, scheduler, ema, feed, fine_to, class_weights, mixer, teachers,
        progress, reporter, ddp,
    )  # fmt: skip


def _announcement(
    ctx: StepContext, spec: ArchSpec, parameters: int, splits: tuple[list[Sample], list[Sample]], eval_split: str,
    run_dir: Path, resume: bool,
) -> str:  # fmt: skip
    """The run's one-line summary before its first epoch."""
    config, runtime, progress, world = ctx.config, ctx.runtime, ctx.progress, ctx.ddp.world
    img_size, eval_size = image_sizes(config, spec)
    return (
        f"{config.arch} + {config.head} head, {parameters / 1e6:.2f} M parameters, {img_size} px"
        f"{f' (validated at {eval_size} px)' if eval_size != img_size else ''}, "
        f"on {runtime.device} in {runtime.precision}{f' x {world} processes' if world > 1 else ''}; "
        f"{len(splits[0])} train / {len(splits[1])} {eval_split} images; run folder {run_dir}"
        + (f"; resuming after epoch {progress.epoch}, step {progress.step}" if resume else "")
    )


# ---------------------------------------------------------------- epochs


def _run_epochs(ctx: StepContext, files: RunFiles, validating: bool) -> bool:
    """The run's remaining epochs; True when early stopping ended them."""
    config, progress = ctx.config, ctx.progress
    assert config.epochs is not None
    auto = AutoCompile(has_depthwise_conv(ctx.model), ctx.reporter, ctx.ddp) if config.compile == "auto" else None
    with _stop_on_sigint(ctx.stop), files.closing():  # also when a reporter stops the run (a pruned trial)
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if config.patience and progress.stale_epochs >= config.patience:
                ctx.reporter.info(f"early stop: no better {FINE} top-1 for {config.patience} epochs")
                return True
            epoch_start = time.perf_counter()
            train_stats = _train_epoch(ctx, epoch, files.run_dir)
            if auto is not None:  # config keeps "auto": a rerun of this config decides afresh
                ctx.net = auto.after_epoch(ctx.net, train_stats, (config.epochs - epoch) * len(ctx.feed.train_loader))
            record = None
            if ctx.ddp.main:
                val_stats = validate(ctx) if validating else NO_VALIDATION
                record = epoch_record(epoch, train_stats, val_stats, time.perf_counter() - epoch_start)
                _write_epoch(ctx, files, record, train_stats)
            progress.epoch, progress.step = epoch, 0
            progress.stale_epochs = broadcast(progress.stale_epochs, ctx.ddp)
            _save_state(ctx, files.run_dir)
            if record is not None:
                ctx.reporter.progress(EpochEnd(record))
    return False


def _train_epoch(ctx: StepContext, epoch: int, run_dir: Path) -> dict[str, Any]:
    """Train epoch `epoch` (from where a resumed run stopped in it); a Ctrl-C saves the state and ends the run."""
    config, progress = ctx.config, ctx.progress
    ctx.feed.start_epoch(epoch, progress.step * (config.batch_size or 1))
    set_trainable(ctx.model, frozen=config.freeze_backbone or epoch <= config.unfreeze_after)
    ctx.reporter.progress(EpochStart(epoch, config.epochs or 0, len(ctx.feed.train_loader)))
    try:
        train_stats = train_one_epoch(ctx)
    except NonFiniteLoss as exc:
        raise CarcliError(f"{exc}; {what_was_kept(run_dir, progress)}") from None
    if ctx.stop.is_set():
        _save_state(ctx, run_dir)
        raise Interrupted(
            f"interrupted in epoch {epoch} after step {progress.step}; resumable state saved in {run_dir} "
            f"(continue with: carcli train --resume {run_dir})"
        )
    return train_stats


def _write_epoch(ctx: StepContext, files: RunFiles, record: dict[str, Any], train_stats: dict[str, Any]) -> None:
    """Rank 0's end of an epoch: the profile line, the best epoch so far, the epoch's files."""
    if ctx.config.profile:
        ctx.reporter.info(profile_line(record["epoch"], train_stats["profile"]))
    update_best(ctx.progress, record)
    files.write_epoch(record, ctx.evaluated, ctx.progress)


def _save_state(ctx: StepContext, run_dir: Path) -> None:
    """Rank 0 writes the resumable state.st."""
    if ctx.ddp.main:
        save_state(run_dir, ctx.model, ctx.optimizer, ctx.ema, ctx.runtime.scaler, ctx.progress)


@contextlib.contextmanager
def _stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets `stop`: the loop stops after the current step (it saves a resumable state);
    a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _result(
    config: TrainConfig, progress: Progress, files: RunFiles, parameters: int, stopped_early: bool, dataset: DataSet,
    started: float,
) -> TrainResult:  # fmt: skip
    """What the run produced, with the next commands to run."""
    records = files.records
    seconds = time.perf_counter() - started
    images_per_s = float(np.mean([r["images_per_s"] for r in records])) if records else 0.0
    result = TrainResult(
        files.run_dir, progress.best_epoch, progress.best_top1, config.epochs or 0, parameters, images_per_s,
        seconds, records, stopped_early,
    )  # fmt: skip
    result.hints = next_steps(config, result, Path(dataset.root).resolve() == (data_home() / demo.DEMO_NAME).resolve())
    return result
