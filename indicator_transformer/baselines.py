"""Reference predictors scored on exactly the test samples the model is scored on.

    zero          predict no move
    train_mean    the training-label mean (what the MSE ratio divides by)
    momentum      the last realised h-bar return (known at the window's last bar: no look-ahead)
    ridge         linear regression on the flattened, normalised window, alpha chosen on validation

A model that does not beat these has not learned anything a simpler tool would not; the report
says so plainly. Every predictor here is fitted on the training split only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .data.windows import WindowDataset

RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
MAX_FIT_SAMPLES = 100_000  # ridge is fitted (and alpha chosen) on even subsamples of larger splits
BATCH = 4096


def window_matrix(ds: WindowDataset, indices: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, L*F) normalised windows, y (N,) standardised labels) of a split, in order."""
    idx = np.arange(len(ds)) if indices is None else indices
    xs, ys = [], []
    for a in range(0, len(idx), BATCH):
        x, y = ds.__getitems__(idx[a:a + BATCH].tolist())
        xs.append(x.numpy().reshape(len(y), -1))
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    return np.concatenate(xs), np.concatenate(ys)


def last_returns(ds: WindowDataset, horizon: int) -> np.ndarray:
    """For each sample (s, t): label[s][t - h], the h-bar return that ended at bar t (0 when the
    symbol has no bar t - h). Raw return space."""
    out = np.zeros(len(ds), np.float64)
    for i in range(len(ds)):
        s, t = ds.locate(i)
        if t - horizon >= 0:
            out[i] = float(ds.symbols[s].label[t - horizon])
    return out


class Ridge:
    """Closed-form ridge regression with an intercept (features centred before solving)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        x = x.astype(np.float64)
        self.x_mean, self.y_mean = x.mean(0), float(y.mean())
        xc = x - self.x_mean
        gram = xc.T @ xc
        gram[np.diag_indices_from(gram)] += self.alpha
        self.coef = np.linalg.solve(gram, xc.T @ (y - self.y_mean))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) - self.x_mean) @ self.coef + self.y_mean


def fit_ridge(train: WindowDataset, val: WindowDataset, should_stop: Callable[[], bool]) -> Ridge | None:
    """Ridge on the training windows with the alpha of lowest validation MSE (None if stopped)."""
    n = len(train)
    idx = np.linspace(0, n - 1, min(n, MAX_FIT_SAMPLES)).astype(np.int64) if n else None
    x, y = window_matrix(train, idx)
    nv = len(val)
    xv, yv = window_matrix(val, np.linspace(0, nv - 1, min(nv, MAX_FIT_SAMPLES)).astype(np.int64)
                           if nv else None)
    if len(yv) == 0:  # no validation data to choose with: the middle of the grid
        return Ridge(RIDGE_ALPHAS[len(RIDGE_ALPHAS) // 2]).fit(x, y)
    best: tuple[float, Ridge] | None = None
    for alpha in RIDGE_ALPHAS:
        if should_stop():
            return None
        model = Ridge(alpha).fit(x, y)
        mse = float(np.mean((model.predict(xv) - yv) ** 2))
        if best is None or mse < best[0]:
            best = (mse, model)
    assert best is not None
    return best[1]


def baseline_predictions(datasets: dict[str, WindowDataset], label_mean: float, label_std: float,
                         horizon: int, should_stop: Callable[[], bool]
                         ) -> dict[str, np.ndarray] | None:
    """Each baseline's test predictions in raw return space, in test-sample order; None if a stop
    was requested (the caller then writes no report)."""
    test = datasets["test"]
    n = len(test)
    preds = {"zero": np.zeros(n), "train_mean": np.full(n, label_mean),
             "momentum": last_returns(test, horizon)}
    ridge = fit_ridge(datasets["train"], datasets["val"], should_stop)
    if ridge is None or should_stop():
        return None
    # In batches: a large panel's test windows need not fit in memory at once.
    ridge_pred = np.zeros(n)
    for a in range(0, n, BATCH):
        x, _ = window_matrix(test, np.arange(a, min(a + BATCH, n)))
        ridge_pred[a:a + len(x)] = label_mean + label_std * ridge.predict(x)
    preds["ridge"] = ridge_pred
    return preds
