"""How a run's unset options are filled: the data set is loaded first (the demo set when `--data` is not
given), then every option left `None` takes the value of the run's recipe (`RECIPES`: fine-tuning for a
pretrained start, from scratch otherwise, the demo set's own), the architecture's or the general default
(`resolve_defaults`), and the augmentation preset's values are written into the configuration, so a
run's config.json describes it completely. Flags and --config values are never overridden.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from carcli.checkpoint import read_metadata
from carcli.data import demo
from carcli.data.batch_augment import batchable
from carcli.data.layouts import DataSet, load_dataset
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.errors import CarcliError, UsageError
from carcli.models.registry import get_arch
from carcli.paths import data_home
from carcli.progress import Reporter
from carcli.train.compiling import has_compiler, initial_choice
from carcli.train.config import DEFAULT_BATCH_SIZE, SGD_LR, TrainConfig, check_config
from carcli.train.distributed import Dist, main_first


def _tenth_of_the_run(config: TrainConfig, tasks: Collection[str]) -> float:
    return round(0.1 * (config.epochs or 1), 2)


def _mtl_on_car_names(config: TrainConfig, tasks: Collection[str]) -> str:
    """mtl where the class names give makes and body types (5.6 points over linear, issue 14), else linear."""
    return "mtl" if {"make", "type"} <= set(tasks) else "linear"


@dataclass(frozen=True)
class Recipe:
    """The values a kind of run gives the options a user leaves unset (a value may depend on the config
    and on the data set's tasks)."""

    name: str
    applies_to: str
    values: Mapping[str, object | Callable[[TrainConfig, Collection[str]], object]]


# Measured on Stanford Cars photos, several seeds: docs/benchmarks.md "Accuracy (issue 14)".
FINE_TUNE = Recipe(
    "fine-tune",
    "a pretrained start (--weights, --pretrained or --init)",
    {
        "head": _mtl_on_car_names,
        "epochs": 30,
        "lr": 2e-3,
        "backbone_lr_scale": 1.0,
        "weight_decay": 0.05,
        "schedule": "onecycle",
        "warmup_epochs": _tenth_of_the_run,
        "ema": False,
        "ema_decay": 0.999,
        "label_smoothing": 0.1,
        "drop_rate": 0.0,
        "augment": "none",
        "crop_scale": 0.5,
        "hflip": True,
    },
)
# The GhostNet write-up's findings for training without pretrained weights: AdamW with high weight
# decay, dropout, flips + affine + colour jitter, a long schedule. On 49 Stanford Cars classes from random
# weights it beat the fine-tune recipe's values (benchmarks/scratch_recipe.py; a full run takes days on a CPU).
FROM_SCRATCH = Recipe(
    "from-scratch",
    "random initial weights",
    {
        "head": "linear",
        "epochs": 60,
        "lr": 1e-3,
        "backbone_lr_scale": 1.0,
        "weight_decay": 0.1,
        "schedule": "cosine",
        "warmup_epochs": _tenth_of_the_run,
        "ema": False,
        "ema_decay": 0.999,
        "label_smoothing": 0.1,
        "drop_rate": 0.25,
        "augment": "standard",
        "affine_degrees": 10.0,
        "affine_translate": 0.1,
        "affine_scale": 0.1,
    },
)
DEMO = Recipe(  # a few minutes on a CPU, from scratch, on carcli's generated cars
    "demo",
    "carcli's generated demo set",
    {
        "head": "linear",
        "epochs": demo.DEMO_EPOCHS,
        "lr": demo.DEMO_LR,
        "backbone_lr_scale": 1.0,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "ema": False,
        "ema_decay": 0.999,
        "label_smoothing": 0.1,
        "drop_rate": 0.0,
        "augment": "standard",
    },
)
RECIPES = {recipe.name: recipe for recipe in (FINE_TUNE, FROM_SCRATCH, DEMO)}


def choose_recipe(config: TrainConfig) -> Recipe:
    """Fine-tuning for a pretrained start, the demo set's own recipe on it, from scratch otherwise."""
    if config.pretrained_start:
        return FINE_TUNE
    return DEMO if config.data is None else FROM_SCRATCH


def apply_recipe(config: TrainConfig, recipe: Recipe, tasks: Collection[str] = (FINE,)) -> dict[str, object]:
    """Give every unset option the recipe has a value for that value (in the recipe's order), for a data set
    with these tasks; returns them."""
    filled: dict[str, object] = {}
    for name, value in recipe.values.items():
        if getattr(config, name) is None and not (name == "lr" and config.optimizer != "adamw"):
            filled[name] = value(config, tasks) if callable(value) else value
            setattr(config, name, filled[name])
    return filled


def recipe_line(recipe: Recipe, filled: Mapping[str, object]) -> str:
    """One line naming the recipe and the values it gave; flags and --config override any of them."""
    values = ", ".join(
        f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}" for name, value in filled.items()
    )
    return f"recipe {recipe.name} ({recipe.applies_to}): {values}; a flag or --config value overrides any of these"


def complete_config(
    config: TrainConfig, reporter: Reporter, device: torch.device, ddp: Dist
) -> tuple[DataSet, str | None]:
    """Load the data set (rank 0 first: it may generate the demo set) and fill `config`'s unset options;
    returns the data set and the line naming the recipe (None when it filled nothing), for the caller to
    report once the run's model is built (a usage error stays the only line)."""
    with main_first(ddp):
        dataset = load_data(config, reporter)
    asked_compile = config.compile
    line = resolve_defaults(config, dataset, device, ddp)
    check_config(config)
    if asked_compile == "auto" and config.compile == "off":
        reporter.info("--compile auto: no C++ compiler found (torch.compile needs one on CPUs); training eagerly")
    return dataset, line


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


def resolve_defaults(config: TrainConfig, dataset: DataSet, device: torch.device, ddp: Dist) -> str | None:
    """Fill unset options: the run's recipe first (returns the line that says so, None when it filled
    nothing), then the architecture's image size, the optimizer's lr, the loader workers..."""
    if config.init:  # a later stage of a trained model: its architecture and, unless given, its head
        earlier = read_metadata(Path(config.init))
        config.arch, config.head = earlier.arch, config.head or earlier.head
    recipe = choose_recipe(config)
    filled = apply_recipe(config, recipe, Taxonomy.from_class_names(dataset.class_names).tasks)
    is_demo = config.data is None  # the demo set has its own image and batch size, whatever the recipe
    if config.img_size is None:
        config.img_size = demo.DEMO_IMG_SIZE if is_demo else get_arch(config.arch).img_size
    if config.eval_img_size is None:
        config.eval_img_size = config.img_size
    if config.batch_size is None:
        config.batch_size = demo.DEMO_BATCH_SIZE if is_demo else DEFAULT_BATCH_SIZE
    if config.lr is None:
        config.lr = SGD_LR  # the recipes give AdamW's lr only
    if config.workers is None:
        config.workers = _default_workers(config, device, ddp)
    config.compile = initial_choice(config.compile, device.type, has_compiler())
    if config.data is None:
        config.data = str(dataset.root)
    for name, value in asdict(config.augment_parts).items():  # record the preset's values: runs describe themselves
        setattr(config, name, value)
    return recipe_line(recipe, filled) if filled else None


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
