"""Training curves: `curves.png` (loss and top-1 per task against epoch, train and val), with matplotlib (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carcli.files import atomic_output


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels from metrics.jsonl records: losses, and top-1 of every task (train top-1 is the fine task's)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
