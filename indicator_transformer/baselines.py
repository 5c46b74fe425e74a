"""Reference predictors scored on exactly the test samples the model is scored on.

    zero          predict no move
    train_mean    the pooled training-label mean (what the MSE ratio divides by)
    symbol_mean   each symbol's own training-label mean: what a model whose standardised output
                  is 0 predicts under per-symbol normalisation, so a model must beat it
    momentum      the last realised h-bar return (known at the window's last bar: no look-ahead)
    ridge         linear regression on the flattened, normalised window, alpha chosen on validation
    lightgbm      gradient-boosted trees on a summary of the same normalised window (the last bar,
                  the mean of the last 5 bars, and the window's mean, std and change of every
                  feature), early-stopped on validation

A model that does not beat these has not learned anything a simpler tool would not; the report
says so plainly. Every predictor here is fitted on the training split only. Ridge and LightGBM
learn the standardised label, as the model does, and their predictions become returns through
``WindowDataset.to_returns`` (the one place that knows the label scales).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.windows import WindowDataset

if TYPE_CHECKING:
    import lightgbm as lgb


def _lightgbm() -> Any:
    """Import LightGBM on first use (it costs a third of a second at start-up). Its OpenMP threads
    would otherwise spin-wait between boosting rounds, fighting torch's threads for the cores: on
    2 busy cores a 0.2 s fit took 23 s. Passive waiting changes no result."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import lightgbm

    return lightgbm

# Half decades: the best alpha grows with the number of samples (the Gram matrix does), and a
# decade grid left the default data's choice at its edge.
RIDGE_ALPHAS = tuple(float(10.0 ** (k / 2)) for k in range(-2, 13))  # 0.1 .. 1e6
MAX_FIT_SAMPLES = 100_000  # ridge and LightGBM fit (and choose) on even subsamples of larger splits
BATCH = 4096

# Small, slow-learning trees with large leaves: returns are mostly noise, and a leaf of a few
# samples fits that noise. The run's seed, deterministic=True and one fixed histogram layout make two
# runs give identical predictions for the same seed and num_threads.
LGBM_PARAMS: dict[str, Any] = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "max_bin": 63,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "deterministic": True, "force_col_wise": True, "verbosity": -1,
}
LGBM_MAX_ROUNDS = 500
LGBM_PATIENCE = 30            # rounds without a better validation MSE before stopping
LGBM_ROUNDS_NO_VALIDATION = 50  # without validation data; the default data early-stops at ~20-60
RECENT_BARS = 5               # the "recent mean" summary of the window


@dataclass
class FittedBaselines:
    """Every baseline as fitted on one run's training data: enough to predict any window again
    (``evaluate --all-windows`` and ``predict --baselines`` on files the model never saw).

    ``ridge`` and ``lightgbm`` are None when there were no training samples: both then predict
    each symbol's training label mean, as in the run's own report."""

    train_mean: float                    # pooled training-label mean, return space
    symbol_means: dict[str, float]       # each symbol's training-label mean, return space
    horizon: int
    window: int
    ridge: Ridge | None = None
    lightgbm: Any = None                 # lgb.Booster
    rounds: int = 0                      # LightGBM iterations used
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # what was fitted, as reported

    def predict(self, ds: WindowDataset, should_stop: Callable[[], bool], threads: int = 1
                ) -> dict[str, np.ndarray]:
        """Each baseline's predictions of every sample of ``ds``, in return space, in order. The
        windows are normalised with ``ds``'s statistics, and standardised predictions become
        returns with them, exactly as for the run's own test split. A stop raises FitStopped."""
        n = len(ds)
        sym = ds.symbol_index()
        names = [s.symbol for s in ds.symbols]
        plain = unfitted_predictions(ds, self.train_mean, self.horizon)
        out = {"zero": plain["zero"], "train_mean": plain["train_mean"],  # the report's order
               "symbol_mean": np.asarray([self.symbol_means.get(names[i], float(self.train_mean))
                                          for i in sym.tolist()], np.float64),
               "momentum": plain["momentum"]}
        if self.ridge is None or self.lightgbm is None:
            for name in ("ridge", "lightgbm"):
                out[name] = ds.to_returns(np.zeros(n))
            return out
        out["ridge"] = _predict_test(ds, self.ridge.predict, should_stop)
        booster, rounds = self.lightgbm, self.rounds
        out["lightgbm"] = _predict_test(
            ds, lambda x: booster.predict(window_summaries(x, ds.window), num_iteration=rounds,
                                          num_threads=threads), should_stop)
        if should_stop():
            raise FitStopped
        return out


@dataclass
class Baselines:
    """Each baseline's test predictions, what was fitted, and the fitted baselines themselves."""

    # name -> test predictions in return space, in test-sample order
    # (zero, train_mean, symbol_mean, momentum, ridge, lightgbm)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    # name -> JSON-able fitted settings (alpha, rounds, sample counts, ...)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    fitted: FittedBaselines | None = None


class FitStopped(Exception):
    """A stop was requested while fitting or predicting; :func:`baseline_predictions` returns None
    for it, :meth:`FittedBaselines.predict` raises it."""


def _even(n: int) -> np.ndarray:
    """Up to MAX_FIT_SAMPLES evenly spaced sample indices of a split of n (all when smaller)."""
    return np.linspace(0, n - 1, min(n, MAX_FIT_SAMPLES)).astype(np.int64) if n else np.zeros(0, np.int64)


def _batches(ds: WindowDataset, idx: np.ndarray, should_stop: Callable[[], bool]
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(position in idx, X (B, L*F) normalised windows, y (B,) standardised labels) per batch;
    a stop request between batches raises FitStopped."""
    for a in range(0, len(idx), BATCH):
        if should_stop():
            raise FitStopped
        x, y = ds.__getitems__(idx[a:a + BATCH].tolist())
        yield a, x.numpy().reshape(len(y), -1), y.numpy()


def window_matrix(ds: WindowDataset, indices: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, L*F) normalised windows, y (N,) standardised labels) of a split, in order."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, np.int64)
    parts = list(_batches(ds, idx, lambda: False))
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def window_summaries(x: np.ndarray, window: int) -> np.ndarray:
    """(N, L*F) flattened windows -> (N, 5F): per feature the last bar, the mean of the last
    RECENT_BARS bars, and the window's mean, std and last-minus-first change.

    Trees split one column at a time, so L*F raw columns cost about L/5 times the work and mostly
    offer the same feature at another lag. On the default data (32 x 25 = 800 columns against 125)
    the summaries fit ~4-5x faster and scored a higher test IC for each of three seeds
    (0.108-0.111 against 0.098-0.103; MSE ratios within 0.002 of each other)."""
    w = x.reshape(len(x), window, -1)
    return np.concatenate([w[:, -1], w[:, -RECENT_BARS:].mean(1), w.mean(1), w.std(1),
                           w[:, -1] - w[:, 0]], axis=1).astype(np.float32)


def unfitted_predictions(ds: WindowDataset, train_mean: float, horizon: int) -> dict[str, np.ndarray]:
    """The baselines that need no fit (zero, train_mean, momentum) on every sample of ``ds``, in
    return space: all that can be scored when no fitted baselines are at hand."""
    n = len(ds)
    return {"zero": np.zeros(n), "train_mean": np.full(n, float(train_mean)),
            "momentum": last_returns(ds, horizon)}


def last_returns(ds: WindowDataset, horizon: int) -> np.ndarray:
    """For each sample (s, t): label[s][t - h], the h-bar return that ended at bar t (0 when the
    symbol has no bar t - h). Raw return space."""
    out = np.zeros(len(ds), np.float64)
    offsets = ds.split.offsets
    for s, (lo, hi) in enumerate(zip(ds.split.starts, ds.split.stops, strict=True)):
        if hi <= lo:
            continue
        t = np.arange(lo, hi) - horizon
        ok = t >= 0
        out[offsets[s]:offsets[s + 1]][ok] = np.asarray(ds.symbols[s].label[t[ok]], np.float64)
    return out


# --------------------------------------------------------------------------- ridge
class Ridge:
    """Ridge regression with an intercept (features centred, the intercept not penalised)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        m = _Moments(x.shape[1])
        m.add(x, y)
        fitted = m.ridges([self.alpha])[0]
        self.coef, self.x_mean, self.y_mean = fitted.coef, fitted.x_mean, fitted.y_mean
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) - self.x_mean) @ self.coef + self.y_mean


class _Moments:
    """Sums for ridge regression accumulated batch by batch, so the training windows never have
    to sit in memory at once. Sums are taken about the first batch's means (shifted sums), which
    keeps the centred Gram matrix accurate when a feature's mean is large."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.shift_x = np.zeros(dim)
        self.shift_y = 0.0
        self.sx, self.sy, self.syy = np.zeros(dim), 0.0, 0.0
        self.xx, self.xy = np.zeros((dim, dim)), np.zeros(dim)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64), y.astype(np.float64)
        if self.n == 0 and len(y):
            self.shift_x, self.shift_y = x.mean(0), float(y.mean())
        xc, yc = x - self.shift_x, y - self.shift_y
        self.n += len(y)
        self.sx += xc.sum(0)
        self.sy += float(yc.sum())
        self.syy += float(yc @ yc)
        self.xx += xc.T @ xc
        self.xy += xc.T @ yc

    def _centred(self) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float]:
        """(Gram about the mean, X'y about the means, y'y about its mean, x mean, y mean)."""
        mx, my = self.sx / self.n, self.sy / self.n
        gram = self.xx - self.n * np.outer(mx, mx)
        xy = self.xy - self.n * mx * my
        return gram, xy, self.syy - self.n * my * my, self.shift_x + mx, self.shift_y + my

    def ridges(self, alphas: list[float] | tuple[float, ...]) -> list[Ridge]:
        """One fitted Ridge per alpha, from a single eigendecomposition of the Gram matrix."""
        gram, xy, _, x_mean, y_mean = self._centred()
        w, v = np.linalg.eigh(gram)
        w = np.maximum(w, 0.0)  # rounding can make a zero eigenvalue slightly negative
        proj = v.T @ xy
        out = []
        for alpha in alphas:
            r = Ridge(alpha)
            r.coef, r.x_mean, r.y_mean = v @ (proj / (w + alpha)), x_mean, y_mean
            out.append(r)
        return out

    def gcv_alpha(self, alphas: tuple[float, ...]) -> float:
        """The alpha of lowest generalised cross-validation error on the training data itself
        (used when there is no validation split to choose with)."""
        gram, xy, yy, _, _ = self._centred()
        w, v = np.linalg.eigh(gram)
        w = np.maximum(w, 0.0)
        proj2 = (v.T @ xy) ** 2
        scores = []
        for alpha in alphas:
            shrink = w / (w + alpha)
            rss = yy - float(np.sum(proj2 * shrink * (2 - shrink)))  # |y - X b|^2 in the eigenbasis
            dof = float(shrink.sum()) + 1  # + the intercept
            scores.append(self.n * max(rss, 0.0) / max(self.n - dof, 1e-9) ** 2)
        return alphas[int(np.argmin(scores))]


def _fit_ridge(train: WindowDataset, val: WindowDataset, should_stop: Callable[[], bool]
               ) -> tuple[Ridge, dict[str, Any]] | None:
    """Ridge on the training windows with the alpha of lowest validation MSE, and its details;
    None when there are no training samples. A stop request raises FitStopped."""
    idx = _even(len(train))
    if not len(idx):
        return None
    moments: _Moments | None = None
    for _, x, y in _batches(train, idx, should_stop):
        moments = moments or _Moments(x.shape[1])
        moments.add(x, y)
    assert moments is not None
    vidx = _even(len(val))
    details: dict[str, Any] = {"fit_samples": int(len(idx)), "val_samples": int(len(vidx)),
                               "features": int(len(moments.sx)), "alphas": list(RIDGE_ALPHAS)}
    if not len(vidx):  # no validation data to choose with
        alpha = moments.gcv_alpha(RIDGE_ALPHAS)
        return moments.ridges([alpha])[0], {**details, "alpha": alpha,
                                             "chosen_by": "generalised cross-validation on train"}
    models = moments.ridges(RIDGE_ALPHAS)
    coefs = np.stack([m.coef for m in models], axis=1)  # (D, A): every alpha in one product
    intercepts = np.array([m.y_mean - (m.x_mean - moments.shift_x) @ m.coef for m in models])
    sse = np.zeros(len(models))
    for _, x, y in _batches(val, vidx, should_stop):
        pred = (x.astype(np.float64) - moments.shift_x) @ coefs + intercepts
        sse += ((pred - y[:, None].astype(np.float64)) ** 2).sum(0)
    best = int(np.argmin(sse))
    return models[best], {**details, "alpha": RIDGE_ALPHAS[best], "chosen_by": "validation MSE",
                          "val_mse": float(sse[best] / len(vidx))}


# --------------------------------------------------------------------------- LightGBM
def _summary_matrix(ds: WindowDataset, idx: np.ndarray, should_stop: Callable[[], bool]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(window summaries (N, 5F), standardised labels (N,)) of the samples idx, built in batches."""
    xs, ys = [], []
    for _, x, y in _batches(ds, idx, should_stop):
        xs.append(window_summaries(x, ds.window))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _stop_callback(should_stop: Callable[[], bool]) -> Callable[[Any], None]:
    """A LightGBM callback run before every boosting round: a stop request ends training."""
    def check(_env: Any) -> None:
        if should_stop():
            raise FitStopped
    check.before_iteration = True  # type: ignore[attr-defined]  # LightGBM's callback protocol
    return check


def _fit_lightgbm(train: WindowDataset, val: WindowDataset, should_stop: Callable[[], bool],
                  threads: int, seed: int = 0) -> tuple[lgb.Booster, dict[str, Any]] | None:
    """LightGBM on the training windows' summaries, early-stopped on the validation MSE, and its
    details; None when there are no training samples. A stop request raises FitStopped."""
    idx = _even(len(train))
    if not len(idx):
        return None
    x, y = _summary_matrix(train, idx, should_stop)
    # About 1% of the samples per leaf (within 20..2000): a leaf must average out the noise.
    params = {**LGBM_PARAMS, "min_data_in_leaf": int(np.clip(len(idx) // 100, 20, 2000)),
              "num_threads": int(threads), "seed": lightgbm_seed(seed)}
    lgb = _lightgbm()
    data = lgb.Dataset(x, y, params=params, free_raw_data=True)
    vidx = _even(len(val))
    callbacks = [_stop_callback(should_stop)]
    valid: list[lgb.Dataset] = []
    if len(vidx):
        xv, yv = _summary_matrix(val, vidx, should_stop)
        valid = [lgb.Dataset(xv, yv, reference=data, params=params)]
        callbacks.append(lgb.early_stopping(LGBM_PATIENCE, first_metric_only=True, verbose=False))
    rounds = LGBM_MAX_ROUNDS if valid else LGBM_ROUNDS_NO_VALIDATION
    booster = lgb.train(params, data, num_boost_round=rounds, valid_sets=valid,
                        valid_names=["val"][:len(valid)], callbacks=callbacks)
    used = booster.best_iteration if valid and booster.best_iteration > 0 else booster.current_iteration()
    details = {"rounds": int(used), "max_rounds": rounds,
               "early_stopping": {"patience": LGBM_PATIENCE} if valid else None,
               "fit_samples": int(len(idx)), "val_samples": int(len(vidx)), "features": int(x.shape[1]),
               "feature_set": f"last bar, mean of last {RECENT_BARS} bars, window mean, std and change "
                              "of each normalised feature",
               "params": {k: v for k, v in params.items() if k != "verbosity"}}
    if valid:
        details["val_mse"] = float(booster.best_score["val"]["l2"])
    return booster, details


# --------------------------------------------------------------------------- all baselines
def _predict_test(test: WindowDataset, predict: Callable[[np.ndarray], np.ndarray],
                  should_stop: Callable[[], bool]) -> np.ndarray:
    """``predict`` (flattened windows -> standardised predictions) over the whole test split in
    batches (a large panel's test windows need not fit in memory at once), as returns."""
    out = np.zeros(len(test))
    for a, x, _ in _batches(test, np.arange(len(test)), should_stop):
        out[a:a + len(x)] = test.to_returns(predict(x), start=a)
    return out


def baseline_predictions(datasets: dict[str, WindowDataset], train_mean: float, horizon: int,
                         should_stop: Callable[[], bool], threads: int = 1,
                         seed: int = 0) -> Baselines | None:
    """Every baseline's test predictions in return space, in test-sample order, and what was
    fitted; None if a stop was requested (the caller then writes no report).

    ``train_mean`` is the pooled training-label mean in return space; ``threads`` is LightGBM's
    num_threads (its predictions are reproducible for a fixed value); ``seed`` (the run's --seed)
    seeds LightGBM's bagging and feature sampling, so a seed sweep samples its noise too."""
    try:
        return _baselines(datasets, train_mean, horizon, should_stop, threads, seed)
    except FitStopped:
        return None


def symbol_means(train: WindowDataset, pooled: float) -> tuple[dict[str, float], int]:
    """Each symbol's mean training label (raw returns), and how many symbols have one; a symbol
    without training windows is absent (the caller uses the pooled mean)."""
    out = {}
    sp = train.split
    for s, lo, hi in zip(train.symbols, sp.starts.tolist(), sp.stops.tolist(), strict=True):
        if hi > lo:
            out[s.symbol] = float(np.mean(np.asarray(s.label[lo:hi], np.float64)))
    return out, len(out)


def lightgbm_seed(seed: int) -> int:
    """LightGBM's seed (a C int) for a run seed 0 <= seed < 2**63: equal seeds give equal trees."""
    return int(seed) % (2**31 - 1)


def _baselines(datasets: dict[str, WindowDataset], train_mean: float, horizon: int,
               should_stop: Callable[[], bool], threads: int, seed: int) -> Baselines | None:
    train, val, test = datasets["train"], datasets["val"], datasets["test"]
    means, own = symbol_means(train, float(train_mean))
    fitted = FittedBaselines(float(train_mean), means, int(horizon), int(test.window))
    details: dict[str, dict[str, Any]] = {"train_mean": {"value": float(train_mean)},
                                          "symbol_mean": {"symbols_with_own_mean": own},
                                          "momentum": {"horizon": int(horizon)}}
    ridge = _fit_ridge(train, val, should_stop)
    trees = _fit_lightgbm(train, val, should_stop, threads, seed)
    if ridge is None or trees is None:  # no training samples: each symbol's training mean
        for name in ("ridge", "lightgbm"):
            details[name] = {"fit_samples": 0, "note": "no training samples: predicts the label mean"}
    else:
        fitted.ridge, details["ridge"] = ridge
        fitted.lightgbm, details["lightgbm"] = trees
        fitted.rounds = int(details["lightgbm"]["rounds"])
    fitted.details = details
    # The run's own test predictions come from the very code that predicts with saved baselines.
    return Baselines(fitted.predict(test, should_stop, threads), details, fitted)
