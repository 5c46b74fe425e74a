"""The synthetic market's fast generator: bit-identical to the per-bar loop of version 1 (kept here
as the reference), whichever symbols are generated together, from any thread, in bounded memory.

Its output is part of every synthetic cache key's identity and of checkpoints' data fingerprints,
so "close" is not enough: every array must be equal bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from indicator_transformer.data import synthetic
from indicator_transformer.data.ohlcv import OHLCV
from indicator_transformer.data.sources import synthetic_sources
from indicator_transformer.data.synthetic import synthetic_symbol


def reference_synthetic_symbol(seed: int, index: int, bars: int) -> OHLCV:
    """Version 1 as it was first written: one Python loop iteration per bar (do not change)."""
    rng = np.random.default_rng([seed, index])
    market = np.random.default_rng([seed, 999_983]).standard_normal(bars)
    beta = 0.4 + 0.6 * rng.random()
    base_vol = 0.008 + 0.012 * rng.random()
    omega, alpha, garch_beta = base_vol**2 * 0.05, 0.08, 0.87
    regime_drift = np.array([0.0004, -0.0003])
    regime_volmult = np.array([0.8, 1.6])
    p_stay = np.array([0.995, 0.98])
    eps = rng.standard_normal(bars)
    u = rng.random(bars)
    r = np.empty(bars)
    var = base_vol**2
    regime = 0
    prev_r = 0.0
    mom = 0.0
    for t in range(bars):
        if u[t] > p_stay[regime]:
            regime = 1 - regime
        sigma = math.sqrt(var) * regime_volmult[regime]
        mu = regime_drift[regime] - 0.12 * prev_r + 0.05 * mom
        shock = sigma * (beta * 0.5 * market[t] + math.sqrt(1 - (beta * 0.5) ** 2) * eps[t])
        r[t] = mu + shock
        var = omega + alpha * (shock / regime_volmult[regime]) ** 2 + garch_beta * var
        mom = 0.95 * mom + 0.05 * r[t]
        prev_r = r[t]
    close = 50.0 * (1 + rng.random()) * np.exp(np.cumsum(r))
    gap = rng.standard_normal(bars) * 0.15 * np.abs(r)
    open_ = np.empty(bars)
    open_[0] = close[0] * math.exp(-r[0])
    open_[1:] = close[:-1] * np.exp(gap[1:])
    hi_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    lo_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    high = np.maximum(open_, close) * np.exp(hi_ext)
    low = np.minimum(open_, close) * np.exp(-lo_ext)
    vol_scale = np.abs(r) / base_vol
    volume = np.round(1e5 * (1 + rng.random()) * np.exp(0.3 * rng.standard_normal(bars))
                      * (0.6 + 0.8 * vol_scale))
    start = np.datetime64("2000-01-03", "D")
    days = np.busday_offset(start, np.arange(bars), roll="forward")
    time = days.astype("datetime64[ns]").astype(np.int64)
    return OHLCV(f"SYN{index:03d}", time, open_, high, low, close, volume)


def assert_bit_identical(got: OHLCV, want: OHLCV) -> None:
    assert got.symbol == want.symbol
    for field in dataclasses.fields(OHLCV):
        if field.name == "symbol":
            continue
        a, b = getattr(got, field.name), getattr(want, field.name)
        assert a.dtype == b.dtype and a.shape == b.shape, field.name
        # Compare the bytes: equal floats could still differ in sign of zero or NaN payload.
        assert a.tobytes() == b.tobytes(), f"{field.name} differs from the reference"


# Indices on both sides of every kind of block boundary (first block 0-15, then 16-31, 32-63, ...).
INDICES = (0, 1, 7, 15, 16, 17, 31, 32, 63, 64, 127, 128, 255, 256, 257, 300, 511, 512, 1000)


@pytest.mark.parametrize("seed", [0, 7, 123_456_789])
@pytest.mark.parametrize("bars", [1, 2, 3, 40, 700])
def test_every_synthetic_symbol_is_bit_identical_to_the_per_bar_reference(seed, bars):
    for index in INDICES:
        want = reference_synthetic_symbol(seed, index, bars)
        assert_bit_identical(synthetic_symbol(1, seed, index, bars), want)


def test_a_long_market_of_many_symbols_is_bit_identical_to_the_reference():
    # Squares near a rounding tie, where pow and x * x differ, do reach the output: computing the
    # GARCH variance with x * x changes symbols 8, 28 and 31 of this market (glibc's pow).
    for index in range(32):
        want = reference_synthetic_symbol(123_456_789, index, 2500)
        assert_bit_identical(synthetic_symbol(1, 123_456_789, index, 2500), want)


@pytest.mark.parametrize("index", [0, 5, 16, 40, 200])
def test_a_symbols_returns_do_not_depend_on_which_symbols_are_generated_with_it(index):
    bars = 400
    alone = synthetic._generate_block(9, bars, index, 1).returns[:, 0]
    for first, width in [(index - index % 16, 16), (max(0, index - 3), 7), (0, 256)]:
        block = synthetic._generate_block(9, bars, first, width)
        assert block.returns[:, index - first].tobytes() == alone.tobytes(), (first, width)


def test_symbols_loaded_from_many_threads_in_any_order_match_the_reference():
    # As prepare loads them: Source objects in a thread pool, here shuffled so that blocks are
    # asked for out of order and some are dropped from the memo and generated again.
    market = synthetic_sources(70, 300, seed=4)
    order = list(market)
    random.Random(1).shuffle(order)
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = list(pool.map(lambda s: (s, s.load()), order))
    for src, got in loaded:
        want = reference_synthetic_symbol(4, src.synthetic["index"], 300)
        assert_bit_identical(got, dataclasses.replace(want, symbol=src.symbol))
        assert_bit_identical(got, want)


def test_the_generator_keeps_no_block_once_every_symbol_of_it_was_taken():
    for index in range(16):
        synthetic_symbol(1, 31, index, 200)
    assert not [key for key in synthetic._memo if key[:2] == (31, 200)]


def test_the_generator_keeps_at_most_a_few_blocks_however_many_markets_are_asked_for():
    for seed in range(100, 110):
        synthetic_symbol(1, seed, 0, 50)  # one symbol of each: its block stays until evicted
    assert len(synthetic._memo) <= synthetic._BLOCKS_KEPT


def _generate_in_child() -> None:
    got, want = synthetic_symbol(1, 5, 3, 50), reference_synthetic_symbol(5, 3, 50)
    os._exit(0 if got.close.tobytes() == want.close.tobytes() else 1)


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork on this platform")
def test_a_process_forked_while_the_generator_is_locked_still_generates_symbols():
    with synthetic._memo_lock:  # as if a preparing thread were inside it at the moment of the fork
        child = multiprocessing.get_context("fork").Process(target=_generate_in_child)
        child.start()
    child.join(20)
    if child.exitcode is None:
        child.kill()
        child.join()
    assert child.exitcode == 0


def test_blocks_are_narrower_for_long_series_so_one_block_stays_within_its_memory_bound():
    for bars in (1, 2500, 5000, 100_000, 3_000_000):
        for index in (0, 20, 300, 5000):
            first, width = synthetic._block_span(index, bars)
            assert first <= index < first + width
            assert width * bars <= max(bars, synthetic._BLOCK_ELEMENTS)


def test_each_synthetic_symbol_owns_its_arrays():
    a = synthetic_symbol(1, 2, 0, 100)
    a.time[:] = 0
    a.close[:] = 0
    b = synthetic_symbol(1, 2, 0, 100)
    assert_bit_identical(b, reference_synthetic_symbol(2, 0, 100))


def test_squares_are_computed_exactly_as_the_scalar_power_even_next_to_a_rounding_tie():
    rng = np.random.default_rng(5)
    # An odd 27-bit significand squares to an exact tie between two doubles; libm's pow does not
    # always round those like x * x does (about a quarter differ with glibc).
    ties = (rng.integers(2**26, 2**27, 20_000) | 1).astype(np.float64) * 2.0**-27
    near = ties * (1 + rng.integers(-4, 5, ties.size) * 2.0**-52)
    spread = rng.standard_normal(50_000) * np.exp(rng.uniform(-60, 60, 50_000))
    special = np.array([0.0, -0.0, 1e-160, -1e-160, 5e-324, 1e160, 1e200, np.inf, -np.inf, np.nan, 1.0, -3.0])
    for x in (ties, -ties, near, spread, special):
        with np.errstate(over="ignore", invalid="ignore"):  # 1e200 ** 2 overflows, as it should
            want = np.array([v ** 2 for v in x])  # NumPy float64 scalars: the operation version 1 did
            got = synthetic._pow2(x.copy())
        assert got.tobytes() == want.tobytes()
