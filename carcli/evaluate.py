"""Evaluation: run a checkpoint's model over labelled samples, then turn its predictions into metrics.

`predict_samples` is the one place that feeds a data set's images through a loaded model with the
checkpoint's own preprocessing; everything that scores a model (eval, prune sweeps, ensembles)
starts from the `Predictions` it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from carcli.data.images import ImageDataset
from carcli.data.layouts import Sample
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.data.transforms import eval_transform
from carcli.errors import CarcliError


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


@torch.no_grad()
def predict_samples(
    model: nn.Module,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    class_names: Sequence[str],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Softmax probabilities per task for `samples` (labels index `class_names`), with the checkpoint's preprocessing.

    `progress` is called with the number of images done after each batch.
    """
    to_fine = torch.tensor(align_labels(class_names, meta))
    fine_to = Taxonomy.from_dict(meta["taxonomy"]).fine_to
    size = int(meta["img_size"])
    dataset = ImageDataset(samples, eval_transform(size, meta["mean"], meta["std"]), size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval().to(device)
    chunks: dict[str, list[Tensor]] = {}
    labels: list[Tensor] = []
    done = 0
    for images, batch_labels in loader:
        logits = model(images.to(device))
        for task, z in logits.items():
            chunks.setdefault(task, []).append(z.float().softmax(1).cpu())
        labels.append(to_fine[batch_labels])
        done += len(batch_labels)
        if progress:
            progress(done)
    fine = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    targets = {FINE: fine, **{task: torch.tensor(index)[fine] for task, index in fine_to.items()}}
    probs = {task: torch.cat(parts) for task, parts in chunks.items()}
    return Predictions([s.path for s in samples], probs, {task: targets[task] for task in probs})


def topk_accuracy(probs: Tensor, targets: Tensor, k: int = 1) -> float:
    """Share of rows whose true class is among the k most probable (k capped at the class count)."""
    if len(targets) == 0:
        return 0.0
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return float((top == targets[:, None]).any(1).float().mean())
