"""Prediction metrics for forward returns, and the trivial baseline they are compared with."""

from __future__ import annotations

import numpy as np


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    return ranks


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(pred: np.ndarray, target: np.ndarray, baseline: float) -> dict[str, float]:
    """MSE, the MSE of always predicting ``baseline`` (the training mean), their ratio, the
    information coefficient (Pearson IC), the rank IC (Spearman) and the directional hit rate.

    ``pred`` and ``target`` are forward returns (not standardised). An IC above zero and an MSE
    ratio below one mean the model knows something the constant does not.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    mse = float(np.mean((pred - target) ** 2)) if len(pred) else float("nan")
    base = float(np.mean((baseline - target) ** 2)) if len(pred) else float("nan")
    nonzero = target != 0
    hit = float(np.mean(np.sign(pred[nonzero]) == np.sign(target[nonzero]))) if nonzero.any() else 0.0
    return {
        "samples": int(len(pred)),
        "mse": mse,
        "baseline_mse": base,
        "mse_ratio": mse / base if base > 0 else float("nan"),
        "ic": _corr(pred, target),
        "rank_ic": _corr(_rank(pred), _rank(target)),
        "hit_rate": hit,
    }
