"""Baselines: fitted on training data only, scored on exactly the model's test samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indicator_transformer.baselines import Ridge, last_returns
from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.prepare import SymbolData
from indicator_transformer.data.windows import Normalisation, WindowDataset, make_splits


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
    assert set(report["baselines"]) == {"zero", "train_mean", "momentum", "ridge"}
    assert {b["samples"] for b in report["baselines"].values()} == {report["test"]["samples"]}
    assert report["baselines"]["train_mean"]["mse_ratio"] == pytest.approx(1.0)
    assert report["baselines"]["zero"]["ic"] is None  # undefined is null, never NaN
    assert report["verdict"]
