"""Training options, each declared once: `TrainConfig`, its checks, and how files and flags become one.

Every option is a field of `TrainConfig` declared with `option(default, help, panel, ...)`; the
field's metadata holds its help text, help panel, allowed range or choices and, where the command
line spells it differently, the CLI type and parser. From that one declaration come:
- the options of `carcli train` and `carcli tune` (`cli_options`, used by carcli.cli),
- the checks of `check_config` (ranges and choices; cross-option rules are listed after them),
- the `--config FILE` reader (`make_config`; names and types come from the dataclass),
- the search-space bounds of `carcli tune` (a searched range must lie inside the option's range).

Adding a training option is one change here: a field with `option(...)` (on/off options are `bool`
fields and become `--name/--no-name` flags), then use `config.name` in the training code. This
module imports no torch: flag values are checked before the slow imports.
"""

from __future__ import annotations

import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from carcli.config import apply_options, read_config_file
from carcli.errors import CarcliError, UsageError
from carcli.limits import MIN_IMG_SIZE, check_img_size

DEFAULT_BATCH_SIZE = 32
EVAL_ASPECT = 4 / 3  # the widest crop RandomResizedCrop draws (and falls back to on wide photos)
SGD_LR = 0.05  # every recipe's lr is AdamW's: SGD runs take this one
# the names below are checked against the modules that act on them (tests/test_train_config.py)
HEADS = ("linear", "mtl", "mtl-aux")  # carcli.models.heads.HEADS
OPTIMIZERS = ("adamw", "sgd")  # carcli.train.optim
SCHEDULES = ("cosine", "multistep", "exponential", "onecycle")  # carcli.train.optim
LOSSES = ("ce", "cot")  # carcli.train.losses
PRESETS = ("none", "light", "standard", "strong")  # carcli.data.transforms.PRESETS
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")  # carcli.data.transforms
DEVICES = ("auto", "cpu", "cuda")  # carcli.device
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_CHOICES = ("auto", "on", "off")  # carcli.train.compiling; older runs: True/False = on/off, None = auto
LOGGERS = ("none", "mlflow", "wandb")  # carcli.train.tracking
BALANCES = ("none", "sampler", "weights")
AUGMENT_PARTS = (  # the fields of carcli.data.transforms.Augment
    "crop_scale", "hflip", "affine_degrees", "affine_translate", "affine_scale", "affine_shear",
    "color_jitter", "grayscale", "auto_augment", "random_erasing", "mixup", "cutmix",
)  # fmt: skip
DATA, MODEL, OPTIM, AUG, LOSS, RUN = "Data", "Model", "Optimisation", "Augmentation", "Loss", "Run"


@dataclass(frozen=True)
class Option:
    """How one TrainConfig field shows on the command line and which values it accepts."""

    help: str
    panel: str
    low: float | None = None  # smallest allowed value (None: no bound)
    high: float | None = None
    low_open: bool = False  # True: `low` itself is refused
    high_open: bool = False
    choices: tuple[str, ...] = ()
    cli_type: Any = None  # the flag's value type when it is not the field's (a list read from "10,20", say)
    parse: Callable[[Any], Any] | None = None  # flag value -> field value
    negated: str | None = None  # the value of a hidden `--no-NAME` flag (`--no-compile`: "off")
    metavar: str | None = None  # the value's name in --help when the type's would be unclear (a repeatable list)

    def problem(self, flag: str, value: Any) -> str | None:
        """Why `value` is refused for this option (None: accepted; None values are unset and pass)."""
        if value is None or isinstance(value, bool):
            return None
        if self.choices and value not in self.choices:
            noun = flag.lstrip("-").replace("-", " ")
            return f"unknown {noun} {value!r}: {flag} must be one of {', '.join(self.choices)}"
        if isinstance(value, int | float) and not self.accepts(value):
            return f"{flag} must be {self.describe_range()}"
        return None

    def accepts(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe_range(self) -> str:
        if self.high is None:
            if self.low_open:
                return "positive" if self.low == 0 else f"more than {self.low:g}"
            return "0 or more" if self.low == 0 else f"at least {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def option(default: Any, help: str, panel: str, **spec: Any) -> Any:
    """A TrainConfig field with a plain default and its `Option` (see `described` for list and dict fields)."""
    return field(default=default, metadata=described(help, panel, **spec))


def described(help: str, panel: str, **spec: Any) -> dict[str, Option]:
    """Field metadata holding an `Option`."""
    return {"option": Option(help, panel, **spec)}


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


def parse_milestones(text: str | None) -> list[int]:
    """'10,20' -> [10, 20]."""
    try:
        return [int(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--milestones expects epoch numbers separated by commas, got {text!r}") from None


AT_LEAST_1 = {"low": 1}
NON_NEGATIVE = {"low": 0}
POSITIVE = {"low": 0, "low_open": True}
SHARE = {"low": 0, "high": 1}  # a probability or a share of the image
FRACTION = {"low": 0, "high": 1, "high_open": True}
PATH = {"cli_type": Path, "parse": str}


@dataclass
class TrainConfig:
    """Every option of a training run; `None` means "the data set's, architecture's or preset's default"."""

    data: str | None = option(
        None, "Data set root (devkit, class folders or CSV). Default: the demo set.", DATA, **PATH
    )
    val_fraction: float = option(
        0.2, "Validation share when the data set has no val/test split (default 0.2).", DATA, **FRACTION
    )
    crop_to_bbox: bool = option(False, "Crop images to their bounding boxes (devkit data).", DATA)
    bbox_margin: float = option(0.1, "Box margin, share of its size (default 0.1).", DATA, **NON_NEGATIVE)
    cache: bool = option(
        False, "Decode and resize the images once into a memory-mapped store; augment batches on the device.", DATA
    )
    img_size: int | None = option(
        None, "Square input size, e.g. 224, 448 (default: the arch's; at most 2048).", DATA, low=MIN_IMG_SIZE
    )
    allow_large_images: bool = option(
        False, "Allow image sizes over 2048 px (memory grows with the square of the size).", DATA
    )
    arch: str = option(
        "ghostnet", "Backbone: a name from `carcli archs`, timm:NAME or tv:NAME (default ghostnet).", MODEL
    )
    head: str | None = option(
        None,
        "Head: linear, mtl (make/type priors), mtl-aux (default: the recipe's: mtl when fine-tuning on car "
        "class names, else linear).",
        MODEL,
        choices=HEADS,
    )
    drop_rate: float | None = option(None, "Dropout before the classifiers (default: the recipe's).", MODEL, **FRACTION)
    weights: str | None = option(None, "Local backbone weights (.pth/.safetensors) to start from.", MODEL, **PATH)
    pretrained: bool = option(False, "Start from the library's pretrained weights (network).", MODEL)
    freeze_backbone: bool = option(False, "Train the head only (frozen features).", MODEL)
    unfreeze_after: int = option(
        0, "Staged fine-tuning: head only for N epochs, then all (default 0).", MODEL, **NON_NEGATIVE
    )
    epochs: int | None = option(None, "Epochs (default: the recipe's).", OPTIM, **AT_LEAST_1)
    batch_size: int | None = option(None, "Images per step (default 32).", OPTIM, **AT_LEAST_1)
    accum_steps: int = option(1, "Batches per optimizer update (default 1).", OPTIM, **AT_LEAST_1)
    lr: float | None = option(None, "Peak learning rate (default: the recipe's; SGD 0.05).", OPTIM, **POSITIVE)
    backbone_lr_scale: float | None = option(
        None, "Backbone lr = lr x this (default: the recipe's).", OPTIM, **POSITIVE, high=10
    )
    optimizer: str = option("adamw", "adamw or sgd (Nesterov) (default adamw).", OPTIM, choices=OPTIMIZERS)
    weight_decay: float | None = option(
        None, "Weight decay, not on biases/norms (default: the recipe's).", OPTIM, **NON_NEGATIVE
    )
    momentum: float = option(0.9, "SGD momentum (default 0.9).", OPTIM, **FRACTION)
    schedule: str | None = option(
        None, "cosine, multistep, exponential or onecycle (default: the recipe's).", OPTIM, choices=SCHEDULES
    )
    warmup_epochs: float | None = option(
        None, "Linear warmup epochs (onecycle: its rising phase) (default: the recipe's).", OPTIM, **NON_NEGATIVE
    )
    milestones: list[int] = field(
        default_factory=list,
        metadata=described(
            "multistep: epochs where lr drops, e.g. '20,30'.", OPTIM, cli_type=str, parse=parse_milestones
        ),
    )
    gamma: float | None = option(
        None, "multistep: drop factor [0.1]; exponential: per-epoch factor (default 0.9).", OPTIM, **POSITIVE, high=1
    )
    ema: bool | None = option(None, "Keep an EMA of the weights; evaluate and save it (default: the recipe's).", OPTIM)
    ema_decay: float | None = option(
        None, "EMA decay per update (default: the recipe's).", OPTIM, **POSITIVE, high=1, high_open=True
    )
    patience: int = option(0, "Early stop after N epochs without a better top-1 (0: off).", OPTIM, **NON_NEGATIVE)
    clip_grad: float = option(0.0, "Clip the gradient norm to this (0: off).", OPTIM, **NON_NEGATIVE)
    loss: str = option("ce", "ce, or cot (cross-entropy + complement entropy) (default ce).", LOSS, choices=LOSSES)
    label_smoothing: float | None = option(
        None, "Label smoothing of every task's loss (default: the recipe's).", LOSS, **FRACTION
    )
    loss_weights: dict[str, float] = field(
        default_factory=dict,
        metadata=described(
            "Per-task loss weights, e.g. 'make=0.5,type=0.5,year=0.2'.", LOSS, cli_type=str, parse=parse_loss_weights
        ),
    )
    balance: str = option(
        "none", "Class imbalance: none, sampler (balanced batches) or weights (loss).", LOSS, choices=BALANCES
    )
    augment: str | None = option(
        None, "Preset: none, light, standard or strong (default: the recipe's).", AUG, choices=PRESETS
    )
    crop_scale: float | None = option(None, "Smallest area share of the random resized crop.", AUG, **POSITIVE, high=1)
    hflip: bool | None = option(None, "Random horizontal flips.", AUG)
    affine_degrees: float | None = option(None, "Random affine: rotation degrees.", AUG, **NON_NEGATIVE)
    affine_translate: float | None = option(None, "Random affine: translation share.", AUG, **SHARE)
    affine_scale: float | None = option(None, "Random affine: +- scale share.", AUG, **SHARE)
    affine_shear: float | None = option(None, "Random affine: shear degrees.", AUG, **NON_NEGATIVE)
    color_jitter: float | None = option(None, "Brightness/contrast/saturation jitter.", AUG, **NON_NEGATIVE)
    grayscale: float | None = option(None, "Probability of a grayscale image.", AUG, **SHARE)
    auto_augment: str | None = option(None, "none, randaugment or trivialaugment.", AUG, choices=AUTO_AUGMENTS)
    random_erasing: float | None = option(None, "Probability of random erasing.", AUG, **SHARE)
    mixup: float | None = option(None, "Mixup alpha (0: off).", AUG, **NON_NEGATIVE)
    cutmix: float | None = option(None, "CutMix alpha (0: off).", AUG, **NON_NEGATIVE)
    out: str | None = option(None, "Run folder (default runs/<time>-<arch>-<head>).", RUN, **PATH)
    device: str = option("auto", "auto, cpu or cuda (default auto).", RUN, choices=DEVICES)
    seed: int = option(0, "Seed for splits, initialisation and augmentation (default 0).", RUN)
    workers: int | None = option(
        None, "Loader processes (default: GPU: cores, CPU: half the cores; max 8).", RUN, **NON_NEGATIVE
    )
    # NHWC: 1.3-1.7x faster training of depthwise-conv nets on CPU (docs/benchmarks.md)
    channels_last: bool = option(True, "channels_last (NHWC) memory format (default on).", RUN)
    # auto: on with CUDA; on CPUs when the run is long enough to repay the compile, kept only if the compiled
    # steps are faster (carcli.train.compiling)
    compile: str | bool | None = option(
        "auto", "torch.compile: auto (CUDA; CPUs when it pays), on, off (default auto); --no-compile = off.", RUN,
        choices=COMPILE_CHOICES, negated="off",
    )  # fmt: skip
    precision: str = option(
        "auto",
        "auto, fp32, bf16 or fp16 (default auto: bf16/fp16 autocast on GPUs; on CPUs bf16 when the CPU has "
        "bf16 instructions, depthwise convolutions in fp32, else fp32).",
        RUN,
        choices=PRECISIONS,
    )
    tensorboard: bool = option(False, "Also log to TensorBoard (run folder/tensorboard).", RUN)
    profile: bool = option(False, "Print where each step's time goes: loader wait, preparation, compute.", RUN)
    log: str = option(
        "none",
        "Track the run: none, mlflow (SQLite store in the runs folder) or wandb (offline unless logged in).",
        RUN,
        choices=LOGGERS,
    )
    log_uri: str | None = option(
        None, "Where runs are tracked: the MLflow tracking URI or server, or the W&B server URL (with --log).", RUN
    )
    # issue 14 (accuracy): stages, evaluation size, distillation
    init: str | None = option(
        None, "Start from a trained carcli checkpoint: backbone + head when the classes agree, else the backbone.",
        MODEL, **PATH,
    )  # fmt: skip
    eval_img_size: int | None = option(
        None, "Validate, pick best.st and store for eval/predict/export at this size (default: --img-size).",
        DATA, low=32,
    )  # fmt: skip
    eval_aspect: float = option(
        EVAL_ASPECT, "Evaluation views the centre crop up to this long/short side ratio, squashed to the square "
        "input (default 4/3, the widest training crop; 1: the centre square).", DATA, low=1,
    )  # fmt: skip
    teacher: list[str] = field(
        default_factory=list,
        metadata=described(
            "Distil from this trained .st (repeatable; an ensemble .st is one teacher).", LOSS, metavar="<file.st>"
        ),
    )
    distill_weight: float = option(
        1.0, "With --teacher: weight of the distillation term (default 1).", LOSS, **NON_NEGATIVE
    )
    distill_temperature: float = option(
        2.0, "With --teacher: softmax temperature of the distillation term (default 2).", LOSS, **POSITIVE
    )

    @property
    def pretrained_start(self) -> bool:
        """Whether the run starts from trained weights (--weights, --pretrained or --init)."""
        return bool(self.weights or self.pretrained or self.init)

    @property
    def augment_parts(self) -> Any:
        """The resolved `carcli.data.transforms.Augment` (the preset with the parts set here)."""
        from carcli.data.transforms import resolve_augment

        return resolve_augment(self.augment, {name: getattr(self, name) for name in AUGMENT_PARTS})


def option_of(item: Field) -> Option:
    return item.metadata["option"]


def flag_name(name: str) -> str:
    """The command-line spelling of option `name`: img_size -> --img-size."""
    return "--" + name.replace("_", "-")


def check_config(config: TrainConfig) -> None:
    """Refuse impossible option values (torch-free); unset (None) options pass until their defaults are filled."""
    for item in fields(config):
        problem = option_of(item).problem(flag_name(item.name), getattr(config, item.name))
        if problem:
            raise UsageError(problem)
    if any(m < 1 for m in config.milestones):
        raise UsageError("--milestones must be epoch numbers of 1 or more")
    starts = [flag for flag, given in (("--weights", config.weights), ("--pretrained", config.pretrained),
                                        ("--init", config.init)) if given]  # fmt: skip
    if len(starts) > 1:
        raise UsageError(f"use either {' or '.join(starts)}, not {'both' if len(starts) == 2 else 'several'}")
    check_img_size(config.img_size, config.allow_large_images)
    check_img_size(config.eval_img_size, config.allow_large_images, "--eval-img-size")
    check_logger(config.log, config.log_uri)
    from carcli.models.registry import check_arch_name  # torch-free: the names, not the models

    check_arch_name(config.arch)


def check_logger(log: str, log_uri: str | None) -> None:
    """A known --log whose package is installed; --log-uri only with a logger."""
    if log not in LOGGERS:
        raise UsageError(f"--log must be one of {', '.join(LOGGERS)}")
    if log_uri and log == "none":
        raise UsageError("--log-uri needs --log mlflow or --log wandb")
    if log != "none" and importlib.util.find_spec(log) is None:
        raise CarcliError(f'--log {log} needs the {log} package: pip install "carcli[{log}]"')


def make_config(options: dict[str, Any], config_file: Path | None = None) -> TrainConfig:
    """A checked TrainConfig from a config file (TOML/YAML, optional) overridden by `options` (None = not given)."""
    values = apply_options(TrainConfig, read_config_file(config_file), str(config_file)) if config_file else {}
    values.update({key: value for key, value in options.items() if value is not None})
    config = TrainConfig(**values)
    check_config(config)
    return config


def field_type(item: Field) -> Any:
    """The value type of a field without its `| None`: `int | None` -> int."""
    hint = typing.get_type_hints(TrainConfig)[item.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return args[0]


def cli_options(exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per option for a Typer command (None default: "not given, keep the file's/default")."""
    import typer

    params = []
    for item in fields(TrainConfig):
        if item.name in exclude:
            continue
        spec, flag = option_of(item), flag_name(item.name)
        kind = spec.cli_type or field_type(item)
        if kind is bool:
            info = typer.Option(f"{flag}/--no-{flag[2:]}", help=spec.help, rich_help_panel=spec.panel, metavar="")
        elif spec.negated is not None:
            params.extend(_with_negation(item.name, spec))
            continue
        else:
            listed = "|".join(spec.choices)
            metavar = (listed if len(listed) <= 14 else "<choice>") if spec.choices else spec.metavar
            info = typer.Option(flag, help=spec.help, rich_help_panel=spec.panel, metavar=metavar)
        annotation = Annotated[kind | None, info]  # type: ignore[valid-type]
        params.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def _with_negation(name: str, spec: Option) -> list[inspect.Parameter]:
    """`--NAME VALUE` and a hidden `--no-NAME` meaning `spec.negated` (kept from when NAME was an on/off flag)."""
    import typer

    flag, metavar = flag_name(name), "|".join(spec.choices)
    value = typer.Option(flag, help=spec.help, rich_help_panel=spec.panel, metavar=metavar)
    negated = typer.Option(f"--no-{flag[2:]}", hidden=True)
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, value]),
        inspect.Parameter(
            f"no_{name}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[bool | None, negated]
        ),
    ]


def from_cli(values: dict[str, Any]) -> dict[str, Any]:
    """Flag values (None: not given) -> field values, through each option's parser."""
    parsed = {}
    for item in fields(TrainConfig):
        spec = option_of(item)
        if values.get(f"no_{item.name}") and spec.negated is not None:
            parsed[item.name] = spec.negated
        elif item.name in values:
            value, parse = values[item.name], spec.parse
            parsed[item.name] = parse(value) if parse and value is not None else value
    return parsed


def default_of(item: Field) -> Any:
    """A field's default value (a fresh copy for list and dict defaults)."""
    return item.default_factory() if item.default is MISSING else item.default  # type: ignore[misc]
