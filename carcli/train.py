"""The training loop, top to bottom: data -> model -> optimizer -> epochs -> checkpoints.

`train(config, reporter)` resolves the configuration (data set and architecture defaults, the
augmentation preset), builds everything and runs the epochs. Each epoch trains, validates (the
EMA weights when `ema` is on), appends a line to `metrics.jsonl` and `metrics.csv`, redraws
`curves.png`, writes `last.st` (and `best.st` when the fine-class top-1 improved) and the
resumable `state.st` into the run folder. Progress goes to the `Reporter` the caller hands in.

Batches reach the model through a `prepare` step: a plain move to the device for images decoded
and augmented by the loader, or, with `cache` on, uint8 batches from the prepared store
(`data.packed`) augmented on the device (`data.batch_augment`). `profile` splits each step's
time into loader wait, preparation and compute.

Launched by `torchrun`, the same code runs DistributedDataParallel: each process trains on its
shard of every epoch; only rank 0 validates, reports and writes files. Ctrl-C saves a resumable
state mid-epoch; `resume_config` + `train(..., resume=True)` continue a run exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from carcli import __version__
from carcli.checkpoint import read_metadata, save_checkpoint
from carcli.compiling import decide, has_compiler, initial_choice, wants_compile
from carcli.config import apply_options
from carcli.data import demo
from carcli.data.batch_augment import BatchAugment, batchable
from carcli.data.images import ImageDataset, find_unreadable
from carcli.data.layouts import DataSet, Sample, load_dataset
from carcli.data.packed import PackedDataset, PackedImages, load_or_build, store_path, store_side
from carcli.data.sampling import EpochSampler, class_balanced_weights
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.data.transforms import batch_mixer, eval_transform, train_transform
from carcli.device import cpu_has_bf16, resolve_device
from carcli.distill import Teachers, fingerprint, load_teachers
from carcli.errors import CarcliError, Interrupted, UsageError
from carcli.files import check_output_dir, write_csv, write_error, write_text
from carcli.losses import inverse_frequency_weights, multitask_loss
from carcli.models.heads import CarcliModel
from carcli.models.registry import create_model, get_arch
from carcli.models.weights import init_from_checkpoint, load_backbone_weights
from carcli.optim import build_optimizer, build_scheduler, fast_forward
from carcli.paths import RUNS_DIR, cache_home, data_home
from carcli.plots import plot_curves
from carcli.runstate import STATE_FILE, Progress, RunState, load_run_state, read_progress, save_run_state
from carcli.train_config import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig, check_config

RUN_FILES = ("best.st", "last.st", "metrics.jsonl", STATE_FILE)
RUN_FILE_COPIES = 6  # float32 copies of the weights a run folder holds: best, last, state (weights, EMA, 2 moments)
NO_VALIDATION: dict[str, Any] = {"loss": None, "top1": {}, "top5": {}}  # the val figures of a --val-fraction 0 run
RESUME_MAY_CHANGE = {"epochs", "workers", "device", "profile", "precision", "compile", "log", "log_uri"}


Prepare = Callable[[Tensor, tuple[int, int]], Tensor]  # (batch from the loader, (epoch, step)) -> model input


@dataclass
class Feed:
    """The data sets the loaders read and how their batches become model input on the device."""

    train_set: ImageDataset | PackedDataset
    val_set: ImageDataset | PackedDataset
    prepare_train: Prepare
    prepare_val: Prepare


class StepClock:
    """Splits each training step's wall time into phases (loader wait, preparation, compute) when enabled."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device, self.enabled = device, enabled
        self.totals: dict[str, float] = {}
        self.steps = 0
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to `phase` (waiting for the GPU first, so it is real)."""
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now
        self.steps += phase == "compute"

    def per_step(self) -> dict[str, float]:
        """Milliseconds per step of each phase ({} when disabled)."""
        return {phase: 1000 * total / max(1, self.steps) for phase, total in self.totals.items()}


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_epoch: int
    best_top1: dict[str, float]
    epochs: int
    parameters: int
    images_per_s: float
    seconds: float
    records: list[dict[str, Any]]
    stopped_early: bool = False
    hints: list[str] = field(default_factory=list)  # what to do next, as lines for the user


class Reporter(Protocol):
    """Receives progress; the CLI renders it with rich, tests may ignore it.

    `epoch_end` is called after the epoch's files and resumable state are written, so it may raise
    to end the run there (carcli.tune stops a pruned trial so); the exception leaves `train` as is.
    """

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, stats: dict[str, float]) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


class SilentReporter:
    """A Reporter that ignores everything."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, stats: dict[str, float]) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(
    config: TrainConfig,
    reporter: Reporter | None = None,
    model: CarcliModel | None = None,
    extra_meta: dict[str, Any] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run one training job as `config` says; returns the best metrics and where the files are.

    `model` continues training a model built elsewhere (a pruned one, say) instead of building
    `config.arch`; `extra_meta` joins the checkpoint metadata so such a model can be rebuilt.
    `resume` continues the run in `config.out` from its `state.st` (see `resume_config`).
    """
    started = time.perf_counter()
    check_config(config)  # flag values first, before any slow work
    if config.out and not resume:
        check_output_dir(Path(config.out))
    ddp = _init_distributed(config.device)
    try:
        return _train(config, reporter or SilentReporter(), model, extra_meta, resume, ddp, started)
    finally:
        if ddp.world > 1:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    reporter: Reporter,
    model: CarcliModel | None,
    extra_meta: dict[str, Any] | None,
    resume: bool,
    ddp: Dist,
    started: float,
) -> TrainResult:
    if not ddp.main:
        reporter = SilentReporter()
    device = resolve_device(config.device, ddp.local_rank if ddp.world > 1 else None)
    spec = get_arch(config.arch)  # an unknown arch is a usage error: before any notice about the data
    with _main_first(ddp):
        dataset = _load_data(config, reporter)
    asked_compile = config.compile
    _resolve_defaults(config, dataset, device, ddp)
    check_config(config)
    if asked_compile == "auto" and config.compile == "off":
        reporter.info("--compile auto: no C++ compiler found (torch.compile needs one on CPUs); training eagerly")
    taxonomy = Taxonomy.from_class_names(dataset.class_names)
    tasks = {task: len(names) for task, names in taxonomy.tasks.items()}
    _check_loss_weights(config.loss_weights, config.head, tasks)
    augment = config.augment_parts

    _seed_everything(config.seed + ddp.rank)
    _share_cores(device, config.workers or 0, ddp)
    if model is None and config.init:
        model, kept = init_from_checkpoint(Path(config.init), config.head, taxonomy.tasks, config.drop_rate)
        reporter.info(kept)
    if model is None:
        model = create_model(config.arch, config.head, tasks, config.pretrained, config.drop_rate)
    if config.weights and not resume:
        report = load_backbone_weights(model.backbone, Path(config.weights))
        reporter.info(f"loaded {report.loaded} backbone tensors from {config.weights} (matched by {report.mode})")
    model.to(device)
    teachers = _teachers(config, taxonomy, spec.mean, spec.std, device, reporter)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    precision = auto_precision(device, model) if config.precision == "auto" else config.precision
    autocast_dtype, scaler = _mixed_precision(precision, device)
    parameters = sum(p.numel() for p in model.parameters())
    run_dir = Path(config.out or "") if resume else _make_run_dir(config, ddp, parameters)
    state = load_run_state(run_dir) if resume else None
    train_samples, val_samples = _readable_splits(dataset, run_dir, reporter, ddp, config.val_fraction == 0)

    img_size = config.img_size or spec.img_size
    eval_size = config.eval_img_size or img_size
    sizes = (img_size, eval_size)
    feed = _feed(config, train_samples, val_samples, sizes, spec.mean, spec.std, device, reporter, ddp)
    train_set, val_set = feed.train_set, feed.val_set
    train_labels = [s.label for s in train_samples]
    balance = class_balanced_weights(train_labels) if config.balance == "sampler" else None
    sampler = EpochSampler(len(train_set), config.seed, balance, ddp.world, ddp.rank)
    train_loader = _loader(train_set, config, sampler)
    val_loader = _loader(val_set, config, None)
    steps_per_epoch = len(train_loader)
    fine_to = _fine_to_tensors(taxonomy, device)
    class_weights = _class_weights(config, torch.tensor(train_labels, device=device), fine_to, tasks)
    mixer = batch_mixer(augment, tasks[FINE])

    optimizer = build_optimizer(
        model,
        config.optimizer,
        config.lr or 0.0,
        config.weight_decay,
        config.momentum,
        config.backbone_lr_scale,
    )
    updates_per_epoch = -(-steps_per_epoch // config.accum_steps)
    assert config.epochs is not None
    scheduler = build_scheduler(
        optimizer,
        config.schedule,
        config.epochs,
        updates_per_epoch,
        config.warmup_epochs,
        config.milestones,
        config.gamma,
    )
    ema = _make_ema(model, config)
    progress = Progress()
    if state is not None:
        progress = _restore(state, model, optimizer, scheduler, ema, scaler)
    net = _wrap_for_training(model, config, ddp, device)

    meta_base = {**_metadata_base(config, spec.mean, spec.std, sizes, taxonomy, dataset), **(extra_meta or {})}
    records = _previous_records(run_dir, progress.epoch) if resume else []
    if ddp.main:
        run_info = {**_run_info(device, precision, parameters, dataset, ddp), **_teacher_sums(config, run_dir, resume)}
        _write_json(run_dir / "config.json", {**meta_base["train"], "run": run_info})
    reporter.info(
        f"{config.arch} + {config.head} head, {parameters / 1e6:.2f} M parameters, {img_size} px"
        f"{f' (validated at {eval_size} px)' if eval_size != img_size else ''}, "
        f"on {device} in {precision}{f' x {ddp.world} processes' if ddp.world > 1 else ''}; "
        f"{len(train_samples)} train / {len(val_samples)} {dataset.eval_split} images; run folder {run_dir}"
        + (f"; resuming after epoch {progress.epoch}, step {progress.step}" if resume else "")
    )
    writer = _tensorboard(run_dir, config, ddp)
    undecided_compile = config.compile == "auto"
    stopped_early = False
    with _stop_on_sigint() as stop, _closing(writer):  # also when a reporter stops the run (a pruned trial)
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if config.patience and progress.stale_epochs >= config.patience:
                stopped_early = True
                reporter.info(f"early stop: no better {FINE} top-1 for {config.patience} epochs")
                break
            epoch_start = time.perf_counter()
            sampler.set_epoch(epoch)
            train_loader.generator.manual_seed(config.seed * 10_007 + epoch)  # workers' seeds: per epoch, resumable
            sampler.set_start(progress.step * (config.batch_size or 1))
            _set_trainable(model, frozen=config.freeze_backbone or epoch <= config.unfreeze_after)
            reporter.epoch_start(epoch, config.epochs, len(train_loader))
            try:
                train_stats = _train_one_epoch(
                    net, model, train_loader, feed.prepare_train, optimizer, scheduler, scaler, ema, autocast_dtype,
                    fine_to, class_weights, mixer, config, device, reporter, progress, stop, teachers,
                )  # fmt: skip
            except NonFiniteLoss as exc:
                raise CarcliError(f"{exc}; {_what_was_kept(run_dir, progress)}") from None
            if stop.is_set():
                _save_state(run_dir, model, optimizer, ema, scaler, progress, ddp)
                raise Interrupted(
                    f"interrupted in epoch {epoch} after step {progress.step}; resumable state saved in {run_dir} "
                    f"(continue with: carcli train --resume {run_dir})"
                )
            if undecided_compile:  # config keeps "auto": a rerun of this config decides afresh
                undecided_compile = False
                steps_left = (config.epochs - epoch) * steps_per_epoch
                net = _auto_compile(net, model, config, train_stats, steps_left, reporter, ddp)
            record = None
            if ddp.main:
                evaluated = ema.module if ema is not None else model
                val_stats = (
                    validate(
                        evaluated, val_loader, fine_to, device, autocast_dtype, config.channels_last, feed.prepare_val
                    )
                    if val_samples
                    else NO_VALIDATION
                )
                record = _epoch_record(epoch, train_stats, val_stats, time.perf_counter() - epoch_start)
                if config.profile:
                    reporter.info(_profile_line(epoch, train_stats["profile"]))
                records.append(record)
                _update_best(progress, record)
                _write_epoch_files(run_dir, records, evaluated, meta_base, progress, writer)
            progress.epoch, progress.step = epoch, 0
            progress.stale_epochs = _broadcast(progress.stale_epochs, ddp)
            _save_state(run_dir, model, optimizer, ema, scaler, progress, ddp)
            if record is not None:
                reporter.epoch_end(record)
    if ddp.main and records and val_samples:  # --val-fraction 0: nothing to fit the hierarchy weights on
        evaluated = ema.module if ema is not None else model
        _report_hierarchy(run_dir, evaluated, val_loader, device, autocast_dtype, config, feed.prepare_val, reporter)
    seconds = time.perf_counter() - started
    images_per_s = float(np.mean([r["images_per_s"] for r in records])) if records else 0.0
    result = TrainResult(
        run_dir, progress.best_epoch, progress.best_top1, config.epochs, parameters, images_per_s, seconds, records,
        stopped_early,
    )  # fmt: skip
    result.hints = next_steps(config, result, Path(dataset.root).resolve() == (data_home() / demo.DEMO_NAME).resolve())
    return result


LOW_SCRATCH_TOP1 = 0.5  # below this fine top-1, a from-scratch run on real data gets the pretrained-weights hint


def next_steps(config: TrainConfig, result: TrainResult, on_demo: bool) -> list[str]:
    """The commands to run on this run's checkpoint; advice when a from-scratch run on real data scored low."""
    best = result.run_dir / "best.st"
    hints = [f"next: carcli eval {best}", f"      carcli predict IMAGES... --model {best}"]
    top1 = result.best_top1.get(FINE)
    from_scratch = not (config.pretrained or config.weights)
    if from_scratch and not on_demo and top1 is not None and top1 < LOW_SCRATCH_TOP1:
        hints.append(
            f"hint: {FINE} top-1 {100 * top1:.1f}% from random weights; fine-grained classes need ImageNet "
            "features: add --pretrained (downloads timm's weights) or --weights FILE (docs/train.md)"
        )
    return hints


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The configuration of the run in `run_dir` (its config.json), with `overrides` (only `epochs` may grow).

    A finished run can be extended by a larger `epochs`; other options stay as the run started.
    """
    path = run_dir / "config.json"
    if not (run_dir / STATE_FILE).is_file() or not path.is_file():
        raise CarcliError(f"--resume: {run_dir} is not a carcli run folder with a saved state ({STATE_FILE})")
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k != "run"}
    config = TrainConfig(**apply_options(TrainConfig, saved, str(path)))
    changed = {k: v for k, v in overrides.items() if getattr(config, k) != v}
    if set(changed) - RESUME_MAY_CHANGE:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(set(changed) - RESUME_MAY_CHANGE))
        allowed = ", ".join(f"--{k}" for k in sorted(RESUME_MAY_CHANGE))
        raise UsageError(f"--resume continues a run as it started; only {allowed} may change ({names})")
    for key, value in changed.items():
        setattr(config, key, value)
    config.out = str(run_dir)
    done = read_progress(run_dir).epoch
    if done >= (config.epochs or 0):
        raise UsageError(f"{run_dir} has finished its {done} epochs; pass a larger --epochs to extend it")
    return config


# ---------------------------------------------------------------- set-up


def _load_data(config: TrainConfig, reporter: Reporter) -> DataSet:
    if config.data is not None:
        dataset = load_dataset(Path(config.data), config.val_fraction, config.seed)
        if len(dataset.class_names) < 2:
            raise CarcliError(
                f"{dataset.root} has only one class ({dataset.class_names[0]!r}): a classifier needs at least "
                "two; add a folder (or manifest label) for another class"
            )
        for note in dataset.notes:
            reporter.warn(note)
        return dataset
    root = demo.generate_demo(data_home() / demo.DEMO_NAME)
    reporter.info(
        f"no --data given: training on carcli's generated demo set ({root}). "
        "To train on Stanford Cars, pass --data DIR with its devkit folder (docs/data.md lists the layouts)."
    )
    return load_dataset(root, config.val_fraction, config.seed)


def _resolve_defaults(config: TrainConfig, dataset: DataSet, device: torch.device, ddp: Dist) -> None:
    """Fill unset options: the demo set recommends its own size and schedule; others use general defaults."""
    is_demo = config.data is None
    if config.init:  # a later stage of a trained model: its architecture
        config.arch = read_metadata(Path(config.init))["arch"]
    if config.img_size is None and is_demo:
        config.img_size = demo.DEMO_IMG_SIZE
    if config.img_size is None:
        config.img_size = get_arch(config.arch).img_size
    if config.eval_img_size is None:
        config.eval_img_size = config.img_size
    if config.epochs is None:
        config.epochs = demo.DEMO_EPOCHS if is_demo else DEFAULT_EPOCHS
    if config.batch_size is None:
        config.batch_size = demo.DEMO_BATCH_SIZE if is_demo else DEFAULT_BATCH_SIZE
    if config.lr is None:
        demo_lr = is_demo and config.optimizer == "adamw"
        config.lr = demo.DEMO_LR if demo_lr else DEFAULT_LR.get(config.optimizer, DEFAULT_LR["adamw"])
    if config.workers is None:
        cores = max(1, (os.cpu_count() or 1) // ddp.world)
        if config.cache and batchable(config.augment_parts):
            config.workers = 0  # a batch is a memory copy; every core goes to the model
        else:
            config.workers = min(8, cores) if device.type == "cuda" else min(8, cores // 2)
    config.compile = initial_choice(config.compile, device.type, has_compiler())
    if config.data is None:
        config.data = str(dataset.root)
    for name, value in asdict(config.augment_parts).items():  # record the preset's values: runs describe themselves
        setattr(config, name, value)


def _teachers(
    config: TrainConfig, taxonomy: Taxonomy, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
    reporter: Reporter,
) -> Teachers | None:  # fmt: skip
    """The --teacher models on `device` (None without any), announced in one line."""
    if not config.teacher:
        return None
    teachers = load_teachers(config.teacher, taxonomy.tasks, mean, std, device)
    reporter.info(
        f"distilling from {', '.join(config.teacher)} (weight {config.distill_weight:g}, "
        f"temperature {config.distill_temperature:g}; teachers at {', '.join(map(str, teachers.sizes))} px)"
    )
    return teachers


def _report_hierarchy(
    run_dir: Path, model: nn.Module, loader: DataLoader, device: torch.device, autocast_dtype: torch.dtype | None,
    config: TrainConfig, prepare: Prepare, reporter: Reporter,
) -> None:  # fmt: skip
    """Fit and store best.st's hierarchy weights (multi-task heads), said in one line."""
    fit = fit_hierarchy(run_dir, copy.deepcopy(model), loader, device, autocast_dtype, config.channels_last, prepare)
    if fit is not None:
        weights = ", ".join(f"{task} {w:g}" for task, w in fit["weights"].items())
        reporter.info(
            f"hierarchy weights fitted on validation ({weights}): {FINE} top-1 {fit['val_top1']:.1%} "
            f"combined, {fit['val_plain_top1']:.1%} fine head alone (eval/predict --hierarchy use them)"
        )


def _teacher_sums(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, list[str]]:
    """{"teacher_sha256": [...]} for config.json's run entry; a resumed run refuses teachers whose files changed."""
    if not config.teacher:
        return {}
    sums = [fingerprint(path) for path in config.teacher]
    started = json.loads((run_dir / "config.json").read_text()).get("run", {}) if resume else {}
    if resume and started.get("teacher_sha256") != sums:
        raise CarcliError(
            f"--resume: the teacher files ({', '.join(config.teacher)}) are not the ones this run started with; "
            "restore them or start a new run"
        )
    return {"teacher_sha256": sums}


def _check_loss_weights(weights: dict[str, float], head: str, tasks: dict[str, int]) -> None:
    predicted = [FINE] if head == "linear" else list(tasks)
    for task, weight in weights.items():
        if task not in predicted:
            raise UsageError(f"--loss-weights names {task!r}, but this model predicts only {', '.join(predicted)}")
        if weight < 0:
            raise UsageError(f"--loss-weights: the weight of {task!r} must be 0 or more")


def _make_run_dir(config: TrainConfig, ddp: Dist, parameters: int) -> Path:
    """The run folder, made; refused when it holds a run, cannot be written or lacks room for the checkpoints."""
    if config.out:
        run_dir = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = RUNS_DIR / f"{stamp}-{config.arch.replace(':', '-')}-{config.head}"
    run_dir = Path(_broadcast(str(run_dir), ddp))  # every process uses rank 0's name
    if ddp.main:
        taken = [name for name in RUN_FILES if (run_dir / name).exists()]
        if taken:
            raise CarcliError(
                f"{run_dir} already holds a run ({', '.join(taken)}); choose another --out or continue it with --resume"
            )
        check_output_dir(run_dir, needed_bytes=parameters * 4 * RUN_FILE_COPIES)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(run_dir, exc) from None
    config.out = str(run_dir)
    return run_dir


def _readable_splits(
    dataset: DataSet, run_dir: Path, reporter: Reporter, ddp: Dist, everything: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """Train and eval samples without the files that cannot be decoded (listed in unreadable.txt).

    `everything` (--val-fraction 0): every train and val image is for training and none for validation.
    """
    train_samples, val_samples = dataset.split("train"), dataset.split(dataset.eval_split)
    if everything:
        train_samples, val_samples = dataset.split("train") + dataset.split("val"), []
        reporter.info(
            f"--val-fraction 0: training on all {len(train_samples)} train and val images, without validation; "
            "best.st is a copy of last.st (the last epoch)"
        )
    elif dataset.eval_split == "train":
        raise CarcliError(f"{dataset.root} gives no images to validate on; lower classes or raise --val-fraction")
    bad = set(find_unreadable([s.path for s in train_samples + val_samples]))
    if bad:
        listing = run_dir / "unreadable.txt"
        if ddp.main:
            write_text(listing, "".join(f"{p}\n" for p in sorted(bad)))
        reporter.warn(f"skipped {len(bad)} unreadable images; list written to {listing}")
        train_samples = [s for s in train_samples if s.path not in bad]
        val_samples = [s for s in val_samples if s.path not in bad]
    if not train_samples or not (val_samples or everything):
        raise CarcliError(f"{dataset.root}: no readable images left in the train or validation split")
    return train_samples, val_samples


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_distributed(device_name: str) -> Dist:
    """Join the torchrun job when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def _main_first(ddp: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (say, generating the demo set), then the others."""
    if ddp.world > 1 and not ddp.main:
        dist.barrier()
    yield
    if ddp.world > 1 and ddp.main:
        dist.barrier()


def _broadcast(value: Any, ddp: Dist) -> Any:
    """Rank 0's `value` on every process."""
    if ddp.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _share_cores(device: torch.device, workers: int, ddp: Dist) -> None:
    """On CPU, leave one core per loader worker: oversubscribed OpenMP threads slow training many times over."""
    if device.type == "cpu" and (workers or ddp.world > 1):
        cores = max(1, (os.cpu_count() or 1) // ddp.world)
        torch.set_num_threads(max(1, cores - workers))


def _worker_seed(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: ImageDataset | PackedDataset, config: TrainConfig, sampler: EpochSampler | None) -> DataLoader:
    """Training batches in the sampler's order, or evaluation batches in file order (sampler None).

    Workers start afresh each epoch from a generator seeded by the sampler's epoch, so a resumed
    run draws the same augmentation as an uninterrupted one.
    """
    workers = config.workers or 0
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=sampler is not None and len(sampler) > (config.batch_size or 1),  # no 1-image batch-norm steps
        num_workers=workers,
        persistent_workers=sampler is None and workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_seed,
        generator=torch.Generator().manual_seed(config.seed),
    )


def _feed(
    config: TrainConfig,
    train_samples: list[Sample],
    val_samples: list[Sample],
    sizes: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    reporter: Reporter,
    ddp: Dist,
) -> Feed:
    """Decode-every-epoch data sets, or (`cache`) the prepared store with augmentation on the device.

    `sizes`: the training and the validation image size."""
    augment = config.augment_parts
    img_size, eval_size = sizes
    crop = config.bbox_margin if config.crop_to_bbox else None

    def to_device(images: Tensor, key: tuple[int, int]) -> Tensor:
        return images.to(device, non_blocking=True)

    if not config.cache:
        train_set = ImageDataset(train_samples, train_transform(img_size, mean, std, augment), img_size, crop)
        return Feed(train_set, ImageDataset(val_samples, eval_transform(eval_size, mean, std), eval_size, crop),
                    to_device, to_device)  # fmt: skip
    with _main_first(ddp):
        train_store, val_store = (
            _store(samples, store_side(size, training), crop, device, reporter)
            for samples, size, training in (
                (train_samples, img_size, True),
                (val_samples or train_samples[:1], eval_size, False),
            )
        )  # --val-fraction 0: a one-image placeholder val store that is never read
    val_feed = PackedDataset(val_store), BatchAugment(eval_size, mean, std, None, device)
    if batchable(augment):
        on_device = BatchAugment(img_size, mean, std, augment, device, config.seed + ddp.rank)
        return Feed(PackedDataset(train_store), val_feed[0], on_device, val_feed[1])
    reporter.info("--cache: affine, RandAugment and TrivialAugment have no batched form; augmenting per image")
    per_image = PackedDataset(train_store, train_transform(img_size, mean, std, augment))
    return Feed(per_image, val_feed[0], to_device, val_feed[1])


def _store(
    samples: list[Sample], side: int, crop: float | None, device: torch.device, reporter: Reporter
) -> PackedImages:
    """The prepared store of `samples`, built (JPEGs decoded on the GPU when training there) if not yet there."""
    path = store_path(samples, side, cache_home(), crop)
    if not path.is_file():
        reporter.info(f"--cache: preparing {len(samples)} images at {side} px, once, into {path}")
    return load_or_build(samples, side, cache_home(), crop, device=device if device.type == "cuda" else None)


def _profile_line(epoch: int, per_step: dict[str, float]) -> str:
    total = sum(per_step.values()) or 1.0
    parts = ", ".join(f"{phase} {ms:.1f} ms ({100 * ms / total:.0f} %)" for phase, ms in per_step.items())
    return f"profile, epoch {epoch}, per step: {parts}"


def _fine_to_tensors(taxonomy: Taxonomy, device: torch.device) -> dict[str, Tensor]:
    """For each task, a lookup from fine label to that task's label (identity for the fine task)."""
    maps = {FINE: torch.arange(len(taxonomy.tasks[FINE]))}
    maps.update({task: torch.tensor(index) for task, index in taxonomy.fine_to.items()})
    return {task: m.to(device) for task, m in maps.items()}


def _class_weights(
    config: TrainConfig, labels: Tensor, fine_to: dict[str, Tensor], tasks: dict[str, int]
) -> dict[str, Tensor] | None:
    """`--balance weights`: inverse-frequency loss weights for every task, from the training labels."""
    if config.balance != "weights":
        return None
    return {task: inverse_frequency_weights(fine_to[task][labels], tasks[task]) for task in tasks}


def _make_ema(model: nn.Module, config: TrainConfig) -> torch.optim.swa_utils.AveragedModel | None:
    if not config.ema:
        return None
    from torch.optim.swa_utils import AveragedModel

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        # decay warms up as in timm's ModelEmaV3: (1 + n) / (10 + n), capped at ema_decay
        n = int(num_averaged)
        decay = min(config.ema_decay, (1 + n) / (10 + n))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.to(avg.dtype), 1 - decay)
            else:  # counters such as num_batches_tracked
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _mixed_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype (None: full precision) and grad scaler (fp16 only) for fp32, bf16 or fp16 on `device`."""
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return torch.bfloat16, None


def auto_precision(device: torch.device, model: nn.Module) -> str:
    """What `--precision auto` trains `model` in on `device`.

    GPUs: bf16 where supported, else fp16. CPUs: bf16 when the CPU has native bf16 instructions and
    the model has no depthwise convolutions; there bf16 roughly doubles the step of dense nets
    (resnet34, resnext50) but slows depthwise ones (GhostNet, EfficientNet-Lite0), so those keep
    fp32, as does every model on CPUs without bf16 instructions (docs/benchmarks.md).
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() and not has_depthwise_conv(model) else "fp32"


def has_depthwise_conv(model: nn.Module) -> bool:
    """Whether any convolution of `model` is depthwise (one filter group per input channel)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def _wrap_for_training(model: CarcliModel, config: TrainConfig, ddp: Dist, device: torch.device) -> nn.Module:
    """DDP when distributed, torch.compile when asked; checkpoints always come from the plain `model`."""
    net: nn.Module = model
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        staged = config.freeze_backbone or config.unfreeze_after > 0
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=staged)
    return _compiled(net) if wants_compile(config.compile) else net


def _compiled(net: nn.Module) -> nn.Module:
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a part that fails to compile runs eagerly, the run goes on
    return torch.compile(net)  # type: ignore[return-value]


def _auto_compile(
    net: nn.Module, model: CarcliModel, config: TrainConfig, train_stats: dict[str, Any], steps_left: int,
    reporter: Reporter, ddp: Dist,
) -> nn.Module:  # fmt: skip
    """`--compile auto` on a CPU, after the first epoch: compile `net` for the rest of the run if it pays
    (carcli.compiling.decide, from the measured step time); every process follows rank 0's decision."""
    step_seconds = (config.batch_size or 1) / max(1e-9, train_stats["images_per_s"])
    decision = _broadcast(decide(step_seconds, steps_left, has_depthwise_conv(model)), ddp)
    reporter.info(decision.why)
    return _compiled(net) if decision.compile else net


def _set_trainable(model: CarcliModel, frozen: bool) -> None:
    """Freeze (no gradients, batch-norm statistics fixed) or unfreeze the backbone."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.train()
    if frozen:
        model.backbone.eval()


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer tensors their parameter's memory layout (channels_last weights keep NCHW state
    when loaded); fused AdamW pairs elements by position, so a layout mismatch would corrupt the update."""
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                values[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _restore(
    state: RunState,
    model: CarcliModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: torch.optim.swa_utils.AveragedModel | None,
    scaler: torch.amp.GradScaler | None,
) -> Progress:
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    _match_param_layout(optimizer)
    fast_forward(scheduler, state.progress.global_step)  # after the optimizer: its lr is the (maybe longer) schedule's
    if ema is not None and state.ema is not None:
        ema.load_state_dict(state.ema)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    return state.progress


def _save_state(
    run_dir: Path,
    model: CarcliModel,
    optimizer: torch.optim.Optimizer,
    ema: torch.optim.swa_utils.AveragedModel | None,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    ddp: Dist,
) -> None:
    if not ddp.main:
        return
    save_run_state(
        run_dir,
        RunState(
            progress=progress,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None,
        ),
    )


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop after the current step (it saves a resumable state);
    a second one interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _closing(writer: Any) -> Iterator[None]:
    """Close the TensorBoard writer (if any) however the epochs end."""
    try:
        yield
    finally:
        if writer is not None:
            writer.close()


def _tensorboard(run_dir: Path, config: TrainConfig, ddp: Dist) -> Any:
    if not (config.tensorboard and ddp.main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---------------------------------------------------------------- one epoch


def _targets(labels: Tensor, fine_to: dict[str, Tensor], tasks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each task's targets from fine labels: indices, or class probabilities for mixed (soft) fine labels."""
    if labels.ndim == 1:
        return {task: fine_to[task][labels] for task in tasks}
    return {task: labels @ F.one_hot(fine_to[task]).to(labels.dtype) for task in tasks}


def _train_one_epoch(
    net: nn.Module,
    model: CarcliModel,
    loader: DataLoader,
    prepare: Prepare,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ema: torch.optim.swa_utils.AveragedModel | None,
    autocast_dtype: torch.dtype | None,
    fine_to: dict[str, Tensor],
    class_weights: dict[str, Tensor] | None,
    mixer: Any,
    config: TrainConfig,
    device: torch.device,
    reporter: Reporter,
    progress: Progress,
    stop: threading.Event,
    teachers: Teachers | None = None,
) -> dict[str, Any]:
    seen, loss_sum, correct = 0, 0.0, 0
    lr = optimizer.param_groups[-1]["lr"]
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    last = len(loader) - 1
    clock = StepClock(device, config.profile)
    for index, (images, labels) in enumerate(loader):
        clock.lap("load")
        images = prepare(images, (progress.epoch + 1, progress.step))
        labels = labels.to(device, non_blocking=True)
        clock.lap("prepare")
        hard = labels
        if mixer is not None:
            images, labels = mixer(images, labels)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        update = (index + 1) % config.accum_steps == 0 or index == last
        sync = contextlib.nullcontext() if update or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = net(images)
                targets = _targets(labels, fine_to, logits)
                loss, _ = multitask_loss(
                    logits, targets, config.loss_weights, config.label_smoothing, class_weights, config.loss == "cot"
                )
                if teachers is not None:
                    loss = loss + config.distill_weight * teachers.loss(images, logits, config.distill_temperature)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(loss.item())
            _backward(loss / config.accum_steps, scaler)
        if update:
            lr = optimizer.param_groups[-1]["lr"]
            _optimizer_step(model, optimizer, scaler, config.clip_grad)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            progress.global_step += 1
        progress.step += 1
        clock.lap("compute")
        batch = hard.numel()
        seen += batch
        loss_sum += loss.item() * batch
        correct += int((logits[FINE].argmax(1) == hard).sum())
        reporter.step({"loss": loss_sum / seen, "top1": correct / seen, "images_per_s": seen / _since(start)})
        if stop.is_set() and update:
            break
    return {
        "loss": loss_sum / max(1, seen),
        "top1": correct / max(1, seen),
        "images_per_s": seen / _since(start),
        "lr": lr,
        "profile": clock.per_step(),
    }


class NonFiniteLoss(CarcliError):
    """The training loss became NaN or infinite; the epoch stops before the weights take the bad step."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss became {value} (not finite) and the run stopped")


def _what_was_kept(run_dir: Path, progress: Progress) -> str:
    """The truth about the run folder after a failed epoch: nothing yet, or the files of the last finished epoch."""
    if progress.epoch == 0 or not (run_dir / "last.st").is_file():
        return f"no epoch had finished, so {run_dir} holds no checkpoint yet; try a lower --lr or --clip-grad"
    best = f", best.st from epoch {progress.best_epoch}" if (run_dir / "best.st").is_file() else ""
    return (
        f"{run_dir} keeps epoch {progress.epoch}'s files (last.st{best}, state.st); "
        "try a lower --lr or --clip-grad in a new run"
    )


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


def _optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, clip_grad: float
) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _since(start: float) -> float:
    return max(1e-9, time.perf_counter() - start)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    fine_to: dict[str, Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    prepare: Prepare | None = None,
) -> dict[str, Any]:
    """Mean loss (sum over tasks, no smoothing) and top-1 / top-5 per task on a loader."""
    seen, loss_sum = 0, 0.0
    top1: dict[str, int] = {}
    top5: dict[str, int] = {}
    for logits, labels in _eval_batches(model, loader, device, autocast_dtype, channels_last, prepare):
        targets = _targets(labels, fine_to, logits)
        loss, _ = multitask_loss({t: z.float() for t, z in logits.items()}, targets)
        seen += labels.numel()
        loss_sum += loss.item() * labels.numel()
        for task, z in logits.items():
            k = min(5, z.shape[1])
            hits = (z.topk(k, dim=1).indices == targets[task][:, None]).int()
            top1[task] = top1.get(task, 0) + int(hits[:, 0].sum())
            top5[task] = top5.get(task, 0) + int(hits.sum())
    return {
        "loss": loss_sum / max(1, seen),
        "top1": {t: c / max(1, seen) for t, c in top1.items()},
        "top5": {t: c / max(1, seen) for t, c in top5.items()},
    }


def _eval_batches(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
    prepare: Prepare | None,
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """({task: logits}, fine labels) of every evaluation batch, the model in eval mode."""
    model.eval()
    for index, (images, labels) in enumerate(loader):
        images = prepare(images, (0, index)) if prepare else images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        yield logits, labels.to(device)


@torch.no_grad()
def fit_hierarchy(
    run_dir: Path,
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    prepare: Prepare | None = None,
) -> dict[str, Any] | None:
    """Fit the hierarchy weights of best.st on the validation `loader` and store them in best.st and last.st.

    `model` is a copy of the trained model (its structure: pruned, masked) that takes best.st's tensors.
    Returns the fit (None for a model without make/type heads; nothing is written then)."""
    from carcli.checkpoint import load_checkpoint
    from carcli.hierarchy import fit_weights

    best, meta = load_checkpoint(run_dir / "best.st")
    model.load_state_dict(best)
    chunks: dict[str, list[Tensor]] = {}
    for logits, labels in _eval_batches(model, loader, device, autocast_dtype, channels_last, prepare):
        for task, z in {**logits, "labels": labels}.items():
            chunks.setdefault(task, []).append(z.float().softmax(1).cpu() if task != "labels" else z.cpu())
    labels = torch.cat(chunks.pop("labels"))
    fit = fit_weights({task: torch.cat(parts) for task, parts in chunks.items()}, labels, meta)
    for name in ("best.st", "last.st") if fit else ():
        state, saved = load_checkpoint(run_dir / name)
        save_checkpoint(run_dir / name, state, {**saved, "hierarchy": fit})
    return fit


# ---------------------------------------------------------------- records and files


def _epoch_record(epoch: int, train_stats: dict[str, float], val_stats: dict[str, Any], seconds: float) -> dict:
    return {
        "epoch": epoch,
        "lr": train_stats["lr"],
        "train_loss": train_stats["loss"],
        "train_top1": train_stats["top1"],
        "val_loss": val_stats["loss"],
        "val_top1": val_stats["top1"],
        "val_top5": val_stats["top5"],
        "images_per_s": train_stats["images_per_s"],
        "seconds": seconds,
        **({"profile": train_stats["profile"]} if train_stats["profile"] else {}),
    }


def _update_best(progress: Progress, record: dict[str, Any]) -> None:
    if not record["val_top1"]:  # no validation: the latest epoch is the best one
        progress.best_top1, progress.best_epoch, progress.stale_epochs = {}, record["epoch"], 0
    elif not progress.best_top1 or record["val_top1"][FINE] > progress.best_top1[FINE]:
        progress.best_top1, progress.best_epoch, progress.stale_epochs = dict(record["val_top1"]), record["epoch"], 0
    else:
        progress.stale_epochs += 1


def _write_epoch_files(
    run_dir: Path,
    records: list[dict[str, Any]],
    model: nn.Module,
    meta_base: dict[str, Any],
    progress: Progress,
    writer: Any,
) -> None:
    """metrics.jsonl (appended), metrics.csv, curves.png, last.st and, when it improved, best.st."""
    record = records[-1]
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    _write_csv(run_dir / "metrics.csv", records)
    plot_curves(records, run_dir / "curves.png")
    metrics = {
        "epoch": record["epoch"],
        "top1": record["val_top1"],
        "top5": record["val_top5"],
        "best_epoch": progress.best_epoch,
        "best_top1": progress.best_top1,
    }
    state = model.state_dict()
    save_checkpoint(run_dir / "last.st", state, {**meta_base, "metrics": metrics})
    if progress.best_epoch == record["epoch"]:
        save_checkpoint(run_dir / "best.st", state, {**meta_base, "metrics": metrics})
    if writer is not None:
        for name, value in flat_record(record).items():
            if name != "epoch" and value is not None:
                writer.add_scalar(name.replace("_", "/", 1), value, record["epoch"])  # train/loss, val/top1/model
        writer.flush()


def flat_record(record: dict[str, Any]) -> dict[str, float]:
    """One level: val_top1 {"model": x} -> val_top1_model."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{task}": v for task, v in value.items()})
        else:
            flat[key] = value
    return flat


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    rows = [flat_record(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # --profile may join on resume
    write_csv(path, columns, [[row.get(column, "") for column in columns] for row in rows])


def _previous_records(run_dir: Path, epochs_done: int) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of the epochs the saved state covers; later (or torn) lines are dropped."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("epoch", 0) <= epochs_done:
                records.append(record)
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _metadata_base(
    config: TrainConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    sizes: tuple[int, int],
    taxonomy: Taxonomy,
    dataset: DataSet,
) -> dict[str, Any]:
    return {
        "arch": config.arch,
        "head": config.head,
        "img_size": sizes[1],  # what eval, predict and export feed the model
        "train_img_size": sizes[0],
        "mean": list(mean),
        "std": list(std),
        "tasks": taxonomy.tasks,
        "taxonomy": taxonomy.to_dict(),
        "train": asdict(config),
        "data": {"root": str(dataset.root), "layout": dataset.layout, "eval_split": dataset.eval_split},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _run_info(device: torch.device, precision: str, parameters: int, dataset: DataSet, ddp: Dist) -> dict[str, Any]:
    return {
        "carcli": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "precision": precision,
        "processes": ddp.world,
        "parameters": parameters,
        "data_layout": dataset.layout,
        "classes": len(dataset.class_names),
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
