"""Hierarchy-consistent answers of multi-task checkpoints: the fine head combined with the make and type heads.

The combined score of fine class f is

    log p_fine(f) + a * log p_make(make of f) + b * log p_type(type of f)

so the answer is a fine class whose make and type the coarse heads also believe in. `a` and `b`
are fitted on the validation split at the end of training (a small grid, best fine top-1, the
smaller weights on ties) and stored in the checkpoint's metadata as
`"hierarchy": {"weights": {"make": a, "type": b}, "val_top1", "val_plain_top1"}`. `consistent_probs`
turns a model's probabilities into consistent ones: the fine distribution is the softmax of the
combined score, and each coarse task's is, per coarse class, the best combined fine probability
among its fine classes (renormalised), so the reported make and type are always those of the top
fine class.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.taxonomy import FINE
from carcli.errors import UsageError

TASKS = ("make", "type")
GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
DEFAULT_WEIGHTS = {"make": 1.0, "type": 1.0}  # for checkpoints trained before the weights were fitted
EPS = 1e-12


def combined_scores(probs: dict[str, Tensor], fine_to: dict[str, list[int]], weights: dict[str, float]) -> Tensor:
    """(N, fine classes) log p_fine + sum over tasks of weight * log p_task(task class of the fine class)."""
    score = probs[FINE].clamp_min(EPS).log()
    for task, weight in weights.items():
        if weight:
            score = score + weight * probs[task].clamp_min(EPS).log()[:, torch.tensor(fine_to[task])]
    return score


def hierarchy_tasks(probs: dict[str, Tensor], meta: CheckpointMeta) -> list[str]:
    """The coarse tasks among make and type that the model has a head for (its probabilities are in `probs`)."""
    fine_to = meta.taxonomy.fine_to
    return [task for task in TASKS if task in probs and task in fine_to]


def fit_weights(probs: dict[str, Tensor], targets: Tensor, meta: CheckpointMeta) -> dict[str, Any] | None:
    """The grid weights with the best fine top-1 on (`probs`, fine `targets`); None without make/type heads."""
    tasks = hierarchy_tasks(probs, meta)
    if not tasks or not len(targets):
        return None
    fine_to = meta.taxonomy.fine_to
    best: tuple[float, float, dict[str, float]] | None = None
    for combo in itertools.product(GRID, repeat=len(tasks)):
        weights = dict(zip(tasks, combo, strict=True))
        top1 = float((combined_scores(probs, fine_to, weights).argmax(1) == targets).double().mean())
        if best is None or (top1, -sum(combo)) > (best[0], -sum(best[2].values())):
            best = (top1, sum(combo), weights)
    assert best is not None
    plain = float((probs[FINE].argmax(1) == targets).double().mean())
    return {"weights": best[2], "val_top1": best[0], "val_plain_top1": plain}


def stored_weights(probs: dict[str, Tensor], meta: CheckpointMeta) -> dict[str, float]:
    """The checkpoint's fitted weights (a=b=1 when it has none) for the tasks the model predicts."""
    tasks = hierarchy_tasks(probs, meta)
    if not tasks:
        raise UsageError("--hierarchy needs a checkpoint with make or type heads (--head mtl or mtl-aux)")
    weights = meta.hierarchy_weights or DEFAULT_WEIGHTS
    return {task: float(weights.get(task, 0.0)) for task in tasks}


def consistent_probs(probs: dict[str, Tensor], meta: CheckpointMeta) -> dict[str, Tensor]:
    """Probabilities whose top fine class, make and type agree (see the module docstring)."""
    fine_to = meta.taxonomy.fine_to
    weights = stored_weights(probs, meta)
    fine = combined_scores(probs, fine_to, weights).softmax(1)
    out = {**probs, FINE: fine}
    for task in weights:
        index = torch.tensor(fine_to[task])
        best = fine.new_zeros(len(fine), meta.class_counts[task])
        best.scatter_reduce_(1, index.expand_as(fine), fine, reduce="amax")
        out[task] = best / best.sum(1, keepdim=True).clamp_min(EPS)
    return out


def hierarchy_report(probs: dict[str, Tensor], targets: Tensor, meta: CheckpointMeta, used: bool) -> dict[str, Any]:
    """eval.json's "hierarchy" entry: fine top-1 with and without it and how often the heads agree ({} without
    make/type heads)."""
    tasks = hierarchy_tasks(probs, meta)
    if not tasks:
        return {}
    fine_to = meta.taxonomy.fine_to
    fine_pred = probs[FINE].argmax(1)
    agree = torch.ones_like(fine_pred, dtype=torch.bool)
    for task in tasks:
        agree &= torch.tensor(fine_to[task])[fine_pred] == probs[task].argmax(1)
    combined = consistent_probs(probs, meta)[FINE].argmax(1)
    return {
        "hierarchy": {
            "used": used,
            "weights": stored_weights(probs, meta),
            "fitted": meta.hierarchy is not None,
            "top1": _share(combined == targets),
            "plain_top1": _share(fine_pred == targets),
            "heads_agree": _share(agree),
        }
    }


def _share(hits: Tensor) -> float:
    return float(hits.double().mean()) if len(hits) else 0.0
