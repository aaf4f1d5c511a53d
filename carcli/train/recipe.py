"""How a run's unset options are filled: the data set is loaded first (the demo set when `--data` is not
given), then every option left `None` takes the demo set's, the architecture's or the general default
(`resolve_defaults`), and the augmentation preset's values are written into the configuration, so a
run's config.json describes it completely.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from carcli.checkpoint import read_metadata
from carcli.data import demo
from carcli.data.batch_augment import batchable
from carcli.data.layouts import DataSet, load_dataset
from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError, UsageError
from carcli.models.registry import get_arch
from carcli.paths import data_home
from carcli.progress import Reporter
from carcli.train.compiling import has_compiler, initial_choice
from carcli.train.config import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig, check_config
from carcli.train.distributed import Dist, main_first


def complete_config(config: TrainConfig, reporter: Reporter, device: torch.device, ddp: Dist) -> DataSet:
    """Load the data set (rank 0 first: it may generate the demo set) and fill `config`'s unset options."""
    with main_first(ddp):
        dataset = load_data(config, reporter)
    asked_compile = config.compile
    resolve_defaults(config, dataset, device, ddp)
    check_config(config)
    if asked_compile == "auto" and config.compile == "off":
        reporter.info("--compile auto: no C++ compiler found (torch.compile needs one on CPUs); training eagerly")
    return dataset


def load_data(config: TrainConfig, reporter: Reporter) -> DataSet:
    """The data set of `--data`, or carcli's generated demo set (announced) without it."""
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


def resolve_defaults(config: TrainConfig, dataset: DataSet, device: torch.device, ddp: Dist) -> None:
    """Fill unset options: the demo set recommends its own size and schedule; others use general defaults."""
    is_demo = config.data is None
    if config.init:  # a later stage of a trained model: its architecture
        config.arch = read_metadata(Path(config.init)).arch
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
        config.workers = _default_workers(config, device, ddp)
    config.compile = initial_choice(config.compile, device.type, has_compiler())
    if config.data is None:
        config.data = str(dataset.root)
    for name, value in asdict(config.augment_parts).items():  # record the preset's values: runs describe themselves
        setattr(config, name, value)


def _default_workers(config: TrainConfig, device: torch.device, ddp: Dist) -> int:
    """Loader processes: none when batches come from the prepared store and augment on the device, else up to 8."""
    cores = max(1, (os.cpu_count() or 1) // ddp.world)
    if config.cache and batchable(config.augment_parts):
        return 0  # a batch is a memory copy; every core goes to the model
    return min(8, cores) if device.type == "cuda" else min(8, cores // 2)


def check_loss_weights(weights: dict[str, float], head: str, tasks: dict[str, int]) -> None:
    """--loss-weights names only tasks the head predicts, with weights of 0 or more."""
    predicted = [FINE] if head == "linear" else list(tasks)
    for task, weight in weights.items():
        if task not in predicted:
            raise UsageError(f"--loss-weights names {task!r}, but this model predicts only {', '.join(predicted)}")
        if weight < 0:
            raise UsageError(f"--loss-weights: the weight of {task!r} must be 0 or more")
