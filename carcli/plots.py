"""Every figure carcli draws, with matplotlib (Agg, set up once in `pyplot`) and written atomically (`save_figure`):
training curves, confusion matrices, the top-loss contact sheet, reliability diagrams and prune's sweep;
`carcli tune` draws Optuna's charts through the same two functions.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from carcli.data.images import open_rgb
from carcli.files import atomic_output


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels from metrics.jsonl records: losses, and top-1 of every task (train top-1 is the fine task's)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    if records[0]["val_loss"] is not None:  # None: trained with --val-fraction 0, no validation
        loss_ax.plot(epochs, [r["val_loss"] for r in records], "o-", label="val")
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.plot(epochs, [100 * r["train_top1"] for r in records], "o--", label="model (train)")
    for task in records[0]["val_top1"]:
        acc_ax.plot(epochs, [100 * r["val_top1"][task] for r in records], "o-", label=f"{task} (val)")
    acc_ax.set(title="top-1 accuracy (%)", xlabel="epoch", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
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
        pyplot().close(fig)


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

    plt = pyplot()
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
    plt = pyplot()
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


def plot_reliability(bins: dict[str, list[dict[str, float]]], ece: dict[str, float], path: Path) -> None:
    """One reliability diagram per task: accuracy against mean confidence per bin, the diagonal, the gaps, ECE."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(bins), figsize=(3.6 * len(bins), 3.8), squeeze=False)
    for ax, (task, table) in zip(axes[0], bins.items(), strict=True):
        lower = np.array([b["lower"] for b in table])
        width = table[0]["upper"] - table[0]["lower"]
        filled = np.array([b["count"] > 0 for b in table])
        accuracy = np.array([b["accuracy"] for b in table])
        confidence = np.array([b["confidence"] for b in table])
        ax.bar(lower[filled], accuracy[filled], width, align="edge", color="tab:blue", edgecolor="k", label="accuracy")
        ax.bar(lower[filled], (confidence - accuracy)[filled], width, bottom=accuracy[filled], align="edge",
               color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(title=f"{task}: ECE {100 * ece[task]:.1f}%", xlabel="confidence", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize="small", loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def plot_sweep(rates: Sequence[float], top1: dict[str, Sequence[float]], title: str, path: Path) -> None:
    """Top-1 (%) of every task against the pruning rate."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for task, values in top1.items():
        ax.plot(rates, [100 * v for v in values], "o-", label=task)
    ax.set(title=title, xlabel="pruning rate", ylabel="top-1 (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)
