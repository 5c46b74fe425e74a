"""Every metric against a value computed by hand on a tiny sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indicator_transformer import metrics as M

DAY = 86_400 * 10**9


def test_average_ranks_share_the_mean_position_of_ties() -> None:
    np.testing.assert_array_equal(M.average_ranks(np.array([10, 20, 20, 30])), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(M.average_ranks(np.array([3, 1, 3, 3])), [3, 1, 3, 3])


def test_rank_ic_with_tied_targets_does_not_depend_on_their_order() -> None:
    # Target ranks (1.5, 1.5, 3.5, 3.5) against 1..4: cov 4, var 5 and 4 -> 4 / sqrt(20).
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    assert M.spearman(pred, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(4 / math.sqrt(20))
    # The same multiset of targets met in another order by the same predictions: position
    # tie-breaking gave different answers; average ranks give one.
    a = M.spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 7.0]))
    b = M.spearman(np.array([2.0, 1.0, 3.0]), np.array([5.0, 5.0, 7.0]))
    assert a == pytest.approx(b) == pytest.approx(math.sqrt(3) / 2)


def test_pearson_and_its_t_statistic() -> None:
    assert M.pearson(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])) == pytest.approx(0.5)
    assert M.corr_t(0.5, 10) == pytest.approx(0.5 * math.sqrt(8 / 0.75))
    assert math.isnan(M.pearson(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))  # constant: undefined
    assert math.isnan(M.corr_t(0.3, 2))


def test_point_metrics_by_hand() -> None:
    pred = np.array([0.1, -0.2, 0.3, 0.0])
    target = np.array([0.2, 0.1, -0.1, 0.0])
    m = M.point_metrics(pred, target, train_mean=0.05)
    assert m["samples"] == 4 and m["moves"] == 3
    assert m["mse"] == pytest.approx((0.01 + 0.09 + 0.16) / 4)
    assert m["baseline_mse"] == pytest.approx((0.0225 + 0.0025 + 0.0225 + 0.0025) / 4)
    assert m["mse_ratio"] == pytest.approx(0.065 / 0.0125)
    assert m["hit_rate"] == pytest.approx(1 / 3) and m["always_long"] == pytest.approx(2 / 3)


def test_a_hit_rate_below_always_long_is_not_significant() -> None:
    # The case: 0.587 looked good, but 59.5% of the moves were up.
    assert M.proportion_z(0.587, 0.595, 1000) < 0
    # 595 up moves, 405 down; right on 480 of the ups and 107 of the downs: 587 hits.
    target = np.r_[np.full(595, 0.01), np.full(405, -0.01)]
    pred = np.r_[np.full(480, 1.0), np.full(115, -1.0), np.full(107, -1.0), np.full(298, 1.0)]
    assert M.point_metrics(pred, target, 0.0)["hit_rate"] == pytest.approx(0.587)
    m = M.point_metrics(pred, target, 0.0)
    assert m["always_long"] == pytest.approx(0.595) and m["hit_z"] < 0


def test_cross_sectional_ic_mean_std_ir_and_skipped_dates() -> None:
    times = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    pred = np.array([1.0, 2, 3, 1, 2, 3, 1, 2])
    target = np.array([1.0, 2, 3, 1, 3, 2, 5, 6])        # date 3 has 2 names: skipped
    cs = M.cross_sectional(times, pred, target)
    assert cs["dates"] == 2
    assert cs["ic_mean"] == pytest.approx(0.75)
    assert cs["ic_std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert cs["ic_ir"] == pytest.approx(0.75 / math.sqrt(2 * 0.25**2))
    assert cs["ic_t"] == pytest.approx(cs["ic_ir"] * math.sqrt(2))


def test_periods_per_year_from_the_bar_spacing() -> None:
    weekdays = np.array([d for d in range(30) if d % 7 < 5]) * DAY
    assert M.periods_per_year(weekdays) == 252
    assert M.periods_per_year(np.arange(200) * 3600 * 10**9) == pytest.approx(252 * 24)  # FX hourly
    session = np.concatenate([d * DAY + np.arange(7) * 3600 * 10**9 for d in range(20)])  # 7 bars a day
    assert M.periods_per_year(session) == pytest.approx(252 * 7)
    assert M.periods_per_year(np.arange(60) * 7 * DAY) == pytest.approx(365.25 / 7)


def test_equity_stats_by_hand() -> None:
    s = M.equity_stats(np.array([0.01, -0.02, 0.03]), np.array([1.0, 0, 0]), per_year=252, cost_bps=10)
    r = np.array([0.009, -0.02, 0.03])
    assert s["ann_return"] == pytest.approx(r.mean() * 252)
    assert s["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert s["max_drawdown"] == pytest.approx(0.02)
    assert s["turnover"] == pytest.approx(1 / 3)


def test_sign_strategy_and_long_short_by_hand() -> None:
    s = M.sign_strategy(np.array(["A"] * 3), np.array([1, 2, 3]), np.array([1.0, -1, 1]),
                        np.array([0.01, 0.02, -0.03]), per_year=252, horizon=1, cost_bps=0)
    assert s["ann_return"] == pytest.approx(np.mean([0.01, -0.02, -0.03]) * 252)
    assert s["turnover"] == pytest.approx((1 + 2 + 2) / 3)
    syms = np.array(list("ABCDE"))
    ls = M.long_short(np.zeros(5), syms, np.array([0.5, -0.1, 0.2, -0.4, 0.0]),
                      np.array([0.03, 0.01, 0.0, -0.02, 0.05]), per_year=252, horizon=1, cost_bps=0)
    assert ls["periods"] == 1 and ls["ann_return"] == pytest.approx((0.03 - (-0.02)) * 252)


def test_a_constant_predictor_has_no_ic_and_no_hit_rate() -> None:
    target = np.array([0.01, -0.02, 0.03, 0.01])
    m = M.point_metrics(np.full(4, 0.0003), target, 0.0003)
    assert math.isnan(m["ic"]) and math.isnan(m["rank_ic"]) and m["mse_ratio"] == pytest.approx(1.0)
    assert math.isnan(M.point_metrics(np.zeros(4), target, 0.0)["hit_rate"])
