"""`carcli ensemble`: several checkpoints combined into one model and one `.st` file (mean, weighted or greedy
weights).

The combined module is `carcli.models.ensemble.EnsembleModel`. `build_ensemble` scores the members
on the evaluation split, fits the weights there, writes the file and scores it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carcli.checkpoint import save_checkpoint, trained_on
from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.layouts import Sample
from carcli.device import resolve_device
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_file
from carcli.inference import Predictions, eval_samples, predict_samples
from carcli.metrics import top1_per_task
from carcli.models.builder import load_model
from carcli.models.ensemble import EPS, EnsembleModel
from carcli.usage import check_ensemble

GREEDY_ROUNDS = 20  # Caruana-style selections with replacement; the best prefix is kept
MIN_WEIGHT = 1e-3  # fitted weights below this are dropped (and the member left out of the file)


@dataclass
class EnsembleResult:
    """Members' and ensemble's top-1 per task on the evaluation split, and where the file went."""

    method: str
    names: list[str]
    weights: list[float]  # one per input checkpoint; 0 for members left out
    tasks: list[str]
    member_top1: list[dict[str, float]]
    ensemble_top1: dict[str, float]
    split: str
    images: int
    out: Path
    notes: list[str]

    def columns(self) -> list[str]:
        return ["checkpoint", "weight", *(f"{task} top-1" for task in self.tasks)]

    def rows(self) -> list[list[str]]:
        def cells(top1: dict[str, float]) -> list[str]:
            return [f"{100 * top1[task]:.1f}%" for task in self.tasks]

        rows = [[n, f"{w:.3f}", *cells(t)] for n, w, t in zip(self.names, self.weights, self.member_top1, strict=True)]
        return [*rows, [f"ensemble ({self.method})", f"{sum(self.weights):.3f}", *cells(self.ensemble_top1)]]


# ---------------------------------------------------------------- weights


def _true_class_probs(preds: Sequence[Predictions], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """task -> (members, samples) array of each member's probability of the true class."""
    out = {}
    for task in tasks:
        targets = preds[0].targets[task]
        rows = [p.probs[task][torch.arange(len(targets)), targets].double().numpy() for p in preds]
        out[task] = np.stack(rows)
    return out


def _log_loss(weights: np.ndarray, true_probs: dict[str, np.ndarray]) -> float:
    """Sum over tasks of the mean negative log-likelihood of the weighted mixture."""
    return float(sum(-np.log(np.maximum(weights @ p, EPS)).mean() for p in true_probs.values()))


def _log_loss_grad(weights: np.ndarray, true_probs: dict[str, np.ndarray]) -> np.ndarray:
    return sum(-(p / np.maximum(weights @ p, EPS)).mean(axis=1) for p in true_probs.values())  # type: ignore[return-value]


def fit_weights(method: str, true_probs: dict[str, np.ndarray]) -> np.ndarray:
    """Member weights on the simplex: equal (mean), log-loss optimum (weighted) or greedy selection counts."""
    members = next(iter(true_probs.values())).shape[0]
    if method == "mean":
        return np.full(members, 1.0 / members)
    weights = _fit_simplex(true_probs, members) if method == "weighted" else _greedy(true_probs, members)
    weights = np.where(weights < MIN_WEIGHT, 0.0, weights)
    return weights / weights.sum()


def _fit_simplex(true_probs: dict[str, np.ndarray], members: int) -> np.ndarray:
    from scipy.optimize import minimize

    result = minimize(
        _log_loss,
        np.full(members, 1.0 / members),
        args=(true_probs,),
        jac=_log_loss_grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
    )
    return np.clip(result.x, 0.0, None)


def _greedy(true_probs: dict[str, np.ndarray], members: int) -> np.ndarray:
    """Caruana et al. (2004): repeatedly add (with replacement) the member that lowers the log-loss most."""
    counts = np.zeros(members)
    best, best_loss = counts, np.inf
    for _ in range(GREEDY_ROUNDS):
        losses = [_log_loss((counts + np.eye(members)[i]) / (counts.sum() + 1), true_probs) for i in range(members)]
        counts = counts + np.eye(members)[int(np.argmin(losses))]
        if min(losses) < best_loss:
            best, best_loss = counts.copy(), min(losses)
    return best / best.sum()


# ---------------------------------------------------------------- the command


def display_names(paths: Sequence[Path]) -> list[str]:
    """File names, with their folder when names repeat (every run's best.st)."""
    repeated = len({p.name for p in paths}) < len(paths)
    return [f"{p.parent.name}/{p.name}" if repeated else p.name for p in paths]


def _load_members(checkpoints: Sequence[Path]) -> tuple[list[nn.Module], list[CheckpointMeta]]:
    models, metas = [], []
    names = display_names(checkpoints)
    for name, path in zip(names, checkpoints, strict=True):
        model, meta = load_model(path)
        first = metas[0].fine_names if metas else meta.fine_names
        if meta.fine_names != first:
            raise CarcliError(
                f"{name} has a different class list from {names[0]} "
                f"({len(meta.fine_names)} vs {len(first)} classes, or another order); "
                "ensemble only models trained on the same classes"
            )
        models.append(model)
        metas.append(meta)
    return models, metas


def _split_note(metas: Sequence[CheckpointMeta], data: Path, samples: Sequence[Sample]) -> list[str]:
    """A note when some member's own evaluation split differs from the one used (its training saw those images)."""
    expected = {s.path for s in samples}
    for meta in metas[1:]:
        if {s.path for s in eval_samples(meta, data)[0]} != expected:
            return [
                "members were trained on different train/val splits (seed or val fraction); some evaluation "
                "images were training images of a member, so the ensemble's figures are optimistic"
            ]
    return []


def _ensemble_meta(
    metas: Sequence[CheckpointMeta], weights: Sequence[float], method: str, names: Sequence[str], split: str
) -> CheckpointMeta:
    first = metas[0]
    return CheckpointMeta(
        arch="ensemble",
        head="ensemble",
        img_size=max(m.img_size for m in metas),
        eval_aspect=max(m.view_aspect for m in metas),  # one view for all: the widest (members agree by default)
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        tasks=first.tasks,
        taxonomy=first.taxonomy,
        train=first.train if first.train is not None else {},
        data=first.data if first.data is not None else {},
        members=list(metas),
        weights=list(weights),
        ensemble={"method": method, "files": list(names), "fitted_on": split},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def build_ensemble(
    checkpoints: Sequence[Path],
    data: Path | None,
    method: str = "mean",
    out: Path = Path("ensemble.st"),
    progress: Callable[[str], None] | None = None,
) -> EnsembleResult:
    """Score the members on the evaluation split, fit their weights, write one `.st` and score it."""
    check_ensemble(checkpoints, data, method)
    if any(out.resolve() == c.resolve() for c in checkpoints):
        raise UsageError("-o would overwrite one of the members; choose another file")
    check_output_file(out, "-o")
    say = progress or (lambda message: None)
    models, metas = _load_members(checkpoints)
    data = data or trained_on(metas[0], checkpoints[0])
    samples, class_names, split = eval_samples(metas[0], data, say)
    notes = _split_note(metas, data, samples)
    device = str(resolve_device("auto"))
    preds = []
    names = display_names(checkpoints)
    for i, (name, model, meta) in enumerate(zip(names, models, metas, strict=True), 1):
        say(f"scoring member {i}/{len(models)}: {name} on {len(samples)} {split} images")
        preds.append(predict_samples(model, meta, samples, class_names, device=device))
    tasks = [t for t in preds[0].probs if all(t in p.probs for p in preds)]
    weights = fit_weights(method, _true_class_probs(preds, tasks)).tolist()
    if method != "mean":
        notes.append(f"weights were fitted on the same {len(samples)} {split} images the table scores")
    kept = [i for i, w in enumerate(weights) if w > 0]
    ensemble = EnsembleModel([models[i] for i in kept], [metas[i] for i in kept], [weights[i] for i in kept])
    meta = _ensemble_meta([metas[i] for i in kept], [weights[i] for i in kept], method, names, split)
    save_checkpoint(out, ensemble.state_dict(), meta)
    say(f"scoring the ensemble {out.name}")
    reloaded, reloaded_meta = load_model(out)
    ensemble_preds = predict_samples(reloaded, reloaded_meta, samples, class_names, device=device)
    member_top1 = [top1_per_task(p.probs, p.targets, tasks) for p in preds]
    ensemble_top1 = top1_per_task(ensemble_preds.probs, ensemble_preds.targets, tasks)
    return EnsembleResult(method, names, weights, tasks, member_top1, ensemble_top1, split, len(samples), out, notes)
