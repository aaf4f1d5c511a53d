"""Scoring predictions (numpy; torch tensors on the CPU are accepted as they are): top-k accuracy, top-1 per
task, the tasks a model has no head for, per-task metrics with confusion matrices, hierarchy consistency, the
most confused pairs.

Nothing here imports torch, so an ONNX model is scored by the very code that scores a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.taxonomy import FINE

TOP_K = 5


def topk_accuracy(probs: Any, targets: Any, k: int = 1) -> float:
    """Share of rows whose true class is among the k most probable (k capped at the class count)."""
    p, y = np.asarray(probs), np.asarray(targets)
    if len(y) == 0:
        return 0.0
    top = np.argsort(-p, axis=1, kind="stable")[:, : min(k, p.shape[1])]
    return float((top == y[:, None]).any(1).mean())


def top1_per_task(
    probs: dict[str, Any], targets: dict[str, Any], tasks: Sequence[str] | None = None
) -> dict[str, float]:
    """Top-1 of every task of `probs` (or of `tasks`, in that order) against `targets`."""
    return {task: topk_accuracy(probs[task], targets[task]) for task in (probs if tasks is None else tasks)}


def with_implied_tasks(probs: dict[str, Any], meta: CheckpointMeta) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every task of the checkpoint's taxonomy: a task the model has no head for gets the fine
    distribution summed over its classes (P(make) = sum of P(model) over that make's models).

    Returns the probabilities (numpy) in task order and each task's source ("head" or "fine").
    """
    fine_to = meta.taxonomy.fine_to
    out: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for task, names in meta.tasks.items():
        if task in probs:
            out[task], sources[task] = np.asarray(probs[task]), "head"
        elif task in fine_to:
            onehot = np.zeros((len(fine_to[task]), len(names)), dtype=np.float32)
            onehot[np.arange(len(fine_to[task])), np.asarray(fine_to[task])] = 1.0
            out[task], sources[task] = np.asarray(probs[FINE]) @ onehot, "fine"
    return out, sources


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets), np.asarray(predicted)), 1)
    return matrix


def task_metrics(probs: Any, targets: Any, names: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of one task and its confusion matrix.

    Macro averages run over the classes present in `targets`; a class never predicted has precision 0.
    """
    p, truth = np.asarray(probs), np.asarray(targets)
    predicted = p.argmax(1)
    matrix = confusion_matrix(truth, predicted, len(names))
    support, hits = matrix.sum(1), np.diag(matrix)
    predicted_count = matrix.sum(0)
    recall = np.divide(hits, support, out=np.zeros(len(names)), where=support > 0)
    precision = np.divide(hits, predicted_count, out=np.zeros(len(names)), where=predicted_count > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(len(names)), where=denominator > 0)
    present = support > 0
    picked = np.maximum(p[np.arange(len(truth)), truth].astype(np.float64), 1e-12)
    metrics = {
        "top1": topk_accuracy(p, truth, 1),
        "top5": topk_accuracy(p, truth, TOP_K),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": float(-np.log(picked).mean()) if len(truth) else 0.0,
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
    probs: dict[str, Any], targets: dict[str, Any], meta: CheckpointMeta, sources: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Per coarse task: top-1 of the fine prediction mapped up, and (for a head) how often the head agrees with it."""
    fine_to = meta.taxonomy.fine_to
    fine_pred = np.asarray(probs[FINE]).argmax(1)
    found: dict[str, dict[str, float]] = {}
    for task, index in fine_to.items():
        if task not in probs:
            continue
        implied = np.asarray(index)[fine_pred]
        found[task] = {"implied_top1": float((implied == np.asarray(targets[task])).mean()) if len(implied) else 0.0}
        if sources[task] == "head":
            agree = implied == np.asarray(probs[task]).argmax(1)
            found[task]["agreement"] = float(agree.mean()) if len(agree) else 0.0
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
