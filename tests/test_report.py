"""The run report: every predictor scored on the same samples, a plain verdict, a compact table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from indicator_transformer import metrics as M
from indicator_transformer.integrity import json_safe
from indicator_transformer.report import (
    TestPredictions,
    best_by_metric,
    build_report,
    model_beats,
    report_series,
    verdict,
)
from indicator_transformer.report_table import format_table

DAY = 86_400 * 10**9
START = 1_577_836_800 * 10**9  # 2020-01-01


def panel(n_symbols: int = 12, n_dates: int = 250, model_skill: float = 0.15, ridge_skill: float = 0.1,
          horizon: int = 1, seed: int = 0) -> TestPredictions:
    """Symbols sharing weekday dates; targets rounded to 0.1% so that ties occur; the model and
    ridge each see a noisy copy of a common signal, LightGBM a weaker one."""
    rng = np.random.default_rng(seed)
    days = np.array([d for d in range(n_dates * 7 // 5 + 7) if d % 7 < 5][:n_dates])
    times = np.tile(START + days * DAY, n_symbols)
    symbols = np.repeat([f"SYM{i:02d}" for i in range(n_symbols)], n_dates)
    n = len(times)
    signal = rng.normal(size=n)
    target = np.round(0.01 * (0.2 * signal + rng.normal(size=n)) + 0.0004, 3)
    preds = {
        "model": 0.002 * (signal + rng.normal(size=n) / max(model_skill, 1e-9) * 0.2),
        "zero": np.zeros(n),
        "train_mean": np.full(n, 0.0004),
        "momentum": np.r_[np.zeros(1), target[:-1]],
        "ridge": 0.002 * (signal + rng.normal(size=n) / max(ridge_skill, 1e-9) * 0.2),
        "lightgbm": 0.001 * (0.3 * signal + rng.normal(size=n)),
    }
    return TestPredictions(symbols, times, target, preds, train_mean=0.0004, horizon=horizon, cost_bps=1.0,
                           per_year=252.0)


def _strict_json(report: dict) -> str:
    return json.dumps(json_safe(report), allow_nan=False)


def test_the_report_of_a_panel_holds_every_section_and_dumps_to_strict_json() -> None:
    tp = panel()
    r = build_report(tp)
    assert (r["samples"], r["symbols"], r["dates"], r["horizon"]) == (3000, 12, 250, 1)
    assert r["cost_bps"] == 1.0 and r["periods_per_year"] == 252.0
    assert list(r["predictors"]) == ["model", "zero", "train_mean", "momentum", "ridge", "lightgbm"]
    model = r["predictors"]["model"]
    assert set(model) == {"headline", "pooled", "by_symbol", "symbol_ic", "cross_section", "sign_strategy",
                          "long_short"}
    assert r["headline"]["metric"] == "cs_ic" and r["headline"]["mse"] == "pooled"
    assert model["cross_section"]["dates"] == 250 and "series" not in model["cross_section"]
    assert model["long_short"]["periods"] == 250 and "series" not in model["sign_strategy"]
    assert set(r["beats"]) == {"ridge", "lightgbm"} and isinstance(r["verdict"], str)
    text = _strict_json(r)
    # Undefined values became null, not NaN: the zero predictor has no IC.
    assert json.loads(text)["predictors"]["zero"]["pooled"]["ic"] is None


def test_the_report_holds_only_python_types() -> None:
    def walk(o: object) -> None:
        assert type(o) in (dict, list, str, int, float, bool, type(None)), type(o)
        for v in (o.values() if isinstance(o, dict) else o if isinstance(o, list) else ()):
            walk(v)
    walk(build_report(panel(n_symbols=6, n_dates=40)))


def test_the_report_numbers_are_the_metrics_of_the_same_samples() -> None:
    tp = panel(n_symbols=6, n_dates=60)
    r = build_report(tp)
    for name, pred in tp.preds.items():
        pooled = r["predictors"][name]["pooled"]
        expected = M.point_metrics(pred, tp.target, tp.train_mean)
        assert pooled["samples"] == 360
        for key in ("mse_ratio", "ic", "rank_ic", "hit_rate", "always_long"):
            assert pooled[key] == pytest.approx(expected[key], nan_ok=True)
    bh = M.buy_and_hold(tp.symbols, tp.times, tp.target, 252.0, 1, 1.0)
    assert r["buy_and_hold"]["sharpe"] == pytest.approx(bh["sharpe"])


def test_a_single_symbol_has_no_cross_section_and_no_long_short() -> None:
    r = build_report(panel(n_symbols=1, n_dates=200))
    for p in r["predictors"].values():
        assert p["cross_section"] is None and p["long_short"] is None
    assert r["best"]["cs_ic"] is None and r["best"]["long_short_sharpe"] is None
    table = format_table(r, "Test split")
    assert "CS IC" not in table and "L/S Sharpe" not in table
    _strict_json(r)


def test_a_model_that_loses_to_ridge_and_lightgbm_is_told_so_plainly() -> None:
    tp = panel(model_skill=0.0, ridge_skill=0.5)
    tp.preds["lightgbm"] = tp.preds["ridge"] * 0.9
    r = build_report(tp)
    assert r["beats"] == {"ridge": False, "lightgbm": False}
    plain = "does not beat ridge, lightgbm on the test split: a simpler predictor does as well here"
    assert plain in r["verdict"]
    assert "does not beat ridge, lightgbm" in format_table(r, "Test split").replace("\n  ", " ")


def test_a_model_that_beats_both_is_credited_and_its_significant_ic_is_not_called_noise() -> None:
    r = build_report(panel(model_skill=1.0, ridge_skill=0.05))
    assert r["beats"] == {"ridge": True, "lightgbm": True}
    assert r["verdict"].startswith("The model beats ridge and lightgbm")
    assert "noise" not in r["verdict"]
    assert r["best"]["ic"] == "model" and r["best"]["mse_ratio"] == "model"


def test_an_ic_with_a_t_below_two_is_called_noise_with_its_sample_and_date_counts() -> None:
    r = build_report(panel(n_symbols=6, n_dates=20, model_skill=0.02, seed=3))
    model = r["predictors"]["model"]
    assert model["pooled"]["ic_t_adj"] < 2 and model["cross_section"]["ic_t_adj"] < 2
    assert "not distinguishable from noise" in r["verdict"]
    assert "over 20 dates" in r["verdict"] and "CS IC" in r["verdict"]


def test_overlapping_labels_shrink_the_t_that_the_verdict_uses() -> None:
    # The same samples read as 9-bar forward returns carry a third of the evidence.
    one, nine = build_report(panel(horizon=1, seed=5)), build_report(panel(horizon=9, seed=5))
    t1, t9 = one["predictors"]["model"]["pooled"], nine["predictors"]["model"]["pooled"]
    assert t9["ic_t"] == pytest.approx(t1["ic_t"])
    assert t9["ic_t_adj"] == pytest.approx(t1["ic_t"] / 3)
    assert "adjusted for 9-bar overlapping labels" in verdict({**nine, "predictors": {
        "model": {**nine["predictors"]["model"], "pooled": {**t9, "ic_t_adj": 1.0}}}})


def test_the_model_does_not_beat_a_baseline_it_only_ties_or_cannot_be_compared_with() -> None:
    def pred(mse: float | None, ic: float | None) -> dict:
        return {"pooled": {"mse_ratio": mse, "ic": ic}}
    # Identical predictions: not better.
    assert model_beats({"model": pred(0.99, 0.05), "ridge": pred(0.99, 0.05)}) == {"ridge": False}
    # Better MSE but worse IC (or the reverse): both are needed.
    assert model_beats({"model": pred(0.98, 0.04), "ridge": pred(0.99, 0.05)}) == {"ridge": False}
    assert model_beats({"model": pred(1.01, 0.06), "ridge": pred(0.99, 0.05)}) == {"ridge": False}
    # A constant model (IC undefined) beats nothing.
    assert model_beats({"model": pred(0.98, None), "lightgbm": pred(0.99, 0.01)}) == {"lightgbm": False}
    # A constant baseline has no correlation: the model needs a positive IC to beat it.
    assert model_beats({"model": pred(0.98, -0.01), "ridge": pred(0.99, None)}) == {"ridge": False}
    assert model_beats({"model": pred(0.98, 0.01), "ridge": pred(0.99, math.nan)}) == {"ridge": True}
    # Only ridge and LightGBM are the strong baselines.
    assert model_beats({"model": pred(0.98, 0.01), "momentum": pred(2.0, -0.1)}) == {}


def test_without_ridge_or_lightgbm_the_verdict_says_nothing_strong_was_compared() -> None:
    tp = panel(n_symbols=3, n_dates=50)
    tp.preds = {k: v for k, v in tp.preds.items() if k not in ("ridge", "lightgbm")}
    r = build_report(tp)
    assert r["beats"] == {} and "No ridge or LightGBM baseline was scored" in r["verdict"]


def test_best_marks_only_a_lead_beyond_its_standard_error_and_never_a_negative_ic() -> None:
    def p(ic: float | None, se: float | None, mse: float = 0.99, mse_se: float = 0.001) -> dict:
        return {"pooled": {"ic": ic, "ic_se": se, "mse_ratio": mse, "mse_ratio_se": mse_se}}
    # A lead of 0.03 over ridge with a standard error of 0.01: clearly best.
    assert best_by_metric({"model": p(0.05, 0.01), "ridge": p(0.02, 0.01)})["ic"] == "model"
    # The same lead with a standard error of 0.05 (seed noise of this size): nobody is best.
    assert best_by_metric({"model": p(0.05, 0.05), "ridge": p(0.02, 0.05)})["ic"] is None
    # Every IC negative (the attack's -0.084 on 12 samples): never best, however far ahead.
    assert best_by_metric({"model": p(-0.01, 0.001), "ridge": p(-0.3, 0.001)})["ic"] is None
    # Equal values: a tie is nobody's lead.
    assert best_by_metric({"model": p(0.1, 0.01), "ridge": p(0.1, 0.01)})["ic"] is None
    # No standard error, or no values at all: nothing is marked.
    assert best_by_metric({"model": p(0.1, None), "ridge": p(0.0, None)})["ic"] is None
    assert best_by_metric({"model": p(None, None)})["hit_rate"] is None
    # An MSE/mean above 1 is behind the training mean and never best.
    assert best_by_metric({"model": p(0.1, 0.01, 1.02), "ridge": p(0.0, 0.01, 1.05)})["mse_ratio"] is None
    assert best_by_metric({"model": p(0.1, 0.01, 0.95), "ridge": p(0.0, 0.01, 0.99)})["mse_ratio"] == "model"
    # A standard error of 0 (a correlation of exactly 1 on four samples) is no certainty.
    assert best_by_metric({"model": p(1.0, 0.0), "ridge": p(0.2, 0.01)})["ic"] is None
    # A constant predictor is never marked, however far ahead (symbol_mean's pooled IC ranks
    # symbols' levels), but it stays a rival the model must beat.
    assert best_by_metric({"symbol_mean": p(0.3, 0.01), "model": p(0.05, 0.01)})["ic"] is None
    assert best_by_metric({"zero": p(0.1, 0.01, 0.90), "model": p(0.05, 0.01)})["mse_ratio"] is None


def test_a_negative_rank_ic_on_twelve_samples_is_not_starred() -> None:
    r = build_report(panel(n_symbols=1, n_dates=12, model_skill=0.01, seed=11))
    assert all(v is None for k, v in r["best"].items() if k in ("ic", "rank_ic", "headline_ic"))
    assert any("12 samples" in w for w in r["warnings"])


def test_the_table_marks_the_best_lists_symbols_sorted_and_truncated_and_ends_with_the_verdict() -> None:
    r = build_report(panel(n_symbols=13, n_dates=60, model_skill=1.0, ridge_skill=0.05))
    table = format_table(r, "Test split (best checkpoint, epoch 7)")
    lines = table.splitlines()
    assert all(len(line) < 110 for line in lines)
    assert lines[0] == "Test split (best checkpoint, epoch 7):"
    assert lines[1].startswith("  780 samples, 13 symbols, 60 dates; always long hits 0.")
    assert lines[1].endswith("; cost 1.0 bps")
    assert lines[2].startswith("  Headline: CS IC, the correlation across symbols on each of 60 dates")
    assert any(line.startswith("  * = ahead of every other predictor") for line in lines)
    model_row = next(line for line in lines if line.startswith("  model "))
    assert model_row.count("*") >= 3                      # headline CS IC, MSE ratio, pooled IC
    zero_row = next(line for line in lines if line.startswith("  zero "))
    assert "*" not in zero_row and zero_row.split()[1] == "-"  # undefined IC prints as '-'
    symbol_rows = [line.split()[0] for line in lines if line.startswith("  SYM")]
    assert symbol_rows == [f"SYM{i:02d}" for i in range(10)]
    assert "  ... 3 more" in lines
    assert lines[-1].startswith("  ") or lines[-1].startswith("Verdict:")
    assert any(line.startswith("Verdict: The model beats ridge and lightgbm") for line in lines)
    assert any(line.startswith("  buy and hold") for line in lines)


def test_the_table_of_a_report_read_back_from_json_is_the_same_table() -> None:
    r = build_report(panel(n_symbols=5, n_dates=30))
    assert format_table(json.loads(_strict_json(r)), "T") == format_table(r, "T")
    assert verdict(json.loads(_strict_json(r))) == r["verdict"]


def test_an_empty_test_split_gives_an_undefined_report_not_an_error() -> None:
    tp = TestPredictions(np.array([], str), np.array([], np.int64), np.array([]),
                         {"model": np.array([]), "ridge": np.array([])}, 0.0, 1, 0.0, math.nan)
    r = build_report(tp)
    assert r["samples"] == 0 and r["beats"] == {"ridge": False}
    assert "IC is undefined" in r["verdict"]
    _strict_json(r)
    format_table(r, "Test split")
    s = report_series(tp)
    assert s["long_short"] is None and s["ic_over_time"] is None and len(s["sign_strategy"]["return"]) == 0


def test_series_for_the_plots_are_the_models_per_date_returns_and_ic() -> None:
    tp = panel(n_symbols=6, n_dates=40)
    s = report_series(tp)
    np.testing.assert_array_equal(s["pred"], tp.preds["model"])
    assert len(s["sign_strategy"]["time"]) == len(s["buy_and_hold"]["time"]) == 40
    assert len(s["long_short"]["return"]) == 40 and len(s["ic_over_time"]["ic"]) == 40
    stats = M.sign_strategy(tp.symbols, tp.times, tp.preds["model"], tp.target, 252.0, 1, 1.0)
    assert np.mean(s["sign_strategy"]["return"]) * 252 == pytest.approx(stats["ann_return"])


def test_mismatched_arrays_or_a_missing_model_are_refused() -> None:
    with pytest.raises(ValueError, match="'model'"):
        TestPredictions(np.array(["A"]), np.array([1]), np.array([0.1]), {"ridge": np.array([0.0])},
                        0.0, 1, 0.0, 252.0)
    with pytest.raises(ValueError, match=r"preds\['ridge'\] has shape \(2,\)"):
        TestPredictions(np.array(["A"]), np.array([1]), np.array([0.1]),
                        {"model": np.array([0.0]), "ridge": np.zeros(2)}, 0.0, 1, 0.0, 252.0)


def _mixed_frequency() -> TestPredictions:
    """Two daily symbols beside two hourly ones (the attack's folder): one annualisation cannot
    serve both, and a median of 252 and 6048 bars a year fits neither."""
    rng = np.random.default_rng(3)
    days = np.array([d for d in range(400) if d % 7 < 5][:200])
    daily = START + days * DAY
    hours = START + np.arange(24 * 120) * (DAY // 24)
    hours = hours[((hours // DAY) + 3) % 7 < 5][:1500]
    symbols = np.r_[np.repeat(["SPX", "AAPL"], len(daily)), np.repeat(["EURUSD", "USDJPY"], len(hours))]
    times = np.r_[daily, daily, hours, hours]
    target = rng.normal(size=len(times)) * 0.01
    preds = {"model": target * 0.3 + rng.normal(size=len(times)) * 0.01, "zero": np.zeros(len(times))}
    return TestPredictions(symbols, times, target, preds, 0.0, 1, 0.0, per_year=3150.0)


def test_strategies_over_mixed_bar_frequencies_cover_one_frequency_and_say_so() -> None:
    tp = _mixed_frequency()
    r = build_report(tp)
    scope = r["strategy_scope"]
    assert scope["bar"] == "1h" and scope["symbols"] == ["EURUSD", "USDJPY"]  # the larger group
    assert "bar frequencies differ" in scope["note"] and "1d (2)" in scope["note"]
    # Annualised with the hourly group's own bars per year (24 a day x 252), not the median 3150.
    assert r["periods_per_year"] == pytest.approx(24 * 252)
    hourly = np.isin(tp.symbols, ["EURUSD", "USDJPY"])
    expected = M.sign_strategy(tp.symbols[hourly], tp.times[hourly], tp.preds["model"][hourly],
                               tp.target[hourly], 24 * 252, 1, 0.0)
    assert r["predictors"]["model"]["sign_strategy"]["sharpe"] == pytest.approx(expected["sharpe"])
    # Point metrics still use every sample.
    assert r["predictors"]["model"]["pooled"]["samples"] == len(tp.target)
    assert "Note: strategy and cross-sectional figures cover the 1h symbols only" in format_table(
        r, "t").replace("\n    ", " ")
    assert build_report(panel())["strategy_scope"]["note"] is None


def test_a_strategy_of_a_few_periods_has_no_annualised_figures() -> None:
    tp = panel(n_symbols=6, n_dates=12)
    r = build_report(tp)
    ss = r["predictors"]["model"]["sign_strategy"]
    assert ss["periods"] == 12 and math.isnan(ss["sharpe"]) and math.isnan(ss["ann_return"])
    assert math.isfinite(ss["max_drawdown"])  # what is not a rate is still shown
    assert math.isfinite(build_report(panel(n_dates=40))["predictors"]["model"]["sign_strategy"]["sharpe"])


def test_a_model_constant_within_each_symbol_is_called_so_and_does_not_beat_the_symbol_means() -> None:
    """Per-symbol normalisation turns a model that outputs 0 into each symbol's training mean: its
    IC then only ranks symbol levels, which the symbol_mean baseline does just as well."""
    tp = panel()
    levels = {s: 0.0001 * i for i, s in enumerate(np.unique(tp.symbols))}
    constant = np.array([levels[s] for s in tp.symbols])
    tp = TestPredictions(tp.symbols, tp.times, tp.target + constant,
                         {"model": constant.copy(), "symbol_mean": constant.copy(),
                          **{k: v for k, v in tp.preds.items() if k != "model"}},
                         tp.train_mean, 1, 0.0, 252.0)
    r = build_report(tp)
    assert r["model_constant_within_symbols"] is True
    assert r["beats"]["symbol_mean"] is False
    assert "does not vary within any symbol" in r["verdict"] and "symbol_mean" in r["verdict"]
    assert build_report(panel())["model_constant_within_symbols"] is False


def test_a_model_constant_within_each_symbol_is_never_starred_however_far_ahead() -> None:
    """The attack's case: 1.3 x the symbol means plus a constant, with no symbol_mean beside it to
    tie with, got 'hit rate 0.5633*' for holding one side per symbol."""
    tp = panel(n_symbols=6, n_dates=300)
    levels = {s: 0.002 * (i - 2.5) for i, s in enumerate(np.unique(tp.symbols))}
    drift = np.array([levels[s] for s in tp.symbols])
    model = 1.3 * drift + 2e-4
    tp = TestPredictions(tp.symbols, tp.times, tp.target + drift,
                         {"model": model, **{k: v for k, v in tp.preds.items()
                                             if k not in ("model", "symbol_mean")}},
                         tp.train_mean, 1, 0.0, 252.0)
    r = build_report(tp)
    assert r["model_constant_within_symbols"] is True
    pooled = r["predictors"]["model"]["pooled"]
    others = [p["pooled"]["hit_rate"] for n, p in r["predictors"].items() if n != "model"]
    others = [h for h in others if h is not None and math.isfinite(h)]
    assert pooled["hit_rate"] > max(others) + pooled["hit_rate_se"]  # ahead beyond its error...
    assert "model" not in r["best"].values()  # ...and still not marked


def test_a_symbol_with_one_test_sample_does_not_count_as_another_bar_frequency() -> None:
    tp = panel(n_symbols=6, n_dates=60)
    one = TestPredictions(np.r_[tp.symbols, ["LATE"]], np.r_[tp.times, [tp.times.max()]],
                          np.r_[tp.target, [0.001]], {k: np.r_[v, [0.0]] for k, v in tp.preds.items()},
                          tp.train_mean, 1, 0.0, 252.0)
    r = build_report(one)
    assert r["strategy_scope"]["note"] is None and r["periods_per_year"] == 252.0


def test_on_mixed_frequencies_the_headline_is_the_mean_symbol_ic_never_the_pooled_one() -> None:
    """The attack's folder: pooling hourly FX with daily equities rewards predicting which asset
    moves more. A model that only knows each symbol's volatility has a high pooled IC and no
    per-symbol skill; the headline must show the latter."""
    rng = np.random.default_rng(7)
    tp = _mixed_frequency()
    scale = np.where(np.isin(tp.symbols, ["SPX", "AAPL"]), 0.02, 0.002)
    target = np.abs(rng.normal(size=len(tp.target))) * scale * np.sign(rng.normal(size=len(scale)) + 1.0)
    knows_scale = scale + rng.normal(size=len(scale)) * 1e-5
    tp = TestPredictions(tp.symbols, tp.times, target, {"model": knows_scale, "zero": np.zeros(len(scale))},
                         0.0, 1, 0.0, 3150.0)
    r = build_report(tp)
    model = r["predictors"]["model"]
    assert r["headline"]["metric"] == "symbol_ic" and r["headline"]["mse"] == "symbol_mean"
    assert "per-symbol ICs" in r["headline"]["reason"]
    assert model["pooled"]["ic"] > 0.1                        # the pooled IC rewards the scale
    head = model["headline"]
    per_symbol = [v["ic"] for v in model["by_symbol"].values()]
    assert head["ic"] == pytest.approx(np.mean(per_symbol)) and abs(head["ic"]) < 0.1
    assert head["over"] == "4 symbols"
    assert r["headline"]["mse_reason"].startswith("the mean of the per-symbol ratios")
    table = format_table(r, "Test split")
    assert "symbol IC (t)" in table and "pooled IC" in table
    assert "Headline: symbol IC" in table


def test_return_scales_that_differ_make_the_mse_headline_the_mean_of_the_symbol_ratios() -> None:
    tp = panel(n_symbols=6, n_dates=100)
    loud = np.isin(tp.symbols, ["SYM00", "SYM01"])
    tp = TestPredictions(tp.symbols, tp.times, np.where(loud, tp.target * 20, tp.target),
                         tp.preds, tp.train_mean, 1, 0.0, 252.0)
    r = build_report(tp)
    assert r["headline"]["mse"] == "symbol_mean" and r["headline"]["scale_ratio"] > 5
    assert "return scales differ" in r["headline"]["mse_reason"]
    mse = [v["mse_ratio"] for v in r["predictors"]["model"]["by_symbol"].values()]
    assert r["predictors"]["model"]["headline"]["mse_ratio"] == pytest.approx(np.mean(mse))


def test_a_model_worse_than_the_training_mean_is_told_so_first() -> None:
    tp = panel(model_skill=0.0)
    tp.preds["model"] = tp.preds["model"] * 10            # wild predictions: MSE/mean far above 1
    r = build_report(tp)
    assert r["predictors"]["model"]["headline"]["mse_ratio"] > 1
    assert r["verdict"].startswith("The model is worse than predicting the training mean (MSE/mean ")
    # Below 1 but behind a constant (each symbol's training mean): said too.
    def p(mse: float, ic: float) -> dict:
        return {"headline": {"mse_ratio": mse, "ic": ic, "ic_t_adj": 3.0, "over": "9 dates"}}
    crafted = {"horizon": 1, "predictors": {"model": p(0.995, 0.05), "symbol_mean": p(0.990, 0.01),
                                            "train_mean": p(1.0, math.nan)}, "beats": {"symbol_mean": False}}
    assert verdict(crafted).startswith("The model is worse than a constant prediction: symbol_mean has a "
                                       "lower MSE/mean (0.9900 against the model's 0.9950).")


def test_the_baselines_fits_are_shown_with_an_edge_alpha_and_a_lightgbm_close_to_constant() -> None:
    tp = panel(n_symbols=4, n_dates=60)
    tp.preds["lightgbm"] = 0.0004 + 1e-6 * np.random.default_rng(0).normal(size=len(tp.target))
    fits = {"ridge": {"alpha": 1e4, "alphas": [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5],
                      "chosen_by": "validation MSE", "fit_samples": 51, "features": 800},
            "lightgbm": {"rounds": 2, "max_rounds": 500, "early_stopping": True, "fit_samples": 3000,
                         "params": {"seed": 3}}}
    r = build_report(tp, fits)
    ridge, lgb = r["baseline_fits"]["ridge"], r["baseline_fits"]["lightgbm"]
    assert "alpha 1e+04 (next to the top of its grid)" in ridge["text"]
    assert "fitted on 51 samples of 800 inputs" in ridge["text"]
    assert lgb["close_to_constant"] is True and "2 of 500 rounds" in lgb["text"]
    assert "seed 3" in lgb["text"] and lgb["text"].endswith("close to constant")
    assert any("fewer samples than inputs" in w for w in r["warnings"])
    table = format_table(r, "Test split").replace("\n      ", " ")
    assert "Baselines as fitted:" in table and "2 of 500 rounds" in table
    top = dict(fits, ridge=dict(fits["ridge"], alpha=1e5))
    assert build_report(tp, top)["baseline_fits"]["ridge"]["close_to_constant"] is True
    assert "at the top of its grid" in build_report(tp, top)["baseline_fits"]["ridge"]["text"]


def test_a_short_strategy_sample_carries_its_length_and_a_warning() -> None:
    r = build_report(panel(n_symbols=4, n_dates=105))    # about 5 months of daily bars
    ss = r["predictors"]["model"]["sign_strategy"]
    assert ss["periods"] == 105 and 0.3 < ss["years"] < 0.5 and math.isfinite(ss["sharpe_se"])
    assert any("a Sharpe ratio from under a year" in w for w in r["warnings"])
    table = format_table(r, "Test split").replace("\n    ", " ")
    assert "Sharpe figures: 105 periods of 1d bars (0.42 years)" in table
    assert not any("under a year" in w for w in build_report(panel(n_dates=300))["warnings"])


def test_separate_test_periods_are_listed_and_get_their_own_strategy_series() -> None:
    a = panel(n_symbols=3, n_dates=60, seed=1)
    late = 5 * 365 * DAY
    tp = TestPredictions(np.r_[a.symbols, np.char.add(a.symbols, "L")], np.r_[a.times, a.times + late],
                         np.r_[a.target, a.target], {k: np.r_[v, v] for k, v in a.preds.items()},
                         a.train_mean, 1, 0.0, 252.0)
    r = build_report(tp)
    assert len(r["test_periods"]) == 2
    assert r["test_periods"][0]["symbols"] == ["SYM00", "SYM01", "SYM02"]
    s = report_series(tp)
    assert len(s["periods"]) == 2
    for period in s["periods"]:
        t = period["sign_strategy"]["time"]
        assert len(t) == 60 and (t.max() - t.min()) < 365 * DAY   # never stitched across the gap
    assert "2 separate test periods" in format_table(r, "t").replace("\n    ", " ")


def test_a_negative_ic_beats_no_baseline_however_much_worse_the_baselines_is() -> None:
    def pred(mse: float, ic: float) -> dict:
        return {"pooled": {"mse_ratio": mse, "ic": ic}}
    # The monthly file's case: model IC -0.08, ridge -0.17, the model's MSE lower: still no win.
    assert model_beats({"model": pred(1.01, -0.08), "ridge": pred(1.02, -0.17)}) == {"ridge": False}
