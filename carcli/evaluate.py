"""Evaluation: run a checkpoint's model over labelled samples, then turn its predictions into metrics and reports.

`predict_samples` is the one place that feeds a data set's images through a loaded model with the
checkpoint's own preprocessing; everything that scores a model (eval, prune sweeps, ensembles)
starts from the `Predictions` it returns. `evaluate` is the whole `carcli eval` job: the split the
checkpoint's training held out, per-task metrics (top-1/5, macro precision/recall/F1, per-class
accuracy, hierarchy consistency), confusion matrices, the most confused pairs, a contact sheet of
the top-loss images, `eval.json`, and the Stanford Cars devkit submission file with its scorer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from carcli.data.images import ImageDataset, find_unreadable, open_rgb
from carcli.data.layouts import DataSet, Sample, load_dataset
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.data.transforms import eval_transform
from carcli.errors import CarcliError, UsageError
from carcli.files import atomic_output, write_text

EVAL_SPLITS = ("val", "test")
CROPS = ("cam",)
TOP_K = 5
TTA_CROP = 0.875  # the five TTA crops each cover this share of the side of a slightly larger resize
MOST_CONFUSED_SHOWN = 20
TOP_LOSSES = 24
GROUP_TASK = "make"  # the fine confusion matrix is grouped by this task's classes


class StageReporter(Protocol):
    """Receives the progress of long work; the CLI renders it with rich, tests may ignore it."""

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def stage(self, description: str, total: int) -> Callable[[int], None]:
        """Start a stage of `total` images; the returned callback takes the number done so far."""
        ...


class SilentStages:
    """A StageReporter that ignores everything."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def stage(self, description: str, total: int) -> Callable[[int], None]:
        return lambda done: None


@dataclass
class Predictions:
    """Class probabilities and true labels per task, in sample order."""

    paths: list[Path]
    probs: dict[str, Tensor]  # task -> (N, classes) softmax probabilities
    targets: dict[str, Tensor]  # task -> (N,) true class index in that task


def align_labels(class_names: Sequence[str], meta: dict[str, Any]) -> list[int]:
    """For each data-set class, its index among the checkpoint's fine classes; unknown classes are an error."""
    known = {name: i for i, name in enumerate(meta["tasks"][FINE])}
    unknown = [name for name in class_names if name not in known]
    if unknown:
        raise CarcliError(
            f"{len(unknown)} classes of the data set are not among the checkpoint's {len(known)} classes "
            f"(first: {unknown[0]!r})"
        )
    return [known[name] for name in class_names]


# ---------------------------------------------------------------- images -> probabilities


def view_transform(meta: dict[str, Any], tta: bool = False) -> Callable[[Any], Tensor]:
    """The checkpoint's eval preprocessing; with `tta`, a (6, 3, S, S) stack of views (mirrors are added later).

    The views are the whole image and the four corner and centre crops of a resize to S / 0.875.
    """
    size = int(meta["img_size"])
    plain = eval_transform(size, meta["mean"], meta["std"])
    if not tta:
        return plain
    larger = eval_transform(round(size / TTA_CROP), meta["mean"], meta["std"])
    five = v2.FiveCrop(size)
    return lambda img: torch.stack([plain(img), *five(larger(img))])


def batch_probs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Softmax probabilities per task; a 5-D batch (B, views, 3, S, S) is averaged over its views and their mirrors."""
    if images.ndim == 4:
        return {task: z.float().softmax(1) for task, z in model(images).items()}
    batch, views = images.shape[:2]
    flat = images.flatten(0, 1)
    logits = model(torch.cat([flat, flat.flip(-1)]))
    return {task: z.float().softmax(1).view(2, batch, views, -1).mean((0, 2)) for task, z in logits.items()}


@torch.no_grad()
def dataset_probs(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Softmax probabilities per task for every item of `dataset` (image tensors first, labels ignored)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval().to(device)
    chunks: dict[str, list[Tensor]] = {}
    done = 0
    for images, _ in loader:
        for task, p in batch_probs(model, images.to(device)).items():
            chunks.setdefault(task, []).append(p.cpu())
        done += len(images)
        if progress:
            progress(done)
    return {task: torch.cat(parts) for task, parts in chunks.items()}


def sample_probs(
    model: nn.Module,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    tta: bool = False,
    crop_margin: float | None = None,
) -> dict[str, Tensor]:
    """Softmax probabilities per task for `samples`, with the checkpoint's preprocessing (and `tta` views)."""
    size = int(meta["img_size"])
    dataset = ImageDataset(samples, view_transform(meta, tta), size, crop_margin)
    if tta:
        batch_size = max(1, batch_size // 12)  # six views and their mirrors per image
    return dataset_probs(model, dataset, batch_size, device, workers, progress)


def predict_samples(
    model: nn.Module,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    class_names: Sequence[str],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    tta: bool = False,
    crop_margin: float | None = None,
) -> Predictions:
    """Softmax probabilities per task for `samples` (labels index `class_names`), with the checkpoint's preprocessing.

    `progress` is called with the number of images done after each batch. `tta` averages flips and
    crops; `crop_margin` crops samples that have a bounding box to it (grown by that share).
    """
    to_fine = torch.tensor(align_labels(class_names, meta))
    probs = sample_probs(model, meta, samples, batch_size, device, workers, progress, tta, crop_margin)
    return Predictions([s.path for s in samples], probs, sample_targets(samples, to_fine, meta, list(probs)))


def sample_targets(
    samples: Sequence[Sample], to_fine: Tensor, meta: dict[str, Any], tasks: Sequence[str]
) -> dict[str, Tensor]:
    """The true class of every sample in each of `tasks`, from its data-set label."""
    labels = [s.label for s in samples]
    fine = to_fine[torch.tensor(labels, dtype=torch.long)] if labels else torch.zeros(0, dtype=torch.long)
    fine_to = Taxonomy.from_dict(meta["taxonomy"]).fine_to
    targets = {FINE: fine, **{task: torch.tensor(index)[fine] for task, index in fine_to.items()}}
    return {task: targets[task] for task in tasks}


def topk_accuracy(probs: Tensor, targets: Tensor, k: int = 1) -> float:
    """Share of rows whose true class is among the k most probable (k capped at the class count)."""
    if len(targets) == 0:
        return 0.0
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return float((top == targets[:, None]).any(1).double().mean())


def with_implied_tasks(probs: dict[str, Tensor], meta: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every task of the checkpoint's taxonomy: a task the model has no head for gets the fine
    distribution summed over its classes (P(make) = sum of P(model) over that make's models).

    Returns the probabilities in task order and each task's source ("head" or "fine").
    """
    fine_to = Taxonomy.from_dict(meta["taxonomy"]).fine_to
    out: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    for task, names in meta["tasks"].items():
        if task in probs:
            out[task], sources[task] = probs[task], "head"
        elif task in fine_to:
            onehot = torch.zeros(len(fine_to[task]), len(names))
            onehot[torch.arange(len(fine_to[task])), torch.tensor(fine_to[task])] = 1.0
            out[task], sources[task] = probs[FINE] @ onehot, "fine"
    return out, sources


# ---------------------------------------------------------------- metrics


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    return matrix


def task_metrics(probs: Tensor, targets: Tensor, names: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of one task and its confusion matrix.

    Macro averages run over the classes present in `targets`; a class never predicted has precision 0.
    """
    truth = targets.numpy()
    predicted = probs.argmax(1).numpy()
    matrix = confusion_matrix(truth, predicted, len(names))
    support, hits = matrix.sum(1), np.diag(matrix)
    predicted_count = matrix.sum(0)
    recall = np.divide(hits, support, out=np.zeros(len(names)), where=support > 0)
    precision = np.divide(hits, predicted_count, out=np.zeros(len(names)), where=predicted_count > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(len(names)), where=denominator > 0)
    present = support > 0
    picked = probs[torch.arange(len(targets)), targets].clamp_min(1e-12)
    metrics = {
        "top1": topk_accuracy(probs, targets, 1),
        "top5": topk_accuracy(probs, targets, TOP_K),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": float(-picked.log().mean()) if len(targets) else 0.0,
        "classes": int(present.sum()),
        "per_class": {
            names[i]: {
                "support": int(support[i]),
                "accuracy": float(recall[i]),
                "precision": float(precision[i]),
                "f1": float(f1[i]),
            }
            for i in np.flatnonzero(present)
        },
    }
    return metrics, matrix


def hierarchy_consistency(
    probs: dict[str, Tensor], targets: dict[str, Tensor], meta: dict[str, Any], sources: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Per coarse task: top-1 of the fine prediction mapped up, and (for a head) how often the head agrees with it."""
    fine_to = Taxonomy.from_dict(meta["taxonomy"]).fine_to
    fine_pred = probs[FINE].argmax(1)
    found: dict[str, dict[str, float]] = {}
    for task, index in fine_to.items():
        if task not in probs:
            continue
        implied = torch.tensor(index)[fine_pred]
        found[task] = {"implied_top1": float((implied == targets[task]).double().mean()) if len(implied) else 0.0}
        if sources[task] == "head":
            agree = implied == probs[task].argmax(1)
            found[task]["agreement"] = float(agree.double().mean()) if len(agree) else 0.0
    return found


def most_confused(matrix: np.ndarray, names: Sequence[str], group_of: Sequence[str] | None) -> list[dict[str, Any]]:
    """Off-diagonal (true, predicted) pairs by count, largest first; `share` is of the true class's images."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    order = sorted(range(len(rows)), key=lambda i: (-off[rows[i], cols[i]], names[rows[i]], names[cols[i]]))
    support = matrix.sum(1)
    return [
        {
            "true": names[rows[i]],
            "predicted": names[cols[i]],
            "count": int(off[rows[i], cols[i]]),
            "share": float(off[rows[i], cols[i]] / support[rows[i]]),
            "same_make": None if group_of is None else group_of[rows[i]] == group_of[cols[i]],
        }
        for i in order
    ]


# ---------------------------------------------------------------- the devkit submission format


def _annotations(path: Path) -> list[Any]:
    from carcli.data.layouts import _csv_annotations, _mat_annotations

    annotations = _csv_annotations(path) if path.suffix.lower() == ".csv" else _mat_annotations(path)
    if annotations is None:
        raise CarcliError(f"{path} has no classes (the unlabelled test annotations?)")
    return annotations


def annotation_classes(path: Path) -> list[int]:
    """The 1-based class of every annotation of a devkit file: a cars_*_annos*.mat or test_labels.csv."""
    if not path.is_file():
        raise CarcliError(f"annotation file not found: {path}")
    return [a.label for a in _annotations(path)]


def score_submission(path: Path, classes: Sequence[int]) -> float:
    """Top-1 of a submission file (class of annotation M on line M) against `classes`, as the devkit's eval_train.m."""
    try:
        predicted = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError) as exc:
        raise CarcliError(f"{path} is not a submission file (one integer class a line): {exc}") from None
    if len(predicted) != len(classes):
        raise CarcliError(f"{path} has {len(predicted)} predictions but there are {len(classes)} annotations")
    valid = set(classes)
    bad = next((i for i, c in enumerate(predicted) if c not in valid), None)
    if bad is not None:
        raise CarcliError(f"{path}: line {bad + 1} predicts class {predicted[bad]}, which is not a valid class")
    return float(np.mean(np.array(predicted) == np.array(classes))) if classes else 0.0


def split_annotations(dataset: DataSet, split: str) -> tuple[Path, list[Path], list[int]]:
    """The devkit annotation file behind `split`, the image path of each annotation and its 1-based class."""
    from carcli.data import layouts

    if dataset.layout != "devkit":
        raise UsageError(f"--submission needs a Stanford Cars devkit; {dataset.root} is a {dataset.layout} data set")
    base = layouts._locate(dataset.root)[1]
    if split == "test":
        names, folder = (layouts.DEVKIT_TEST_ANNOS, layouts.DEVKIT_TEST_CSV), base / layouts.DEVKIT_TEST_DIR
    else:
        names, folder = (layouts.DEVKIT_TRAIN_ANNOS,), base / layouts.DEVKIT_TRAIN_DIR
    source = next((p for p in (layouts._devkit_file(base, n) for n in names) if p), None)
    if source is None:
        raise CarcliError(f"{base} has no labelled annotation file for the {split} split")
    annotations = _annotations(source)
    return source, [folder / a.fname for a in annotations], [a.label for a in annotations]


@dataclass
class SubmissionPlan:
    """Where a submission goes and what it scores against: the image of each annotation and its true class."""

    path: Path
    annotated: list[Path]
    truth: list[int]

    def write(self, dataset: DataSet, paths: Sequence[Path], fine_pred: Sequence[int], meta: dict[str, Any]) -> float:
        """Line M = the predicted 1-based devkit class of annotation M; returns the file's score."""
        by_path = dict(zip(paths, fine_pred, strict=True))
        devkit_class = {name: i + 1 for i, name in enumerate(dataset.class_names)}
        names = meta["tasks"][FINE]
        write_text(self.path, "".join(f"{devkit_class[names[by_path[p]]]}\n" for p in self.annotated))
        return score_submission(self.path, self.truth)


def plan_submission(
    path: Path, dataset: DataSet, split: str, samples: Sequence[Sample], meta: dict[str, Any]
) -> SubmissionPlan:
    """Check, before any prediction, that `samples` cover every annotation of the split's devkit file
    and that every class the checkpoint can predict has a devkit class number."""
    source, annotated, truth = split_annotations(dataset, split)
    foreign = set(meta["tasks"][FINE]) - set(dataset.class_names)
    if foreign:
        raise CarcliError(f"--submission: the checkpoint predicts {len(foreign)} classes the devkit does not number")
    have = {s.path for s in samples}
    missing = [p for p in annotated if p not in have]
    if missing:
        raise CarcliError(
            f"--submission needs a prediction for each of the {len(annotated)} annotations in {source.name}, "
            f"but {len(missing)} have no readable image in the {split} split (first: {missing[0].name}); "
            "use --split test on a devkit with cars_test/ and its labels"
        )
    return SubmissionPlan(path, annotated, truth)


# ---------------------------------------------------------------- files


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure atomically and free it."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        _pyplot().close(fig)


def _normalised(matrix: np.ndarray) -> np.ndarray:
    rows = matrix.sum(1, keepdims=True)
    return np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)


def plot_confusion(
    matrix: np.ndarray,
    names: Sequence[str],
    path: Path,
    group_of: Sequence[str] | None = None,
    group_matrix: np.ndarray | None = None,
    group_names: Sequence[str] | None = None,
) -> None:
    """Row-normalised confusion as a PNG a person can read at 196 classes.

    Classes that occur (as truth or prediction) are ordered by group (make) and name, make
    boundaries are drawn, rows are labelled with class names and columns with make names; the
    make-level matrix stands beside it. A square-root colour scale keeps small confusions visible.
    """
    from matplotlib.colors import PowerNorm

    plt = _pyplot()
    shown = [i for i in range(len(names)) if matrix[i].sum() or matrix[:, i].sum()]
    groups = group_of or [""] * len(names)
    order = sorted(shown, key=lambda i: (groups[i], names[i]))
    sub = _normalised(matrix[np.ix_(order, order)])
    n = len(order)
    side = max(6.0, 0.09 * n + 3)
    with_groups = group_of is not None and group_matrix is not None and group_names is not None
    fig, axes = plt.subplots(
        1, 2 if with_groups else 1, figsize=(side * (1.6 if with_groups else 1.1), side), layout="constrained",
        gridspec_kw={"width_ratios": [1.0, 0.55]} if with_groups else None, squeeze=False,
    )  # fmt: skip
    norm = PowerNorm(0.5, vmin=0, vmax=1)
    ax = axes[0][0]
    image = ax.imshow(sub, cmap="magma_r", norm=norm, interpolation="nearest")
    font = float(np.clip(0.8 * 72 * (side - 3) / max(n, 1), 3, 9))
    ax.set_yticks(range(n), [names[i] for i in order], fontsize=font)
    ax.set_ylabel("true class")
    if group_of is not None:
        starts = [k for k in range(n) if k == 0 or groups[order[k]] != groups[order[k - 1]]]
        for k in starts[1:]:
            ax.axhline(k - 0.5, color="tab:blue", lw=0.4)
            ax.axvline(k - 0.5, color="tab:blue", lw=0.4)
        centres = [(a + b - 1) / 2 for a, b in zip(starts, [*starts[1:], n], strict=True)]
        ax.set_xticks(centres, [groups[order[k]] for k in starts], rotation=90, fontsize=max(font, 5))
        ax.set_xlabel("predicted class (grouped by make)")
    else:
        ax.set_xticks(range(n), [names[i] for i in order], rotation=90, fontsize=font)
        ax.set_xlabel("predicted class")
    ax.set_title(f"confusion, row-normalised ({n} classes)")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="share of the true class")
    if with_groups:
        _plot_group_confusion(axes[0][1], group_matrix, group_names, norm)
    save_figure(fig, path, dpi=150 if n > 60 else 100)


def _plot_group_confusion(ax: Any, matrix: np.ndarray, names: Sequence[str], norm: Any) -> None:
    shown = [i for i in range(len(names)) if matrix[i].sum() or matrix[:, i].sum()]
    sub = _normalised(matrix[np.ix_(shown, shown)])
    n = len(shown)
    ax.imshow(sub, cmap="magma_r", norm=norm, interpolation="nearest")
    font = float(np.clip(300 / max(n, 1), 4, 9))
    labels = [names[i] for i in shown]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    if n <= 25:
        for (row, col), value in np.ndenumerate(sub):
            if value >= 0.005:
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=font - 1,
                        color="white" if value > 0.5 else "black")  # fmt: skip
    ax.set(title=f"by make ({n} makes)", xlabel="predicted make", ylabel="true make")


def plot_top_losses(
    paths: Sequence[Path],
    truth: Sequence[str],
    predicted: Sequence[str],
    scores: Sequence[float],
    losses: Sequence[float],
    path: Path,
    columns: int = 6,
) -> None:
    """A contact sheet: each image with its true class, the prediction, its probability and the loss."""
    plt = _pyplot()
    rows = max(1, -(-len(paths) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, guess, score, loss in zip(axes.flat, paths, truth, predicted, scores, losses, strict=False):
        thumb = open_rgb(image, 160)
        thumb.thumbnail((240, 240))
        ax.imshow(thumb)
        wrap = "\n".join(textwrap.wrap(f"true: {true}", 34)[:2] + textwrap.wrap(f"pred: {guess}", 34)[:2])
        ax.set_title(f"{wrap}\np={score:.2f}  loss {loss:.2f}", fontsize=7, color="firebrick" if true != guess else "k")
    fig.suptitle("top losses (highest cross-entropy of the fine class first)")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- the eval job


@dataclass
class EvalResult:
    """What `evaluate` measured and wrote."""

    report: dict[str, Any]  # the eval.json object
    out_dir: Path
    files: list[Path]
    most_confused: list[dict[str, Any]]  # the top pairs (all of them are in most_confused.csv)
    unreadable: list[Path] = field(default_factory=list)
    submission_top1: float | None = None  # the written submission, scored by `score_submission`


def split_samples(meta: dict[str, Any], data: Path, split: str | None) -> tuple[DataSet, list[Sample], str]:
    """The data set read as the checkpoint's training run read it (same val share and seed), and a split of it."""
    train = meta.get("train") or {}
    dataset = load_dataset(Path(data), float(train.get("val_fraction", 0.2)), int(train.get("seed", 0)))
    name = split or dataset.eval_split
    if name not in EVAL_SPLITS:
        raise CarcliError(f"{data} has no val or test images to evaluate on (raise the training --val-fraction?)")
    samples = dataset.split(name)
    if not samples:
        present = sorted({s.split for s in dataset.samples})
        raise CarcliError(f"{data} has no {name} images (it has {', '.join(present)}); choose --split accordingly")
    return dataset, samples, name


def check_crop(crop: str | None, tta: bool = False) -> None:
    """Refuse an unknown --crop, and --crop cam with --tta."""
    if crop is not None and crop not in CROPS:
        raise UsageError(f"--crop must be one of {', '.join(CROPS)}")
    if crop and tta:
        raise UsageError("--tta and --crop cam cannot be combined")


def default_workers(images: int, batch_size: int) -> int:
    """Loader processes: none for a single batch, else half the cores (at most 8), as training on a CPU."""
    return 0 if images <= batch_size else min(8, (os.cpu_count() or 2) // 2)


def evaluate(
    checkpoint: Path,
    data: Path | None = None,
    split: str | None = None,
    out: Path | None = None,
    tta: bool = False,
    crop: str | None = None,
    submission: Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    reporter: StageReporter | None = None,
    img_size: int | None = None,
    hierarchy: bool = False,
) -> EvalResult:
    """The `carcli eval` job: metrics and reports of `checkpoint` on a split of `data`, written to `out`.

    `data` defaults to the data set the checkpoint was trained on; `split` to its val split (else
    test); `out` to `eval-<split>` beside the checkpoint; `img_size` to the size stored in the checkpoint.
    `hierarchy` scores hierarchy-consistent answers (carcli.hierarchy); the report has both either way.
    """
    from carcli.checkpoint import at_size, load_model
    from carcli.device import resolve_device
    from carcli.hierarchy import consistent_probs, hierarchy_report

    started = time.perf_counter()
    reporter = reporter or SilentStages()
    _check_options(split, crop, tta, batch_size)
    torch_device = str(resolve_device(device))
    model, meta = load_model(checkpoint, torch_device)
    meta = at_size(meta, img_size)
    data = data or _trained_on(meta, checkpoint)
    dataset, samples, split = split_samples(meta, data, split)
    to_fine = torch.tensor(align_labels(dataset.class_names, meta))
    unreadable = find_unreadable([s.path for s in samples])
    if unreadable:
        reporter.warn(f"skipped {len(unreadable)} unreadable images (listed in unreadable.txt)")
        bad = set(unreadable)
        samples = [s for s in samples if s.path not in bad]
    if not samples:
        raise CarcliError(f"no readable images in the {split} split of {data}")
    plan = plan_submission(submission, dataset, split, samples, meta) if submission is not None else None
    out_dir = out or checkpoint.parent / f"eval-{split}"
    reporter.info(f"evaluating {checkpoint} on {len(samples)} {split} images of {data} ({torch_device})")
    plain, raw = _run(model, meta, samples, tta, crop, batch_size, workers, torch_device, reporter)
    probs, sources = with_implied_tasks(consistent_probs(raw, meta) if hierarchy else raw, meta)
    targets = sample_targets(samples, to_fine, meta, list(probs))
    tasks, files, pairs = _write_reports(meta, samples, probs, targets, sources, out_dir)
    if plain is not None:
        plain_probs = with_implied_tasks(plain, meta)[0]
        for task, metrics in tasks.items():
            metrics["plain_top1"] = topk_accuracy(plain_probs[task], targets[task])
    result = EvalResult({}, out_dir, files, pairs[:MOST_CONFUSED_SHOWN], unreadable)
    if unreadable:
        files.append(out_dir / "unreadable.txt")
        write_text(files[-1], "".join(f"{p}\n" for p in unreadable))
    if plan is not None:
        fine_pred = probs[FINE].argmax(1).tolist()
        result.submission_top1 = plan.write(dataset, [s.path for s in samples], fine_pred, meta)
        files.append(plan.path)
    result.report = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "n_images": len(samples),
        "tasks": tasks,
        **hierarchy_report(raw, targets[FINE], meta, hierarchy),
        "seconds": round(time.perf_counter() - started, 3),
    }
    files.insert(0, out_dir / "eval.json")
    write_text(files[0], json.dumps(result.report, indent=2) + "\n")
    return result


def _check_options(split: str | None, crop: str | None, tta: bool, batch_size: int) -> None:
    if split is not None and split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    check_crop(crop, tta)


def _trained_on(meta: dict[str, Any], checkpoint: Path) -> Path:
    root = (meta.get("data") or {}).get("root") or (meta.get("train") or {}).get("data")
    if not root:
        raise UsageError(f"{checkpoint} does not record its training data; pass --data DIR")
    return Path(root)


def _run(
    model: nn.Module,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    tta: bool,
    crop: str | None,
    batch_size: int,
    workers: int | None,
    device: str,
    reporter: StageReporter,
) -> tuple[dict[str, Tensor] | None, dict[str, Tensor]]:
    """Probabilities per task: (first pass, two-pass) with `crop`, else (None, plain or TTA)."""
    train = meta.get("train") or {}
    crop_margin = float(train.get("bbox_margin", 0.1)) if train.get("crop_to_bbox") else None
    workers = default_workers(len(samples), batch_size) if workers is None else workers
    run = {"batch_size": batch_size, "device": device, "workers": workers, "crop_margin": crop_margin}
    if crop == "cam":
        from carcli.explain import cam_crop_probs

        return cam_crop_probs(model, meta, samples, reporter=reporter, **run)
    progress = reporter.stage("evaluating" + (" (TTA)" if tta else ""), len(samples))
    return None, sample_probs(model, meta, samples, progress=progress, tta=tta, **run)


def _write_reports(
    meta: dict[str, Any],
    samples: Sequence[Sample],
    probs: dict[str, Tensor],
    targets: dict[str, Tensor],
    sources: dict[str, str],
    out_dir: Path,
) -> tuple[dict[str, dict[str, Any]], list[Path], list[dict[str, Any]]]:
    """Metrics of every task; confusion.png/.csv, most_confused.csv, per_class.csv and top_losses.png."""
    tasks: dict[str, dict[str, Any]] = {}
    matrices: dict[str, np.ndarray] = {}
    for task, p in probs.items():
        metrics, matrices[task] = task_metrics(p, targets[task], meta["tasks"][task])
        tasks[task] = {"source": sources[task], **metrics}
    for task, extra in hierarchy_consistency(probs, targets, meta, sources).items():
        tasks[task].update(extra)
    names = meta["tasks"][FINE]
    fine_to = Taxonomy.from_dict(meta["taxonomy"]).fine_to
    group_names = meta["tasks"].get(GROUP_TASK)
    group_of = [group_names[i] for i in fine_to[GROUP_TASK]] if group_names and GROUP_TASK in fine_to else None
    files = [out_dir / name for name in ("confusion.png", "confusion.csv", "most_confused.csv", "per_class.csv")]
    plot_confusion(matrices[FINE], names, files[0], group_of, matrices.get(GROUP_TASK), group_names)
    rows = [[name, *row] for name, row in zip(names, matrices[FINE].tolist(), strict=True)]
    write_csv(files[1], ["true \\ predicted", *names], rows)
    pairs = most_confused(matrices[FINE], names, group_of)
    write_csv(files[2], ["true", "predicted", "count", "share", "same_make"], [list(p.values()) for p in pairs])
    per_class = [
        [task, name, c["support"], c["accuracy"], c["precision"], c["f1"]]
        for task, metrics in tasks.items()
        for name, c in metrics["per_class"].items()
    ]
    write_csv(files[3], ["task", "class", "support", "accuracy", "precision", "f1"], per_class)
    files.append(out_dir / "top_losses.png")
    _top_losses(samples, probs[FINE], targets[FINE], names, files[-1])
    return tasks, files, pairs


def _top_losses(samples: Sequence[Sample], probs: Tensor, targets: Tensor, names: Sequence[str], path: Path) -> None:
    losses = -probs[torch.arange(len(targets)), targets].clamp_min(1e-12).log()
    worst = losses.argsort(descending=True)[:TOP_LOSSES].tolist()
    predicted = probs.argmax(1)
    plot_top_losses(
        [samples[i].path for i in worst],
        [names[int(targets[i])] for i in worst],
        [names[int(predicted[i])] for i in worst],
        [float(probs[i, predicted[i]]) for i in worst],
        [float(losses[i]) for i in worst],
        path,
    )
