"""`carcli prune`: a checkpoint pruned by magnitude (global L1, unstructured) or by channel (Torch-Pruning,
channels really removed).

`prune_checkpoint` prunes at one rate, optionally fine-tunes, writes a normal `.st` and reports
before/after size, speed and accuracy; `sweep` scores rates 0.1..0.9 without writing models. The
pruning itself and the record of a channel-pruned model's shapes are `carcli.models.pruned`'s.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from carcli.checkpoint import load_checkpoint, save_checkpoint, trained_on
from carcli.checkpoint_meta import CheckpointMeta
from carcli.device import resolve_device
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_file, csv_text, write_bytes
from carcli.inference import eval_samples, predict_samples
from carcli.measure import count_parameters, latency
from carcli.metrics import top1_per_task
from carcli.models.builder import load_model
from carcli.models.pruned import apply_pruning, fold_masks, pruned_metadata
from carcli.plots import plot_sweep
from carcli.usage import check_prune

if TYPE_CHECKING:
    from carcli.data.layouts import Sample
    from carcli.progress import Reporter

SWEEP_RATES = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass
class ModelReport:
    """Size, speed and accuracy of one model."""

    parameters: int
    nonzero: int
    file_bytes: int
    latency_ms: float  # CPU, batch 1
    top1: dict[str, float]


@dataclass
class PruneResult:
    method: str
    rate: float
    before: ModelReport
    after: ModelReport
    out: Path
    finetune_run: Path | None

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, before, after) rows for a table."""
        pairs = [
            ("parameters", *(f"{r.parameters / 1e6:.3f} M" for r in (self.before, self.after))),
            ("non-zero parameters", *(f"{r.nonzero / 1e6:.3f} M" for r in (self.before, self.after))),
            ("file size", *(f"{r.file_bytes / 2**20:.2f} MiB" for r in (self.before, self.after))),
            ("CPU latency / image, 1 thread", *(f"{r.latency_ms:.2f} ms" for r in (self.before, self.after))),
        ]
        for task, value in self.before.top1.items():
            pairs.append((f"{task} top-1", f"{100 * value:.1f}%", f"{100 * self.after.top1.get(task, 0.0):.1f}%"))
        return pairs


@dataclass
class SweepResult:
    method: str
    rates: list[float]  # 0.0 (the unpruned model) first
    top1: dict[str, list[float]]  # task -> top-1 at each rate
    nonzero: list[int]  # non-zero parameters at each rate
    csv_path: Path
    png_path: Path

    def rows(self) -> list[list[str]]:
        """One row per task (then non-zero parameters), one column per rate."""
        rows = [[task, *(f"{100 * v:.1f}%" for v in values)] for task, values in self.top1.items()]
        rows.append(["non-zero params", *(f"{n / 1e6:.2f} M" for n in self.nonzero)])
        return rows


# ---------------------------------------------------------------- the command


def _load(checkpoint: Path) -> tuple[nn.Module, CheckpointMeta]:
    model, meta = load_model(checkpoint)
    if meta.is_ensemble:
        raise CarcliError(f"{checkpoint} is an ensemble; prune its members, then ensemble the pruned files")
    return model, meta


def _report(
    model: nn.Module, meta: CheckpointMeta, file_bytes: int, samples: list[Sample], class_names: list[str], device: str
) -> ModelReport:
    total, nonzero = count_parameters(model)
    top1 = _top1(model, meta, samples, class_names, device)
    speed = latency(model.to("cpu"), meta.img_size, threads=1)[0]
    return ModelReport(total, nonzero, file_bytes, speed, top1)


def _top1(
    model: nn.Module, meta: CheckpointMeta, samples: Sequence[Sample], class_names: Sequence[str], device: str
) -> dict[str, float]:
    """Top-1 of every task the model predicts, on `samples`."""
    preds = predict_samples(model, meta, samples, class_names, device=device)
    return top1_per_task(preds.probs, preds.targets)


def prune_checkpoint(
    checkpoint: Path,
    data: Path | None,
    method: str = "magnitude",
    rate: float = 0.5,
    finetune_epochs: int = 0,
    out: Path | None = None,
    reporter: Reporter | None = None,
    teacher: bool = True,
) -> PruneResult:
    """Prune `checkpoint` at `rate`, fine-tune it when asked, write it to `out`, and measure both models.

    The fine-tuning distils from the unpruned `checkpoint` unless `teacher` is False."""
    check_prune(checkpoint, data, method, rate, finetune_epochs)
    out = out or checkpoint.with_name(f"{checkpoint.stem}-{method}{round(100 * rate)}.st")
    if out.resolve() == checkpoint.resolve():
        raise UsageError("-o would overwrite the checkpoint being pruned; choose another file")
    check_output_file(out, "-o", needed_bytes=checkpoint.stat().st_size if checkpoint.is_file() else 0)
    say = reporter.info if reporter else (lambda message: None)
    model, meta = _load(checkpoint)
    data = data or trained_on(meta, checkpoint)
    samples, class_names, split = eval_samples(meta, data, say)
    device = str(resolve_device("auto"))
    say(f"scoring {checkpoint.name} on {len(samples)} {split} images")
    before = _report(model, meta, checkpoint.stat().st_size, samples, class_names, device)
    apply_pruning(model.to("cpu"), method, rate, meta.img_size, permanent=not finetune_epochs)
    pruned_meta = pruned_metadata(model, meta, method, rate)
    zeros = (pruned_meta.pruned or {})["sparsity"]
    say(f"{method} pruning at rate {rate}: {count_parameters(model)[0] / 1e6:.3f} M parameters, {zeros:.1%} zero")
    finetune_run = None
    if finetune_epochs:
        distil_from = [str(checkpoint)] if teacher else []
        finetune_run = _finetune(model, pruned_meta, data, finetune_epochs, out, reporter, distil_from)
        state, pruned_meta = load_checkpoint(finetune_run / "best.st")
        save_checkpoint(out, state, pruned_meta)
    else:
        save_checkpoint(out, model.state_dict(), pruned_meta)
    reloaded, reloaded_meta = load_model(out)
    say(f"scoring the pruned model {out.name}")
    after = _report(reloaded, reloaded_meta, out.stat().st_size, samples, class_names, device)
    return PruneResult(method, rate, before, after, out, finetune_run)


def _finetune(
    model: nn.Module,
    meta: CheckpointMeta,
    data: Path,
    epochs: int,
    out: Path,
    reporter: Reporter | None,
    teachers: list[str],
) -> Path:
    """Train the pruned model for `epochs` on the checkpoint's own split (distilling from `teachers`);
    returns the run folder."""
    from carcli.train import TrainConfig, train

    run_dir = out.with_name(f"{out.stem}-finetune")
    if (run_dir / "best.st").exists():
        raise CarcliError(f"{run_dir} already holds a fine-tuning run; remove it or choose another -o")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in (meta.train or {}).items() if k in known}
    config = TrainConfig(  # the run's own recipe and peak lr, without warmup: the model starts trained
        **{
            **options,
            "data": str(data),
            "arch": meta.arch,
            "head": meta.head,
            "img_size": meta.img_size if meta.train_img_size is None else meta.train_img_size,
            "epochs": epochs,
            "warmup_epochs": 0.0,
            "weights": None,
            "pretrained": False,
            "init": None,
            "teacher": teachers,
            "out": str(run_dir),
        }
    )
    train(config, reporter, model=model, extra_meta={"pruned": meta.pruned})  # type: ignore[arg-type]
    for name in ("best.st", "last.st"):  # masked weights (magnitude) become plain ones, loadable like any model
        state, saved_meta = load_checkpoint(run_dir / name)
        save_checkpoint(run_dir / name, fold_masks(state), saved_meta)
    return run_dir


def sweep(
    checkpoint: Path,
    data: Path | None,
    method: str = "magnitude",
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    rates: Sequence[float] = SWEEP_RATES,
) -> SweepResult:
    """Top-1 per task at each rate (0.1..0.9) and at 0, the model as it is; writes a CSV table and a PNG plot."""
    check_prune(checkpoint, data, method, None, 0)
    csv_path = out or checkpoint.with_name(f"{checkpoint.stem}-sweep-{method}.csv")
    png_path = csv_path.with_suffix(".png")
    check_output_file(csv_path, "-o")
    model, meta = _load(checkpoint)
    samples, class_names, split = eval_samples(meta, data or trained_on(meta, checkpoint), progress)
    device = str(resolve_device("auto"))
    rates = [0.0, *rates]
    top1: dict[str, list[float]] = {}
    nonzero: list[int] = []
    for rate in rates:
        candidate = copy.deepcopy(model).to("cpu")
        if rate:
            apply_pruning(candidate, method, rate, meta.img_size)
        nonzero.append(count_parameters(candidate)[1])
        for task, value in _top1(candidate, meta, samples, class_names, device).items():
            top1.setdefault(task, []).append(value)
        if progress:
            progress(f"rate {rate:g}: " + "  ".join(f"{t} {100 * v[-1]:.1f}%" for t, v in top1.items()))
    result = SweepResult(method, rates, top1, nonzero, csv_path, png_path)
    write_bytes(csv_path, _sweep_csv(result).encode())
    name = f"{checkpoint.parent.name}/{checkpoint.name}"
    plot_sweep(rates, top1, f"{name}: {method} pruning, top-1 on {len(samples)} {split} images", png_path)
    return result


def _sweep_csv(result: SweepResult) -> str:
    rows = [[task, *(f"{v:.4f}" for v in values)] for task, values in result.top1.items()]
    rows.append(["nonzero_parameters", *result.nonzero])
    return csv_text(["task", *(f"{r:g}" for r in result.rates)], rows, line_end="\n")
