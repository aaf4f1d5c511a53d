"""Command-line values that can be checked without torch: choices, ranges and input files.

The CLI runs these checks before a command imports its heavy modules, so a usage error answers
at once with nothing printed before it; the library functions run the same checks for callers
that skip the CLI. The choice lists of the commands live here for that reason.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from carcli.errors import CarcliError, UsageError
from carcli.limits import check_img_size
from carcli.paths import RUNS_DIR

DEVICES = ("auto", "cpu", "cuda")
EVAL_SPLITS = ("val", "test", "all")  # all: every labelled image, whatever its split
CROPS = ("cam",)
PRUNE_METHODS = ("magnitude", "channel")
ENSEMBLE_METHODS = ("mean", "weighted", "greedy")
# format -> the default file's suffix
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "openvino": ".xml"}


def one_of(value: str | None, choices: Collection[str], flag: str) -> None:
    """`value` (None: not given) is one of `choices`, else a UsageError naming `flag` and the choices."""
    if value is not None and value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}")


def at_least(value: float | None, low: float, flag: str) -> None:
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low:g}")


def require_checkpoint(path: Path) -> None:
    """A checkpoint path that names an existing file."""
    if not path.exists():
        raise CarcliError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CarcliError(f"checkpoint is not a file: {path}")


def require_data(path: Path | None) -> None:
    if path is not None and not path.exists():
        raise CarcliError(f"data set not found: {path}")


def check_crop(crop: str | None, tta: bool = False) -> None:
    one_of(crop, CROPS, "--crop")
    if crop is not None and tta:
        raise UsageError("--tta and --crop cam cannot be combined")


def check_eval(
    checkpoint: Path, data: Path | None, split: str | None, crop: str | None, tta: bool, batch_size: int, device: str
) -> None:
    """`carcli eval`'s values."""
    one_of(split, EVAL_SPLITS, "--split")
    at_least(batch_size, 1, "--batch-size")
    check_crop(crop, tta)
    one_of(device, DEVICES, "--device")
    require_checkpoint(checkpoint)
    require_data(data)


FLAG_WORDS = ("true", "false", "yes", "no", "on", "off")  # values a user may give an on/off flag by mistake


def check_inputs(inputs: Sequence[str]) -> None:
    """Refuse `--json true` and the like: on/off options take no value, so the word would be read as an image."""
    for word in inputs:
        if word.lower() in FLAG_WORDS and not Path(word).exists():
            raise UsageError(f"{word!r} is not an image: on/off options such as --json take no value; drop {word!r}")


def check_predict(
    model: Path | None, top_k: int, batch_size: int, explain: Path | None, saliency: bool, crop: str | None, device: str
) -> None:
    """`carcli predict`'s values."""
    at_least(top_k, 1, "--top-k")
    at_least(batch_size, 1, "--batch-size")
    if saliency and explain is None:
        raise UsageError("--saliency writes its maps beside the Grad-CAM ones: give --explain DIR too")
    check_crop(crop)
    one_of(device, DEVICES, "--device")
    if model is not None:
        require_checkpoint(model)
    else:
        newest_checkpoint()


def check_bench(
    checkpoint: Path | None,
    arch: str | None,
    img_size: int | None,
    device: str,
    threads: int | None = None,
    allow_large_images: bool = False,
) -> None:
    """`carcli bench`'s values (the --arch name is the model registry's to check)."""
    if (checkpoint is None) == (arch is None):
        raise UsageError("give either a CHECKPOINT or --arch NAME")
    check_img_size(img_size, allow_large_images)
    at_least(threads, 1, "--threads")
    one_of(device, DEVICES, "--device")
    if checkpoint is not None:
        require_checkpoint(checkpoint)


def check_export(checkpoint: Path, fmt: str) -> None:
    one_of(fmt, EXPORT_FORMATS, "--format")
    require_checkpoint(checkpoint)


def check_prune_mode(rate: float | None, sweep: bool, finetune_epochs: int) -> None:
    """`carcli prune` scores one --rate or a --sweep, and fine-tunes only a single rate."""
    if sweep == (rate is not None):
        raise UsageError("give either --rate R or --sweep")
    if sweep and finetune_epochs:
        raise UsageError("--finetune-epochs needs --rate (a sweep does not fine-tune)")


def check_prune(checkpoint: Path, data: Path | None, method: str, rate: float | None, finetune_epochs: int) -> None:
    """`carcli prune`'s values (rate None: a sweep)."""
    one_of(method, PRUNE_METHODS, "--method")
    if rate is not None and not 0 < rate < 1:
        raise UsageError("--rate must be between 0 and 1 (the share of weights or channels to remove)")
    if finetune_epochs < 0:
        raise UsageError("--finetune-epochs must be 0 or more")
    require_checkpoint(checkpoint)
    require_data(data)


def check_ensemble(checkpoints: Sequence[Path], data: Path | None, method: str) -> None:
    if len(checkpoints) < 2:
        raise UsageError("an ensemble needs two or more checkpoints")
    one_of(method, ENSEMBLE_METHODS, "--method")
    for checkpoint in checkpoints:
        require_checkpoint(checkpoint)
    require_data(data)


def newest_checkpoint(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently written best.st under `runs_dir`."""
    found = list(runs_dir.glob("**/best.st")) if runs_dir.is_dir() else []
    if not found:
        raise CarcliError(
            f"no --model given and no best.st under {runs_dir}/; train one with `carcli train` or pass --model FILE"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
