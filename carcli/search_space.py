"""What `carcli tune` searches: the `--space FILE` reader, the default spaces, and sampling one trial's options.

A space file is TOML; each key is a `carcli train` option (dashes or underscores) and each value a
table: a range `{low = 1e-4, high = 3e-3, log = true}` (optionally `step = ...`; integer options
take integer bounds) or a list of values `{choices = ["standard", "strong"]}`. Every entry is checked
against the option's declaration in carcli.train.config (its type, range and choices), so mistakes
are one-line errors before any training. This module imports neither torch nor optuna.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from carcli.errors import UsageError
from carcli.train.config import TrainConfig, field_type, flag_name, option_of

NOT_SEARCHED = {"data", "out", "weights", "pretrained", "device", "workers", "profile", "tensorboard", "seed"}
RANGE_KEYS = {"low", "high", "log", "step"}


class Suggester(Protocol):
    """The part of optuna.Trial a dimension uses."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None, log: bool) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int, log: bool) -> int: ...
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


@dataclass(frozen=True)
class Dimension:
    """One searched option: a range (float or integer) or a list of choices."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    integer: bool = False
    when: str | None = None  # searched only when this on/off option is on in the trial (ema_decay needs ema)

    def suggest(self, trial: Suggester) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


def _range(name: str, low: float, high: float, log: bool = False, when: str | None = None) -> Dimension:
    return Dimension(name, low, high, log, when=when)


FINE_TUNING = (  # from pretrained weights: mostly how far to move them and how much to regularise
    _range("lr", 1e-4, 3e-3, log=True),
    _range("backbone_lr_scale", 0.05, 1.0, log=True),
    _range("weight_decay", 1e-3, 0.3, log=True),
    _range("drop_rate", 0.0, 0.5),
    _range("label_smoothing", 0.0, 0.2),
    _range("crop_scale", 0.2, 0.8),
    _range("mixup", 0.0, 0.4),
    Dimension("cutmix", choices=(0.0, 1.0)),
    Dimension("ema", choices=(True, False)),
    _range("ema_decay", 0.99, 0.9998, log=True, when="ema"),
)
FROM_SCRATCH = (  # random initialisation: a larger learning rate, the augmentation strength
    _range("lr", 3e-4, 1e-2, log=True),
    _range("weight_decay", 1e-3, 0.5, log=True),
    _range("drop_rate", 0.0, 0.5),
    _range("label_smoothing", 0.0, 0.2),
    Dimension("augment", choices=("light", "standard", "strong")),
    _range("mixup", 0.0, 0.4),
    Dimension("cutmix", choices=(0.0, 1.0)),
    Dimension("ema", choices=(True, False)),
    _range("ema_decay", 0.99, 0.9998, log=True, when="ema"),
)


def default_space(fine_tuning: bool, fixed: set[str]) -> list[Dimension]:
    """The default space for fine-tuning or training from scratch, without the options the user fixed."""
    return [d for d in (FINE_TUNING if fine_tuning else FROM_SCRATCH) if d.name not in fixed]


def read_space(path: Path) -> list[Dimension]:
    """The dimensions of a TOML space file; every mistake is a one-line UsageError naming the file."""
    if not path.is_file():
        raise UsageError(f"--space: {path} does not exist")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--space: {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    if not data:
        raise UsageError(f"--space: {path} names no option to search")
    return [_dimension(str(key).replace("-", "_"), value, f"--space {path}") for key, value in data.items()]


def _dimension(name: str, entry: Any, source: str) -> Dimension:
    declared = {item.name: item for item in fields(TrainConfig)}
    if name not in declared:
        raise UsageError(f"{source}: unknown option {name!r}")
    kind = field_type(declared[name])
    if name in NOT_SEARCHED or kind not in (bool, int, float, str):
        raise UsageError(f"{source}: {flag_name(name)} cannot be searched; give it as a fixed flag")
    if not isinstance(entry, dict) or not entry or not (set(entry) <= RANGE_KEYS or set(entry) == {"choices"}):
        raise UsageError(f"{source}: {name} must be {{low = .., high = .., log = true}} or {{choices = [..]}}")
    spec = option_of(declared[name])
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{source}: {name}: choices must be a non-empty list")
        for value in choices:
            _check_value(name, value, kind, spec.problem(flag_name(name), value), source)
        return Dimension(name, choices=tuple(choices))
    return _range_dimension(name, entry, kind, source)


def _check_value(name: str, value: Any, kind: type, problem: str | None, source: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    right_type = (
        isinstance(value, kind) if kind in (bool, str) else number and (kind is float or isinstance(value, int))
    )
    if not right_type:
        raise UsageError(f"{source}: {name} cannot be {value!r} (a {kind.__name__} option)")
    if problem:
        raise UsageError(f"{source}: {name}: {problem}")


def _range_dimension(name: str, entry: dict[str, Any], kind: type, source: str) -> Dimension:
    if kind not in (int, float):
        raise UsageError(f"{source}: {name} is not a number option; search it with {{choices = [..]}}")
    if "low" not in entry or "high" not in entry:
        raise UsageError(f"{source}: {name} needs both low and high")
    low, high, step, log = entry["low"], entry["high"], entry.get("step"), entry.get("log", False)
    option = option_of(next(item for item in fields(TrainConfig) if item.name == name))
    for value in (low, high, *([step] if step is not None else [])):
        _check_value(name, value, kind, None, source)
    for value in (low, high):
        if not option.accepts(value):
            raise UsageError(f"{source}: {name}: the range [{low}, {high}] leaves {flag_name(name)}'s allowed values "
                             f"({option.describe_range()})")  # fmt: skip
    if not isinstance(log, bool):
        raise UsageError(f"{source}: {name}: log must be true or false")
    if not low < high:
        raise UsageError(f"{source}: {name}: low ({low}) must be below high ({high})")
    if log and (low <= 0 or step is not None):
        raise UsageError(f"{source}: {name}: a log range needs low > 0 and no step")
    if step is not None and not 0 < step <= high - low:
        raise UsageError(f"{source}: {name}: step must be positive and at most high - low")
    return Dimension(name, float(low), float(high), log, step, integer=kind is int)


def check_against_fixed(space: list[Dimension], fixed: set[str], source: str) -> None:
    """A searched option may not also be given as a fixed flag."""
    for dim in space:
        if dim.name in fixed:
            raise UsageError(f"{flag_name(dim.name)} is given as a fixed flag and searched in {source}; drop one")


def sample(space: list[Dimension], trial: Suggester, base: TrainConfig) -> dict[str, Any]:
    """One trial's values of the searched options (a `when` dimension only if its switch is on in this trial)."""
    values: dict[str, Any] = {}
    for dim in space:
        if dim.when is None or values.get(dim.when, getattr(base, dim.when)):
            values[dim.name] = dim.suggest(trial)
    return values
