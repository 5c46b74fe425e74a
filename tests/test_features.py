"""features.py: enough indicators, no look-ahead, no raw price level, the right label, no warm-up NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indicator_transformer.config import DEFAULT_FEATURES, FeatureConfig
from indicator_transformer.data.features import (
    FEATURES,
    compute_features,
    feature_columns,
    forward_return,
    warmup_bars,
)
from indicator_transformer.data.ohlcv import OHLCV
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import UserError

ALL = list(FEATURES)
BARS = 600
BASE = synthetic_symbol(1, 21, 4, BARS)
WARMUP = warmup_bars(ALL)


def _cut(x: OHLCV, n: int) -> OHLCV:
    return OHLCV(x.symbol, x.time[:n], x.open[:n], x.high[:n], x.low[:n], x.close[:n], x.volume[:n])


def _scaled(x: OHLCV, k: float) -> OHLCV:
    return dataclasses.replace(x, open=x.open * k, high=x.high * k, low=x.low * k, close=x.close * k)


def _with_other_future(x: OHLCV, t: int, seed: int) -> OHLCV:
    """Bars after index t replaced by a different (but valid) future."""
    other = synthetic_symbol(1, 1000 + seed, 0, len(x))
    # Rescale the other path so that it continues from today's close: a plausible, different future.
    k = x.close[t] / other.close[t]
    repl = {}
    for name in ("open", "high", "low", "close", "volume"):
        a = getattr(x, name).copy()
        b = getattr(other, name) * (1.0 if name == "volume" else k)
        a[t + 1:] = b[t + 1:]
        repl[name] = a
    return dataclasses.replace(x, **repl)


def test_there_are_at_least_twenty_features_and_the_defaults_are_registered():
    assert len(FEATURES) >= 20
    assert len(DEFAULT_FEATURES) >= 20
    assert set(DEFAULT_FEATURES) <= set(FEATURES)
    assert FeatureConfig().features == list(DEFAULT_FEATURES)
    families = {f.family for f in FEATURES.values()}
    assert {"returns", "trend", "momentum", "volatility", "volume"} <= families


def test_an_unknown_feature_name_is_a_user_error_listing_the_known_ones():
    with pytest.raises(UserError, match="rsi_14"):
        FeatureConfig(features=["ret_1", "rsi_99"])


def test_the_feature_matrix_has_one_column_per_name_in_order():
    fs = compute_features(BASE, ALL, 1)
    assert fs.features.shape == (BARS - WARMUP, len(ALL))
    assert fs.features.dtype == np.float32 and fs.label.dtype == np.float32
    single = compute_features(BASE, ["rsi_14"], 1)
    col = ALL.index("rsi_14")
    # rsi alone warms up sooner; align on time.
    offset = len(single.time) - len(fs.time)
    np.testing.assert_array_equal(single.features[offset:, 0], fs.features[:, col])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=WARMUP + 1, max_value=BARS - 1))
def test_truncating_the_future_leaves_past_features_unchanged(cut):
    full = compute_features(BASE, ALL, 1)
    short = compute_features(_cut(BASE, cut), ALL, 1)
    n = len(short.time)
    assert n == cut - WARMUP
    np.testing.assert_array_equal(short.time, full.time[:n])
    np.testing.assert_array_equal(short.features, full.features[:n])
    # Labels that only need bars before the cut are unchanged too.
    np.testing.assert_array_equal(short.label[:-1], full.label[: n - 1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(min_value=WARMUP, max_value=BARS - 2), seed=st.integers(0, 50))
def test_changing_bars_after_t_leaves_features_up_to_t_unchanged(t, seed):
    full = compute_features(BASE, ALL, 1)
    changed = compute_features(_with_other_future(BASE, t, seed), ALL, 1)
    upto = t - WARMUP + 1  # rows for bars WARMUP..t
    np.testing.assert_array_equal(changed.features[:upto], full.features[:upto])
    # The change is real: some later feature does move.
    assert not np.array_equal(changed.features[upto:], full.features[upto:])


@pytest.mark.parametrize("factor", [100.0, 0.01])
def test_scaling_every_price_leaves_the_features_unchanged(factor):
    base = compute_features(BASE, ALL, 3)
    scaled = compute_features(_scaled(BASE, factor), ALL, 3)
    np.testing.assert_allclose(scaled.features, base.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.label, base.label, rtol=1e-5, atol=1e-6)


def test_no_feature_follows_the_price_level_of_a_symbol_that_trends_tenfold():
    x = synthetic_symbol(1, 3, 2, 3000)
    trend = np.exp(np.linspace(0.0, np.log(10.0), len(x)))
    y = dataclasses.replace(x, open=x.open * trend, high=x.high * trend, low=x.low * trend,
                            close=x.close * trend)
    fs = compute_features(y, ALL, 1)
    level = y.close[-len(fs.time):]
    assert level[-1] / level[0] > 10
    for name, col in zip(ALL, fs.features.T, strict=True):
        r = np.corrcoef(col, level)[0, 1]
        assert abs(r) < 0.5, f"{name} correlates {r:.2f} with the price level"


@pytest.mark.parametrize("horizon", [1, 5])
def test_the_label_is_the_forward_log_return_and_nan_in_the_last_h_rows(horizon):
    fs = compute_features(BASE, ALL, horizon)
    close = BASE.close[WARMUP:]
    expected = np.log(close[horizon:] / close[:-horizon])
    np.testing.assert_allclose(fs.label[:-horizon], expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.isnan(fs.label[-horizon:]))
    assert np.all(np.isfinite(fs.label[:-horizon]))


def test_forward_return_of_a_series_shorter_than_the_horizon_is_all_nan():
    assert np.all(np.isnan(forward_return(np.array([1.0, 2.0]), 5)))


def test_warm_up_rows_are_dropped_so_no_feature_is_nan():
    fs = compute_features(BASE, ALL, 1)
    assert np.all(np.isfinite(fs.features))
    assert fs.time[0] == BASE.time[WARMUP]
    # and the warm-up is tight: with one row fewer, some indicator would still be undefined
    cols = feature_columns(BASE, ALL)
    assert not np.isfinite(cols[WARMUP - 1]).all()
    assert np.isfinite(cols[WARMUP]).all()


def test_flat_volume_and_flat_prices_give_finite_features_not_inf():
    n = 300
    x = OHLCV("FLAT", BASE.time[:n], np.full(n, 10.0), np.full(n, 10.0), np.full(n, 10.0),
              np.full(n, 10.0), np.full(n, 500.0))
    fs = compute_features(x, ALL, 1)
    assert len(fs.time) > 0
    assert np.all(np.isfinite(fs.features))


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 200), bars=st.integers(WARMUP + 2, 1500), data=st.data())
def test_no_look_ahead_on_many_symbols_lengths_and_cut_points(index, bars, data):
    x = synthetic_symbol(1, 99, index, bars)
    horizon = data.draw(st.integers(1, 10))
    cut = data.draw(st.integers(WARMUP + 1, bars - 1))
    full = compute_features(x, ALL, horizon)
    short = compute_features(_cut(x, cut), ALL, horizon)
    n = len(short.time)
    np.testing.assert_array_equal(short.features, full.features[:n])
    np.testing.assert_array_equal(short.label[: max(n - horizon, 0)], full.label[: max(n - horizon, 0)])


@pytest.mark.parametrize("name", DEFAULT_FEATURES)
def test_a_feature_reads_only_the_columns_it_declares(name: str) -> None:
    from indicator_transformer.data.features import FEATURES, feature_columns, required_columns

    x = synthetic_symbol(1, 0, 0, 300)
    unused = {"open", "high", "low", "volume"} - set(required_columns([name]))
    # Columns it does not declare are replaced by garbage: the feature must not change.
    garbage = dataclasses.replace(x, **{c: np.full(len(x), 7.5e3) for c in unused})
    assert required_columns([name]) >= {"close"} and set(FEATURES[name].inputs) <= {
        "open", "high", "low", "close", "volume"}
    np.testing.assert_array_equal(feature_columns(x, [name]), feature_columns(garbage, [name]))
