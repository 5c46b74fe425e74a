"""Walk-forward folds as date cuts of ordinary runs: contiguous test periods that tile the end of
the calendar, every window tested once, and no fold's training label inside its test period or
later - checked on the real time stamps of prepared data (the synthetic market through the cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indicator_transformer.config import FeatureConfig
from indicator_transformer.cutoffs import parse_cuts
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import prepare
from indicator_transformer.data.sources import synthetic_sources
from indicator_transformer.data.windows import choose_splits, require_windows
from indicator_transformer.errors import UserError
from indicator_transformer.experiment.folds import Period, end_calendar, parse_period, plan_folds

H = 5  # a horizon above 1, so that the purge gaps are visible


@pytest.fixture(scope="module")
def symbols(tmp_path_factory: pytest.TempPathFactory) -> list:
    cache = FeatureCache(Path(tmp_path_factory.mktemp("cache"))).open()
    data = prepare(synthetic_sources(4, 1500, seed=3), FeatureConfig(window=16, horizon=H), cache,
                   show_progress=False)
    return data.symbols


def _cfg(**cuts) -> FeatureConfig:
    c = FeatureConfig(window=16, horizon=H, **cuts)
    c.validate()
    return c


def _ns(text: str | None) -> int | None:
    return None if text is None else parse_cuts(text, "x")["*"]


@pytest.mark.parametrize("kind", ["expanding", "rolling"])
def test_fold_test_periods_tile_the_calendar_and_no_training_label_reaches_its_test_period(
        symbols: list, kind: str) -> None:
    folds = plan_folds(symbols, window=16, horizon=H, folds=4, test_bars=150, kind=kind,
                       train_bars=600 if kind == "rolling" else None)
    assert [f.index for f in folds] == [0, 1, 2, 3] and folds[-1].test_end is None
    for a, b in zip(folds, folds[1:], strict=False):
        assert a.test_end == b.test_start  # contiguous, non-overlapping
    tested: dict[str, list[int]] = {s.symbol: [] for s in symbols}
    for f in folds:
        sp = choose_splits(symbols, _cfg(**f.cuts())).splits
        require_windows(sp, _cfg(**f.cuts()))
        start, end = _ns(f.test_start), _ns(f.test_end)
        for i, s in enumerate(symbols):
            t = np.asarray(s.time)
            train = np.arange(int(sp["train"].starts[i]), int(sp["train"].stops[i]))
            val = np.arange(int(sp["val"].starts[i]), int(sp["val"].stops[i]))
            test = np.arange(int(sp["test"].starts[i]), int(sp["test"].stops[i]))
            assert len(train) and len(val) and len(test)
            # A label of end bar e is realised at bar e + h: training's and validation's all before
            # the test period; training's also before validation (the purge gaps).
            assert t[train[-1] + H] < t[val[0]] and t[val[-1] + H] < start
            assert t[test[0]] >= start and (end is None or t[test[-1]] < end)
            if kind == "rolling":
                assert t[train[0]] >= _ns(f.train_start)
            tested[s.symbol].extend(test.tolist())
    cal_last = {s.symbol: len(s.time) - H for s in symbols}
    for name, bars in tested.items():  # every end bar of the tested span exactly once
        assert bars == list(range(bars[0], cal_last[name]))
    if kind == "rolling":  # a fixed-length window: 600 calendar end bars before each test period
        cal = end_calendar(symbols, 16, H)
        for f in folds:
            i = int(np.searchsorted(cal, _ns(f.test_start)))
            assert _ns(f.train_start) == int(cal[i - 600])


def test_test_periods_of_a_calendar_length_count_back_from_the_last_bar(symbols: list) -> None:
    six = parse_period("6m", "--test-period")
    folds = plan_folds(symbols, window=16, horizon=H, folds=3, test_period=six)
    cal = end_calendar(symbols, 16, H)
    last = np.datetime64(int(cal[-1]), "ns")
    starts = [np.datetime64(_ns(f.test_start), "ns") for f in folds]
    for k, s in enumerate(starts):  # the first bar after the point 6, 12, 18 months back
        back = np.datetime64(Period(6 * (3 - k), "m").before(int(cal[-1])), "ns")
        assert s > back and cal[np.searchsorted(cal, int(s.astype(np.int64))) - 1] <= back.astype(np.int64)
    assert starts[0] < starts[1] < starts[2] <= last


@pytest.mark.parametrize(("kw", "message"), [
    ({"folds": 4, "test_bars": 400}, r"--folds 4 x --test-bars 400 = 1,600 test bars"),
    ({"folds": 2}, "give one of --test-bars N and --test-period P"),
    ({"folds": 2, "test_bars": 10, "test_period": Period(1, "y")}, "give one of"),
    ({"folds": 2, "test_bars": 10, "kind": "rolling"}, "needs one of --train-bars N and --train-period P"),
    ({"folds": 2, "test_bars": 10, "train_bars": 50}, "add --window-kind rolling"),
    ({"folds": 2, "test_bars": 100, "kind": "rolling", "train_bars": 1400}, "--train-bars 1,400: fold 1"),
    ({"folds": 2, "test_bars": 100, "kind": "sliding"}, "--window-kind 'sliding'"),
    ({"folds": 3, "test_period": Period(5, "y")}, "--folds 3 x --test-period 5y does not fit"),
    ({"folds": 0, "test_bars": 10}, "--folds 0: expected 1 to 1,000"),
])
def test_folds_the_data_cannot_hold_are_refused_naming_the_flags(symbols: list, kw: dict,
                                                                  message: str) -> None:
    args = {"kind": "expanding", **kw}
    with pytest.raises(UserError, match=message):
        plan_folds(symbols, window=16, horizon=H, **args)


@pytest.mark.parametrize("text", ["1.5y", "y", "0d", "-3m", "3 months", "", "12h"])
def test_a_bad_period_names_the_flag_and_the_forms(text: str) -> None:
    with pytest.raises(UserError, match=r"--test-period .*expected a whole number and a unit"):
        parse_period(text, "--test-period")


def test_month_arithmetic_clamps_to_the_months_last_day() -> None:
    t = int(np.datetime64("2020-03-31T00:00:00", "ns").astype(np.int64))
    assert np.datetime64(Period(1, "m").before(t), "ns") == np.datetime64("2020-02-29T00:00:00")
    assert np.datetime64(Period(1, "y").before(t), "ns") == np.datetime64("2019-03-31T00:00:00")
    assert np.datetime64(Period(2, "w").before(t), "ns") == np.datetime64("2020-03-17T00:00:00")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Daily files covering 2004-2013 beside hourly ones covering 2017 (tests/mixed_market.py)."""
    from mixed_market import write_mixed_market

    from indicator_transformer.data.folder import discover_files

    root = tmp_path_factory.mktemp("mixed")
    return prepare(discover_files(write_mixed_market(root / "data")), FeatureConfig(window=16, horizon=H),
                   FeatureCache(root / "cache").open(), show_progress=False).symbols


@pytest.mark.parametrize("kind", ["expanding", "rolling"])
def test_files_covering_different_years_get_their_folds_on_their_own_bars(mixed: list, kind: str) -> None:
    """On the common calendar the daily files (ending 2013) would have no test window in any fold
    (2017): auto places each symbol's folds on its own bars, as per-symbol cuts."""
    from indicator_transformer.cutoffs import cut_for
    from indicator_transformer.experiment.folds import plan

    common = plan(mixed, window=16, horizon=H, folds=3, test_bars=100, calendar="common")
    assert common.calendar == "common"
    placed = plan(mixed, window=16, horizon=H, folds=3, test_bars=100, kind=kind,
                  train_bars=800 if kind == "rolling" else None)
    assert placed.calendar == "per-symbol" and placed.reason.startswith("auto: on the common calendar ")
    assert placed.reason.split(" would have no test window")[0].rsplit(" ", 1)[1] in {"SPX", "AAPL"}
    # The daily files are tested years before the hourly ones train: said (found by the attack).
    assert placed.warning is not None and "cross-symbol look-ahead" in placed.warning
    # On the common calendar some symbol is left untested: said too (found by the second attack).
    assert common.warning is not None and "would have no test window" in common.warning
    folds = placed.folds
    tested: dict[str, list[int]] = {s.symbol: [] for s in mixed}
    for f in folds:
        cfg = _cfg(**f.cuts())
        sp = choose_splits(mixed, cfg).splits
        require_windows(sp, cfg)
        starts = parse_cuts(f.test_start, "test_start")
        ends = parse_cuts(f.test_end, "test_end") if f.test_end else None
        for i, s in enumerate(mixed):
            t = np.asarray(s.time)
            start = cut_for(starts, s.symbol, "test_start")
            train = np.arange(int(sp["train"].starts[i]), int(sp["train"].stops[i]))
            val = np.arange(int(sp["val"].starts[i]), int(sp["val"].stops[i]))
            test = np.arange(int(sp["test"].starts[i]), int(sp["test"].stops[i]))
            assert len(train) and len(val) and len(test) == 100, (s.symbol, f)  # every symbol, every fold
            assert t[train[-1] + H] < t[val[0]] and t[val[-1] + H] < start <= t[test[0]]
            if ends is not None:
                assert t[test[-1]] < cut_for(ends, s.symbol, "test_end")
            if kind == "rolling":
                first = cut_for(parse_cuts(f.train_start, "train_start"), s.symbol, "train_start")
                assert t[train[0]] >= first
            tested[s.symbol].extend(test.tolist())
    for s in mixed:  # each symbol's last 300 labelled end bars, each tested once
        assert tested[s.symbol] == list(range(len(s.time) - H - 300, len(s.time) - H)), s.symbol
    refused = pytest.raises(UserError, match="EURUSD's calendar has|USDJPY's calendar has|"
                                             "SPX's calendar has|AAPL's calendar has")
    with refused:
        plan(mixed, window=16, horizon=H, folds=3, test_bars=900, calendar="per-symbol")
