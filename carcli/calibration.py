"""Calibration of class scores: expected calibration error, reliability bins and temperature scaling (numpy, scipy).

A checkpoint's temperatures live in its metadata as `calibration.temperatures` ({task: T}); every
probability carcli computes divides that task's logits by T before the softmax (`CheckpointMeta.temperatures`).
Fitting works on log-probabilities, which differ from the logits only by a constant per row, so it
also fits ensembles (whose outputs are log-probabilities) and probabilities that are already
tempered: the new temperature then multiplies the old one. Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BINS = 15
T_BOUNDS = (0.05, 20.0)
TINY = 1e-30  # probabilities are clamped here before the log (float32 softmax underflows to 0)


def confidences(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probability of the predicted class, whether it is right) for each row."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets)
    return p.max(1), (p.argmax(1) == y).astype(np.float64)


def reliability_bins(probs: Any, targets: Any, bins: int = BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins over [0, 1]: {lower, upper, count, confidence, accuracy} (means; 0 when empty)."""
    conf, right = confidences(probs, targets)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(conf[inside].mean()) if count else 0.0,
                "accuracy": float(right[inside].mean()) if count else 0.0,
            }
        )
    return out


def expected_calibration_error(probs: Any, targets: Any, bins: int = BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins (Guo et al., 2017)."""
    table = reliability_bins(probs, targets, bins)
    total = sum(b["count"] for b in table)
    if not total:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table) / total)


def tempered(probs: Any, temperature: float) -> np.ndarray:
    """Probabilities recomputed at `temperature`: softmax(log p / T)."""
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY)) / temperature
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def fit_temperature(probs: Any, targets: Any) -> float:
    """The temperature that minimises the negative log-likelihood of `targets` (bounded 1-D search over log T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY))
    picked = logp[np.arange(len(logp)), np.asarray(targets)]
    if not len(picked):
        return 1.0

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(logsumexp(logp / t, axis=1) - picked / t))

    found = minimize_scalar(nll, bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded")
    return float(math.exp(found.x))
