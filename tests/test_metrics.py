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


# ----------------------------------------------------------------------------- strategies for the report
def test_sign_strategy_gives_each_dates_return_after_cost_when_asked() -> None:
    # A on dates 1, 2, 3 and B on 2, 3; horizon 1, 10 bps.
    syms = np.array(["A", "A", "A", "B", "B"])
    times = np.array([1, 2, 3, 2, 3])
    pred = np.array([1.0, 1.0, -1.0, -1.0, -1.0])
    target = np.array([0.01, 0.02, -0.01, 0.03, -0.02])
    s = M.sign_strategy(syms, times, pred, target, per_year=252, horizon=1, cost_bps=10, series=True)
    # Per date: returns (0.01), (0.02 - 0.03) / 2, (0.01 + 0.02) / 2; turnover 1, (0 + 1) / 2, (2 + 0) / 2.
    gross, turn = np.array([0.01, -0.005, 0.015]), np.array([1.0, 0.5, 1.0])
    np.testing.assert_array_equal(s["series"]["time"], [1, 2, 3])
    np.testing.assert_allclose(s["series"]["return"], gross - turn * 10 / 1e4)
    assert s["turnover"] == pytest.approx(2.5 / 3)
    assert s["ann_return"] == pytest.approx(np.mean(gross - turn * 1e-3) * 252)
    assert "series" not in M.sign_strategy(syms, times, pred, target, 252, 1, 10)  # stats stay JSON-able


def test_a_sign_that_flips_and_holds_pays_the_whole_flip_spread_over_the_horizon() -> None:
    # Horizon 2: each bar opens half the book for two bars. Positions 1, 1, -1, -1, -1: the net
    # position goes 1/2, 1, 0, -1, -1, so turnover per bar is 0.5, 0.5, 1, 1, 0 (entry 1 + flip 2).
    s = M.sign_strategy(np.array(["A"] * 5), np.arange(5), np.array([1.0, 1, -1, -1, -1]),
                        np.zeros(5), per_year=252, horizon=2, cost_bps=0)
    assert s["turnover"] == pytest.approx(3.0 / 5)


def test_buy_and_hold_is_long_every_symbol_present_and_trades_only_to_enter() -> None:
    syms = np.array(["A", "A", "A", "B", "B"])
    times = np.array([1, 2, 3, 2, 3])
    target = np.array([0.01, 0.02, -0.01, 0.03, -0.02])
    bh = M.buy_and_hold(syms, times, target, per_year=252, horizon=1, cost_bps=10, series=True)
    net = np.array([0.01 - 1e-3, 0.025 - 0.5e-3, -0.015])   # B enters on date 2: half the book trades
    np.testing.assert_allclose(bh["series"]["return"], net)
    assert bh["turnover"] == pytest.approx(0.5)
    assert bh["ann_return"] == pytest.approx(net.mean() * 252)
    assert bh["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(252))
    assert bh["max_drawdown"] == pytest.approx(0.015)
    # Equal to the sign strategy of a predictor that always says up.
    assert bh["ann_return"] == M.sign_strategy(syms, times, np.ones(5), target, 252, 1, 10)["ann_return"]


def test_buy_and_hold_of_nothing_is_undefined_not_an_error() -> None:
    bh = M.buy_and_hold(np.array([], str), np.array([], np.int64), np.array([]), 252, 1, 0, series=True)
    assert bh["periods"] == 0 and math.isnan(bh["sharpe"]) and len(bh["series"]["return"]) == 0


def test_quantile_weights_share_a_tie_across_the_cut() -> None:
    # Sorted ascending, k = 1: the three tied names share the single top slot.
    np.testing.assert_allclose(M.quantile_weights(np.array([-0.2, 0.0, 0.1, 0.1, 0.1]), 1),
                               [-1, 0, 1 / 3, 1 / 3, 1 / 3])
    # k = 2 with a tie straddling the bottom cut: one slot left for two names.
    np.testing.assert_allclose(M.quantile_weights(np.array([1.0, 2, 2, 3, 4, 5]), 2),
                               [-0.5, -0.25, -0.25, 0, 0.5, 0.5])
    np.testing.assert_array_equal(M.quantile_weights(np.zeros(6), 1), np.zeros(6))  # constant: flat


def test_long_short_with_tied_predictions_does_not_depend_on_input_order() -> None:
    pred = np.array([0.1, 0.1, 0.0, -0.2, 0.1])
    target = np.array([0.03, 0.01, 0.0, -0.02, 0.05])
    syms = np.array(list("ABCDE"))
    a = M.long_short(np.zeros(5), syms, pred, target, per_year=252, horizon=1, cost_bps=0)
    perm = np.array([4, 2, 0, 3, 1])
    b = M.long_short(np.zeros(5), syms[perm], pred[perm], target[perm], per_year=252, horizon=1, cost_bps=0)
    expected = (0.03 + 0.01 + 0.05) / 3 - (-0.02)
    assert a["ann_return"] == pytest.approx(expected * 252)
    assert b["ann_return"] == pytest.approx(a["ann_return"])
    # A predictor with no cross-sectional view (zero, the training mean) holds nothing.
    flat = M.long_short(np.zeros(5), syms, np.zeros(5), target, 252, 1, 0)
    assert flat["ann_return"] == 0 and flat["turnover"] == 0 and math.isnan(flat["sharpe"])


def test_long_short_charges_the_cost_on_every_leg_traded() -> None:
    # Date 1: long A, short E (entry: 2 units). Date 2: long B, short E (A out, B in: 2 units).
    syms = np.array(list("ABCDE") * 2)
    times = np.repeat([1, 2], 5)
    pred = np.array([5.0, 4, 3, 2, 1, 4, 5, 3, 2, 1])
    target = np.array([0.02, 0.0, 0.0, 0.0, -0.01, 0.0, 0.03, 0.0, 0.0, 0.01])
    ls = M.long_short(times, syms, pred, target, per_year=252, horizon=1, cost_bps=10, series=True)
    assert ls["turnover"] == pytest.approx(2.0)
    np.testing.assert_array_equal(ls["series"]["time"], [1, 2])
    np.testing.assert_allclose(ls["series"]["return"], [0.03 - 2e-3, 0.02 - 2e-3])
    # Horizon 2: each date's book is half the position; date 2 compares with the flat book two dates back.
    ls2 = M.long_short(times, syms, pred, target, per_year=252, horizon=2, cost_bps=0, series=True)
    np.testing.assert_allclose(ls2["series"]["return"], [0.015, 0.01])
    assert ls2["turnover"] == pytest.approx(1.0)


def test_long_short_skips_dates_with_too_few_names() -> None:
    ls = M.long_short(np.zeros(4), np.array(list("ABCD")), np.arange(4.0), np.ones(4), 252, 1, 0, series=True)
    assert ls["periods"] == 0 and len(ls["series"]["time"]) == 0 and math.isnan(ls["ann_return"])


def test_overlap_adjusted_t_shrinks_by_the_square_root_of_the_horizon() -> None:
    assert M.overlap_adjusted_t(3.0, 9) == pytest.approx(1.0)
    assert M.overlap_adjusted_t(2.5, 1) == 2.5
    assert math.isnan(M.overlap_adjusted_t(M.NAN, 5))


def test_net_returns_subtract_the_cost_per_unit_of_turnover() -> None:
    np.testing.assert_allclose(M.net_returns(np.array([0.01, 0.0]), np.array([2.0, 0.5]), 5),
                               [0.01 - 2 * 5e-4, -0.5 * 5e-4])
