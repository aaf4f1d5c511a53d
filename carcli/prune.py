"""Pruning a checkpoint: magnitude (global L1, unstructured) or channel (Torch-Pruning, channels really removed).

`prune_checkpoint` prunes at one rate, optionally fine-tunes, writes a normal `.st` and reports
before/after size, speed and accuracy; `sweep` scores rates 0.1..0.9 without writing models.
A channel-pruned model has other shapes than its architecture's: `structure_of` records the
module attributes that changed (in the checkpoint's `pruned` metadata) and `rebuild_structure`
reshapes a freshly built model to them, so `carcli.checkpoint.load_model` loads it like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from carcli.bench import count_parameters, eval_samples, latency_ms, top1_per_task
from carcli.checkpoint import load_checkpoint, load_model, save_checkpoint, trained_on
from carcli.device import resolve_device
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_file, csv_text, write_bytes
from carcli.usage import check_prune

if TYPE_CHECKING:
    from carcli.data.layouts import Sample
    from carcli.train import Reporter

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


# ---------------------------------------------------------------- pruning a model in place


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The weights of every convolution and linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def magnitude_prune(model: nn.Module, rate: float, permanent: bool = True) -> None:
    """Zero the `rate` share of conv and linear weights with the smallest |w|, globally.

    `permanent=False` keeps torch's masks (`weight_orig` * `weight_mask`) so that fine-tuning cannot
    regrow the zeros; `fold_masks` turns such a state dict into plain weights afterwards.
    """
    from torch.nn.utils import prune

    weights = prunable_weights(model)
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=rate)
    if permanent:
        for module, name in weights:
            prune.remove(module, name)


def fold_masks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with pruning masks (`x_orig`, `x_mask`) as plain tensors `x` = `x_orig` * `x_mask`."""
    masked = {k.removesuffix("_orig") for k in state if k.endswith("_orig") and f"{k[:-5]}_mask" in state}
    plain = {
        k: v
        for k, v in state.items()
        if k.removesuffix("_orig") not in masked and k.removesuffix("_mask") not in masked
    }
    return {**plain, **{base: state[f"{base}_orig"] * state[f"{base}_mask"] for base in masked}}


def weight_sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the conv and linear weights."""
    tensors = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(1, total)


def channel_prune(model: nn.Module, rate: float, img_size: int) -> None:
    """Remove the `rate` share of channels of every prunable layer (L1 importance), keeping the class outputs."""
    import torch_pruning as tp

    model.eval()
    example = torch.zeros(1, 3, img_size, img_size)
    head = getattr(model, "head", model)
    outputs = [m for m in head.modules() if isinstance(m, nn.Linear)]
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=rate, ignored_layers=outputs)
    pruner.step()


def apply_pruning(model: nn.Module, method: str, rate: float, img_size: int, permanent: bool = True) -> None:
    """Prune `model` in place with `method` at `rate` (`permanent` as for `magnitude_prune`)."""
    if method == "magnitude":
        magnitude_prune(model, rate, permanent)
    else:
        channel_prune(model, rate, img_size)


def pruned_metadata(model: nn.Module, meta: dict[str, Any], method: str, rate: float) -> dict[str, Any]:
    """`meta` with the `pruned` entry that load_model needs to rebuild the pruned `model`."""
    pruned: dict[str, Any] = {"method": method, "rate": rate, "sparsity": weight_sparsity(model)}
    structure = structure_of(model, meta)
    if structure:
        pruned["structure"] = structure
    return {**meta, "pruned": pruned}


# ---------------------------------------------------------------- storing the new shapes


def _shape_like(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, tuple | list) and all(isinstance(v, int) for v in value))


def _attributes(module: nn.Module) -> dict[str, Any]:
    """A module's plain integer attributes (channel counts, groups, ...), the ones pruning rewrites."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _shape_like(v)}


def structure_of(model: nn.Module, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{module name: {attribute: value}} where `model` differs from a fresh model of its architecture."""
    from carcli.models.registry import create_model

    tasks = {task: len(names) for task, names in meta["tasks"].items()}
    with torch.device("meta"):
        fresh = dict(create_model(meta["arch"], meta["head"], tasks).named_modules())
    structure: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        before = _attributes(fresh[name])
        changed = {
            k: list(v) if isinstance(v, tuple) else v for k, v in _attributes(module).items() if before.get(k) != v
        }
        if changed:
            structure[name] = changed
    return structure


def rebuild_structure(model: nn.Module, structure: dict[str, dict[str, Any]], state: dict[str, Tensor]) -> None:
    """Give a fresh model the recorded attributes and the tensor shapes of `state`, ready for load_state_dict."""
    for name, attributes in structure.items():
        module = model.get_submodule(name)
        for attribute, value in attributes.items():
            setattr(module, attribute, tuple(value) if isinstance(getattr(module, attribute), tuple) else value)
    current = model.state_dict()
    for key, tensor in state.items():
        if key in current and current[key].shape != tensor.shape:
            path, _, attribute = key.rpartition(".")
            module = model.get_submodule(path)
            empty = torch.empty(tensor.shape, dtype=tensor.dtype)
            is_parameter = isinstance(getattr(module, attribute), nn.Parameter)
            setattr(module, attribute, nn.Parameter(empty) if is_parameter else empty)


# ---------------------------------------------------------------- the command


def _load(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    model, meta = load_model(checkpoint)
    if "members" in meta:
        raise CarcliError(f"{checkpoint} is an ensemble; prune its members, then ensemble the pruned files")
    return model, meta


def _report(
    model: nn.Module, meta: dict[str, Any], file_bytes: int, samples: list[Sample], class_names: list[str], device: str
) -> ModelReport:
    total, nonzero = count_parameters(model)
    top1 = top1_per_task(model, meta, samples, class_names, device=device)
    speed = latency_ms(model.to("cpu"), int(meta["img_size"]), threads=1)
    return ModelReport(total, nonzero, file_bytes, speed, top1)


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
    apply_pruning(model.to("cpu"), method, rate, int(meta["img_size"]), permanent=not finetune_epochs)
    pruned_meta = pruned_metadata(model, meta, method, rate)
    zeros = pruned_meta["pruned"]["sparsity"]
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
    meta: dict[str, Any],
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
    options = {k: v for k, v in meta.get("train", {}).items() if k in known}
    config = TrainConfig(  # the run's own recipe and peak lr, without warmup: the model starts trained
        **{
            **options,
            "data": str(data),
            "arch": meta["arch"],
            "head": meta["head"],
            "img_size": meta.get("train_img_size", meta["img_size"]),
            "epochs": epochs,
            "warmup_epochs": 0.0,
            "weights": None,
            "pretrained": False,
            "init": None,
            "teacher": teachers,
            "out": str(run_dir),
        }
    )
    train(config, reporter, model=model, extra_meta={"pruned": meta["pruned"]})  # type: ignore[arg-type]
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
            apply_pruning(candidate, method, rate, int(meta["img_size"]))
        nonzero.append(count_parameters(candidate)[1])
        for task, value in top1_per_task(candidate, meta, samples, class_names, device=device).items():
            top1.setdefault(task, []).append(value)
        if progress:
            progress(f"rate {rate:g}: " + "  ".join(f"{t} {100 * v[-1]:.1f}%" for t, v in top1.items()))
    result = SweepResult(method, rates, top1, nonzero, csv_path, png_path)
    write_bytes(csv_path, _sweep_csv(result).encode())
    name = f"{checkpoint.parent.name}/{checkpoint.name}"
    _plot_sweep(result, f"{name}: {method} pruning, top-1 on {len(samples)} {split} images")
    return result


def _sweep_csv(result: SweepResult) -> str:
    rows = [[task, *(f"{v:.4f}" for v in values)] for task, values in result.top1.items()]
    rows.append(["nonzero_parameters", *result.nonzero])
    return csv_text(["task", *(f"{r:g}" for r in result.rates)], rows, line_end="\n")


def _plot_sweep(result: SweepResult, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for task, values in result.top1.items():
        ax.plot(result.rates, [100 * v for v in values], "o-", label=task)
    ax.set(title=title, xlabel="pruning rate", ylabel="top-1 (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(result.png_path, buffer.getvalue())
