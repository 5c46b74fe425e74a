"""Baselines: fitted on training data only, scored on exactly the model's test samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indicator_transformer import baselines
from indicator_transformer.baselines import (
    LGBM_ROUNDS_NO_VALIDATION,
    Baselines,
    Ridge,
    baseline_predictions,
    last_returns,
    window_matrix,
)
from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.prepare import SymbolData
from indicator_transformer.data.windows import (
    Normalisation,
    SplitIndex,
    WindowDataset,
    fit_normalisation,
    make_splits,
)
from indicator_transformer.metrics import point_metrics

NAMES = ["zero", "train_mean", "symbol_mean", "momentum", "ridge", "lightgbm"]


def nonlinear_market(symbols: int = 2, bars: int = 1500, seed: int = 0) -> list[SymbolData]:
    """Random features; the next return grows with the square of feature 0 at the window's last
    bar, plus noise of similar size. Ridge sees no linear signal in it; trees do. Symbol i's
    returns have a mean of +0.002 and a scale of 0.01 * 10**i: far from the standardised scale and
    from each other, so a prediction left standardised, or converted with another symbol's scale,
    shows."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(symbols):
        f = rng.normal(size=(bars, 3)).astype(np.float32)
        scale = 0.01 * 10.0 ** i
        label = (0.002 + scale * (f[:, 0] ** 2 - 1 + 0.7 * rng.normal(size=bars))).astype(np.float32)
        out.append(SymbolData(f"S{i}", f"k{i}", f, label, np.arange(bars, dtype=np.int64) * 86_400 * 10**9))
    return out


def window_datasets(symbols: list[SymbolData], window: int = 4, *, empty_val: bool = False
                    ) -> dict[str, WindowDataset]:
    """Train/val/test WindowDatasets as the trainer builds them, with per-symbol label scales
    (optionally with no validation)."""
    cfg = FeatureConfig(features=["ret_1", "ret_5", "ret_10"], window=window, horizon=1)
    splits = make_splits(symbols, cfg)
    if empty_val:
        val = splits["val"]
        splits["val"] = SplitIndex(val.starts.copy(), val.starts.copy())
    norm = fit_normalisation(symbols, splits["train"], window, per_symbol=True)
    return {k: WindowDataset(symbols, v, window, norm) for k, v in splits.items()}


def realised_returns(ds: WindowDataset) -> np.ndarray:
    """The realised forward returns of a split's samples, in order."""
    return ds.to_returns(window_matrix(ds)[1])


def train_label_mean(datasets: dict[str, WindowDataset]) -> float:
    return float(realised_returns(datasets["train"]).mean())


class StopAfter:
    """A should_stop that says "stop" from its n-th call on (never when n is None); counts calls."""

    def __init__(self, n: int | None = None) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.n is not None and self.calls >= self.n


@pytest.fixture(scope="module")
def market() -> dict[str, WindowDataset]:
    return window_datasets(nonlinear_market())


@pytest.fixture(scope="module")
def fitted(market: dict[str, WindowDataset]) -> Baselines:
    result = baseline_predictions(market, train_label_mean(market), 1, StopAfter(), threads=2)
    assert result is not None
    return result


def test_ridge_with_a_tiny_alpha_is_least_squares_with_an_intercept() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 7.0 + rng.normal(scale=0.1, size=200)
    design = np.c_[x, np.ones(200)]
    expected = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(Ridge(1e-9).fit(x, y).predict(x), expected, rtol=1e-6)
    # A huge alpha shrinks every coefficient to zero: the prediction is the training mean.
    np.testing.assert_allclose(Ridge(1e12).fit(x, y).predict(x), y.mean(), rtol=1e-4)


def test_momentum_uses_only_the_return_that_ended_at_the_window_end() -> None:
    n, h = 120, 3
    label = np.arange(n, dtype=np.float32) / 1000  # label[t] = the return from t to t + h
    sym = SymbolData("A", "k", np.zeros((n, 2), np.float32), label, np.arange(n, dtype=np.int64))
    cfg = FeatureConfig(features=["ret_1", "ret_5"], window=8, horizon=h)
    split = make_splits([sym], cfg)["test"]
    ds = WindowDataset([sym], split, 8, Normalisation(np.zeros(2, np.float32), np.ones(2, np.float32)))
    got = last_returns(ds, h)
    for i in range(len(ds)):
        _, t = ds.locate(i)
        assert got[i] == pytest.approx(label[t - h])  # realised at t: no look-ahead


def test_the_report_scores_every_baseline_on_the_models_test_samples(real_run: Path) -> None:
    report = json.loads((real_run / "models" / "evaluation.json").read_text())
    assert set(report["baselines"]) == set(NAMES)
    assert {b["samples"] for b in report["baselines"].values()} == {report["test"]["samples"]}
    assert report["baselines"]["train_mean"]["mse_ratio"] == pytest.approx(1.0)
    assert report["baselines"]["zero"]["ic"] is None  # undefined is null, never NaN
    assert report["verdict"]


def test_every_baseline_predicts_each_test_sample_in_order_with_json_able_details(
        market: dict[str, WindowDataset], fitted: Baselines) -> None:
    n = len(market["test"])
    assert list(fitted.predictions) == NAMES
    assert all(p.shape == (n,) and np.isfinite(p).all() for p in fitted.predictions.values())
    details = json.loads(json.dumps(fitted.details))
    assert details["lightgbm"]["rounds"] >= 1 and details["lightgbm"]["fit_samples"] == len(market["train"])
    assert details["ridge"]["chosen_by"] == "validation MSE"


def test_ridge_predictions_are_returns_made_by_the_test_splits_own_conversion(
        market: dict[str, WindowDataset], fitted: Baselines, monkeypatch: pytest.MonkeyPatch) -> None:
    alpha = fitted.details["ridge"]["alpha"]
    x, y = window_matrix(market["train"])
    xt, _ = window_matrix(market["test"])
    expected = market["test"].to_returns(Ridge(alpha).fit(x, y).predict(xt))
    np.testing.assert_allclose(fitted.predictions["ridge"], expected, rtol=1e-6, atol=1e-9)
    # In small batches (as a large panel is): the moments add up across batches, and each test
    # batch is converted with the scales of its own samples.
    monkeypatch.setattr(baselines, "BATCH", 97)
    batched = baseline_predictions(market, train_label_mean(market), 1, StopAfter(), threads=2)
    assert batched is not None
    assert batched.details["ridge"]["alpha"] == alpha
    np.testing.assert_allclose(batched.predictions["ridge"], expected, rtol=1e-6, atol=1e-9)


def test_lightgbm_learns_a_nonlinear_signal_that_ridge_and_the_constants_miss(
        market: dict[str, WindowDataset], fitted: Baselines) -> None:
    target = realised_returns(market["test"])  # return space: a standardised prediction would fail here
    mean = fitted.details["train_mean"]["value"]
    score = {k: point_metrics(p, target, mean) for k, p in fitted.predictions.items()}
    assert score["lightgbm"]["mse_ratio"] < 0.6 * score["zero"]["mse_ratio"]
    assert score["lightgbm"]["ic"] > 0.6
    assert score["lightgbm"]["mse_ratio"] < 0.7 * score["ridge"]["mse_ratio"]
    for s in range(2):  # each symbol's predictions on its own scale
        mine = slice(*market["test"].split.offsets[s:s + 2])
        assert point_metrics(fitted.predictions["lightgbm"][mine], target[mine], mean)["ic"] > 0.6
        assert fitted.predictions["lightgbm"][mine].std() == pytest.approx(target[mine].std(), rel=0.5)


def test_two_fits_give_identical_predictions_and_details(
        market: dict[str, WindowDataset], fitted: Baselines) -> None:
    again = baseline_predictions(market, train_label_mean(market), 1, StopAfter(), threads=2)
    assert again is not None
    for name in NAMES:
        assert np.array_equal(again.predictions[name], fitted.predictions[name]), name
    assert again.details == fitted.details


@pytest.mark.parametrize("where", ["first check", "mid-way", "last check"])
def test_a_stop_request_at_any_check_returns_none(market: dict[str, WindowDataset], where: str) -> None:
    count = StopAfter()
    assert baseline_predictions(market, 0.0, 1, count) is not None
    n = {"first check": 1, "mid-way": count.calls // 2, "last check": count.calls}[where]
    assert baseline_predictions(market, 0.0, 1, StopAfter(n)) is None


def test_the_stop_is_checked_before_every_boosting_round(market: dict[str, WindowDataset],
                                                         fitted: Baselines) -> None:
    count = StopAfter()
    baseline_predictions(market, 0.0, 1, count)
    rounds = fitted.details["lightgbm"]["rounds"] + fitted.details["lightgbm"]["early_stopping"]["patience"]
    assert count.calls > rounds  # one check per round trained, besides those between batches


def test_an_empty_validation_split_still_fits_every_baseline() -> None:
    datasets = window_datasets(nonlinear_market(), empty_val=True)
    assert len(datasets["val"]) == 0
    got = baseline_predictions(datasets, train_label_mean(datasets), 1, StopAfter())
    assert got is not None
    assert got.details["lightgbm"]["rounds"] == LGBM_ROUNDS_NO_VALIDATION
    assert got.details["lightgbm"]["early_stopping"] is None
    assert got.details["ridge"]["chosen_by"].startswith("generalised cross-validation")
    target = realised_returns(datasets["test"])
    assert point_metrics(got.predictions["lightgbm"], target, 0.0)["ic"] > 0.5


def test_without_training_samples_ridge_and_lightgbm_fall_back_to_the_label_mean() -> None:
    datasets = window_datasets(nonlinear_market())
    train = datasets["train"].split
    empty = SplitIndex(train.starts.copy(), train.starts.copy())
    datasets["train"] = WindowDataset(datasets["train"].symbols, empty, 4, datasets["train"].norm)
    got = baseline_predictions(datasets, 0.0, 1, StopAfter())
    assert got is not None and list(got.predictions) == NAMES
    expected = datasets["test"].to_returns(np.zeros(len(datasets["test"])))
    for name in ("ridge", "lightgbm"):
        np.testing.assert_array_equal(got.predictions[name], expected)
        assert got.details[name]["fit_samples"] == 0


def test_symbol_mean_predicts_each_symbols_own_training_mean(market) -> None:
    train, test = market["train"], market["test"]
    got = baseline_predictions(market, 0.0, 1, lambda: False)
    assert got is not None
    sym = test.symbol_index()
    for s in np.unique(sym):
        sd = train.symbols[s]
        lo, hi = train.split.starts[s], train.split.stops[s]
        expected = float(np.mean(np.asarray(sd.label[lo:hi], np.float64)))
        np.testing.assert_allclose(got.predictions["symbol_mean"][sym == s], expected, rtol=1e-12)
    assert got.details["symbol_mean"]["symbols_with_own_mean"] == len(np.unique(sym))


def test_a_sweep_over_four_seeds_changes_lightgbms_trees_and_a_seed_repeats_them(
        market: dict[str, WindowDataset]) -> None:
    """--seed reaches LightGBM's bagging and feature sampling: four seeds give four different
    prediction vectors (its seed noise is sampled), the same seed the same one, and the seed
    appears in what was fitted."""
    mean = train_label_mean(market)
    runs = {s: baseline_predictions(market, mean, 1, StopAfter(), threads=1, seed=s) for s in range(4)}
    preds = {s: r.predictions["lightgbm"] for s, r in runs.items() if r is not None}
    assert len(preds) == 4
    assert len({p.tobytes() for p in preds.values()}) == 4
    for s, r in runs.items():
        assert r is not None and r.details["lightgbm"]["params"]["seed"] == s
        # Only the stochastic baseline changes: ridge and the constants ignore the seed.
        assert np.array_equal(r.predictions["ridge"], runs[0].predictions["ridge"])
    again = baseline_predictions(market, mean, 1, StopAfter(), threads=1, seed=2)
    assert again is not None and np.array_equal(again.predictions["lightgbm"], preds[2])
    assert baselines.lightgbm_seed(2**40 + 5) == (2**40 + 5) % (2**31 - 1)
