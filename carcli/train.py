"""The training loop, top to bottom: data -> model -> optimizer -> epochs -> checkpoints.

`train(config, reporter)` resolves the configuration (data set defaults, architecture
defaults), builds everything, and runs the epochs. Each epoch trains, validates, appends a
line to `metrics.jsonl` and writes `last.st` (and `best.st` when the fine-class top-1
improved) into the run folder. Progress goes to the `Reporter` the caller hands in.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from carcli import __version__
from carcli.checkpoint import save_checkpoint
from carcli.data import demo
from carcli.data.images import ImageDataset, find_unreadable
from carcli.data.layouts import DataSet, Sample, load_dataset
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.data.transforms import eval_transform, train_transform
from carcli.errors import CarcliError, UsageError
from carcli.models.heads import CarcliModel, multitask_loss
from carcli.models.registry import create_model, get_arch
from carcli.models.weights import load_backbone_weights
from carcli.paths import RUNS_DIR, data_home

DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
OPTIMIZERS = tuple(DEFAULT_LR)
DEVICES = ("auto", "cpu", "cuda")
RUN_FILES = ("best.st", "last.st", "metrics.jsonl")


@dataclass
class TrainConfig:
    """Every option of a training run; `None` means "the data set's or architecture's default"."""

    data: str | None = None
    arch: str = "ghostnet"
    head: str = "linear"
    img_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    loss_weights: dict[str, float] = field(default_factory=dict)
    drop_rate: float = 0.0
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.2
    weights: str | None = None
    pretrained: bool = False
    out: str | None = None
    workers: int | None = None


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


class Reporter(Protocol):
    """Receives progress; the CLI renders it with rich, tests may ignore it."""

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


def train(
    config: TrainConfig,
    reporter: Reporter | None = None,
    model: CarcliModel | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Run one training job as `config` says; returns the best metrics and where the files are.

    `model` continues training a model built elsewhere (a pruned one, say) instead of building
    `config.arch`; `extra_meta` joins the checkpoint metadata so such a model can be rebuilt.
    """
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    _check_config(config)  # flag values first, before any slow work
    device = _resolve_device(config.device)
    dataset = _load_data(config, reporter)
    _resolve_defaults(config, dataset, device)
    _check_config(config)
    taxonomy = Taxonomy.from_class_names(dataset.class_names)
    tasks = {task: len(names) for task, names in taxonomy.tasks.items()}
    _check_loss_weights(config.loss_weights, config.head, tasks)

    _seed_everything(config.seed)
    _share_cores(device, config.workers or 0)
    spec = get_arch(config.arch)
    if model is None:
        model = create_model(config.arch, config.head, tasks, config.pretrained, config.drop_rate)
    if config.weights:
        report = load_backbone_weights(model.backbone, Path(config.weights))
        reporter.info(f"loaded {report.loaded} backbone tensors from {config.weights} (matched by {report.mode})")
    model.to(device)
    parameters = sum(p.numel() for p in model.parameters())
    run_dir = _make_run_dir(config)  # only once everything the user asked for is known to work
    train_samples, val_samples = _readable_splits(dataset, run_dir, reporter)

    img_size = config.img_size or spec.img_size
    train_loader = _loader(
        ImageDataset(train_samples, train_transform(img_size, spec.mean, spec.std), img_size), config, True
    )
    val_loader = _loader(
        ImageDataset(val_samples, eval_transform(img_size, spec.mean, spec.std), img_size), config, False
    )
    fine_to = _fine_to_tensors(taxonomy, device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = len(train_loader)
    scheduler = _cosine_with_warmup(optimizer, config, steps_per_epoch)
    autocast_dtype, scaler = _mixed_precision(device)

    meta_base = {**_metadata_base(config, spec.mean, spec.std, img_size, taxonomy, dataset), **(extra_meta or {})}
    _write_json(run_dir / "config.json", {**meta_base["train"], "run": _run_info(device, parameters, dataset)})
    reporter.info(
        f"{config.arch} + {config.head} head, {parameters / 1e6:.2f} M parameters, {img_size} px, on {device}; "
        f"{len(train_samples)} train / {len(val_samples)} {dataset.eval_split} images; run folder {run_dir}"
    )

    records: list[dict[str, Any]] = []
    best_top1: dict[str, float] = {}
    best_epoch = 0
    assert config.epochs is not None
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        reporter.epoch_start(epoch, config.epochs, steps_per_epoch)
        train_stats = _train_one_epoch(
            model, train_loader, optimizer, scheduler, scaler, autocast_dtype, fine_to, config, device, reporter
        )
        val_stats = validate(model, val_loader, fine_to, device, autocast_dtype)
        record = {
            "epoch": epoch,
            "lr": train_stats["lr"],
            "train_loss": train_stats["loss"],
            "train_top1": train_stats["top1"],
            "val_loss": val_stats["loss"],
            "val_top1": val_stats["top1"],
            "val_top5": val_stats["top5"],
            "images_per_s": train_stats["images_per_s"],
            "seconds": time.perf_counter() - epoch_start,
        }
        records.append(record)
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        improved = not best_top1 or record["val_top1"][FINE] > best_top1[FINE]
        if improved:
            best_top1, best_epoch = dict(record["val_top1"]), epoch
        metrics = {
            "epoch": epoch,
            "top1": record["val_top1"],
            "top5": record["val_top5"],
            "best_epoch": best_epoch,
            "best_top1": best_top1,
        }
        state = model.state_dict()
        save_checkpoint(run_dir / "last.st", state, {**meta_base, "metrics": metrics})
        if improved:
            save_checkpoint(run_dir / "best.st", state, {**meta_base, "metrics": metrics})
        reporter.epoch_end(record)

    seconds = time.perf_counter() - started
    images_per_s = float(np.mean([r["images_per_s"] for r in records]))
    return TrainResult(run_dir, best_epoch, best_top1, config.epochs, parameters, images_per_s, seconds, records)


def parse_loss_weights(text: str | None) -> dict[str, float]:
    """'make=0.5,type=0.5' -> {"make": 0.5, "type": 0.5}."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        task, _, value = item.partition("=")
        try:
            weights[task.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--loss-weights expects TASK=NUMBER pairs, got {item!r}") from None
    return weights


def _load_data(config: TrainConfig, reporter: Reporter) -> DataSet:
    if config.data is not None:
        return load_dataset(Path(config.data), config.val_fraction, config.seed)
    root = demo.generate_demo(data_home() / demo.DEMO_NAME)
    reporter.info(
        f"no --data given: training on carcli's generated demo set ({root}). "
        "To train on Stanford Cars, pass --data DIR with its devkit folder (docs/data.md lists the layouts)."
    )
    return load_dataset(root, config.val_fraction, config.seed)


def _resolve_defaults(config: TrainConfig, dataset: DataSet, device: torch.device) -> None:
    """Fill unset options: the demo set recommends its own size and schedule; others use general defaults."""
    is_demo = config.data is None
    if config.img_size is None and is_demo:
        config.img_size = demo.DEMO_IMG_SIZE
    if config.img_size is None:
        config.img_size = get_arch(config.arch).img_size
    if config.epochs is None:
        config.epochs = demo.DEMO_EPOCHS if is_demo else DEFAULT_EPOCHS
    if config.batch_size is None:
        config.batch_size = demo.DEMO_BATCH_SIZE if is_demo else DEFAULT_BATCH_SIZE
    if config.lr is None:
        demo_lr = is_demo and config.optimizer == "adamw"
        config.lr = demo.DEMO_LR if demo_lr else DEFAULT_LR.get(config.optimizer, DEFAULT_LR["adamw"])
    if config.workers is None:
        cores = os.cpu_count() or 1
        config.workers = min(8, cores) if device.type == "cuda" else min(8, cores // 2)
    if config.data is None:
        config.data = str(dataset.root)


def _check_config(config: TrainConfig) -> None:
    """Refuse impossible option values; unset (None) options pass until their defaults are filled."""

    def at_least(value: float | None, low: float) -> bool:
        return value is None or value >= low

    checks = [
        (at_least(config.epochs, 1), "--epochs must be at least 1"),
        (at_least(config.batch_size, 1), "--batch-size must be at least 1"),
        (config.lr is None or config.lr > 0, "--lr must be positive"),
        (at_least(config.img_size, 32), "--img-size must be at least 32"),
        (config.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (config.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
        (at_least(config.workers, 0), "--workers must be 0 or more"),
        (config.weight_decay >= 0, "--weight-decay must be 0 or more"),
        (0 <= config.val_fraction < 1, "--val-fraction must be in [0, 1)"),
        (0 <= config.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (config.warmup_epochs >= 0, "--warmup-epochs must be 0 or more"),
        (0 <= config.drop_rate < 1, "--drop-rate must be in [0, 1)"),
        (not (config.weights and config.pretrained), "use either --weights or --pretrained, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _check_loss_weights(weights: dict[str, float], head: str, tasks: dict[str, int]) -> None:
    predicted = [FINE] if head == "linear" else list(tasks)
    for task, weight in weights.items():
        if task not in predicted:
            raise UsageError(f"--loss-weights names {task!r}, but this model predicts only {', '.join(predicted)}")
        if weight < 0:
            raise UsageError(f"--loss-weights: the weight of {task!r} must be 0 or more")


def _make_run_dir(config: TrainConfig) -> Path:
    if config.out:
        run_dir = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = RUNS_DIR / f"{stamp}-{config.arch.replace(':', '-')}-{config.head}"
    taken = [name for name in RUN_FILES if (run_dir / name).exists()]
    if taken:
        raise CarcliError(f"{run_dir} already holds a run ({', '.join(taken)}); choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.out = str(run_dir)
    return run_dir


def _readable_splits(dataset: DataSet, run_dir: Path, reporter: Reporter) -> tuple[list[Sample], list[Sample]]:
    """Train and eval samples without the files that cannot be decoded (listed in unreadable.txt)."""
    train_samples, val_samples = dataset.split("train"), dataset.split(dataset.eval_split)
    if dataset.eval_split == "train":
        raise CarcliError(f"{dataset.root} gives no images to validate on; lower classes or raise --val-fraction")
    bad = set(find_unreadable([s.path for s in train_samples + val_samples]))
    if bad:
        listing = run_dir / "unreadable.txt"
        listing.write_text("".join(f"{p}\n" for p in sorted(bad)))
        reporter.warn(f"skipped {len(bad)} unreadable images; list written to {listing}")
        train_samples = [s for s in train_samples if s.path not in bad]
        val_samples = [s for s in val_samples if s.path not in bad]
    if not train_samples or not val_samples:
        raise CarcliError(f"{dataset.root}: no readable images left in the train or validation split")
    return train_samples, val_samples


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CarcliError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _share_cores(device: torch.device, workers: int) -> None:
    """On CPU, leave one core per loader worker: oversubscribed OpenMP threads slow training many times over."""
    if device.type == "cpu" and workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))


def _worker_seed(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: ImageDataset, config: TrainConfig, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    workers = config.workers or 0
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > (config.batch_size or 1),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_seed,
        generator=generator,
    )


def _fine_to_tensors(taxonomy: Taxonomy, device: torch.device) -> dict[str, Tensor]:
    """For each task, a lookup from fine label to that task's label (identity for the fine task)."""
    maps = {FINE: torch.arange(len(taxonomy.tasks[FINE]))}
    maps.update({task: torch.tensor(index) for task, index in taxonomy.fine_to.items()})
    return {task: m.to(device) for task, m in maps.items()}


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _cosine_with_warmup(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup to the base lr, then cosine decay to zero."""
    total = max(1, (config.epochs or 1) * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _mixed_precision(device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """bf16 autocast on GPUs that support it, else fp16 with a grad scaler; full precision on CPU."""
    if device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _targets(labels: Tensor, fine_to: dict[str, Tensor], tasks: dict[str, Tensor]) -> dict[str, Tensor]:
    return {task: fine_to[task][labels] for task in tasks}


def _train_one_epoch(
    model: CarcliModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
    autocast_dtype: torch.dtype | None,
    fine_to: dict[str, Tensor],
    config: TrainConfig,
    device: torch.device,
    reporter: Reporter,
) -> dict[str, float]:
    model.train()
    seen, loss_sum, correct, lr = 0, 0.0, 0, 0.0
    start = time.perf_counter()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
            targets = _targets(labels, fine_to, logits)
            loss, _ = multitask_loss(logits, targets, config.loss_weights, config.label_smoothing)
        if not torch.isfinite(loss):
            raise CarcliError(
                f"the loss became {loss.item()} (not finite); the run stopped and keeps its last good "
                "checkpoint; try a lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        batch = labels.numel()
        seen += batch
        loss_sum += loss.item() * batch
        correct += int((logits[FINE].argmax(1) == labels).sum())
        elapsed = time.perf_counter() - start
        reporter.step({"loss": loss_sum / seen, "top1": correct / seen, "images_per_s": seen / elapsed})
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(1, seen), "top1": correct / max(1, seen), "images_per_s": seen / elapsed, "lr": lr}


@torch.no_grad()
def validate(
    model: CarcliModel,
    loader: DataLoader,
    fine_to: dict[str, Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Mean loss (sum over tasks, no smoothing) and top-1 / top-5 per task on a loader."""
    model.eval()
    seen, loss_sum = 0, 0.0
    top1: dict[str, int] = {}
    top5: dict[str, int] = {}
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
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


def _metadata_base(
    config: TrainConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    img_size: int,
    taxonomy: Taxonomy,
    dataset: DataSet,
) -> dict[str, Any]:
    return {
        "arch": config.arch,
        "head": config.head,
        "img_size": img_size,
        "mean": list(mean),
        "std": list(std),
        "tasks": taxonomy.tasks,
        "taxonomy": taxonomy.to_dict(),
        "train": asdict(config),
        "data": {"root": str(dataset.root), "layout": dataset.layout, "eval_split": dataset.eval_split},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _run_info(device: torch.device, parameters: int, dataset: DataSet) -> dict[str, Any]:
    return {
        "carcli": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "parameters": parameters,
        "data_layout": dataset.layout,
        "classes": len(dataset.class_names),
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
