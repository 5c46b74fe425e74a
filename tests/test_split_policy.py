"""Split policy, per-symbol normalisation and bar frequency on files from different markets.

The fixture (tests/mixed_market.py) reproduces the class of failure a user met: daily files of
2004-2013 beside hourly files of 2017, volatilities 10-20x apart. Global cut-offs put whole assets
into one split, and one pooled label scale made validation targets ~100x smaller than training
ones; the defaults must see that, choose per-symbol splits and statistics, and say so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mixed_market import mixed_market_frames, write_mixed_market

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data import frequency
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.folder import discover_files
from indicator_transformer.data.prepare import SymbolData, prepare
from indicator_transformer.data.sources import synthetic_sources
from indicator_transformer.data.windows import (
    MIN_OWN_ROWS,
    Normalisation,
    WindowDataset,
    choose_splits,
    fit_normalisation,
    per_symbol_splits,
    split_table,
)
from indicator_transformer.training import checkpoint as ckpt

CFG = FeatureConfig(window=16, horizon=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[SymbolData]:
    root = tmp_path_factory.mktemp("mixed")
    folder = write_mixed_market(root / "data")
    return prepare(discover_files(folder), CFG, FeatureCache(root / "cache").open(),
                   show_progress=False).symbols


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> list[SymbolData]:
    """Symbols sharing one calendar (the built-in market)."""
    return prepare(synthetic_sources(4, 600, seed=5), CFG, FeatureCache(tmp_path_factory.mktemp("c")).open(),
                   show_progress=False).symbols


def _holders(splits, symbols):
    return {k: {symbols[i].symbol for i in range(len(symbols)) if splits[k].counts[i] > 0} for k in splits}


def test_auto_splits_files_of_different_years_per_symbol_and_names_the_symbol_that_decided(mixed):
    choice = choose_splits(mixed, CFG)
    assert choice.policy == "per-symbol"
    assert choice.reason.startswith("auto: global time cut-offs would leave ")
    assert any(s.symbol in choice.reason for s in mixed)
    # Every symbol now trains, validates and tests on its own history.
    assert all(h == {s.symbol for s in mixed} for h in _holders(choice.splits, mixed).values())


def test_global_cut_offs_on_files_of_different_years_hold_different_assets_and_the_table_warns(mixed):
    choice = choose_splits(mixed, dataclasses.replace(CFG, split="global"))
    assert choice.policy == "global"
    held = _holders(choice.splits, mixed)
    assert held["train"] != held["test"]
    _, warnings = split_table(mixed, choice.splits)
    assert any("it says nothing about AAPL, SPX" in w for w in warnings), warnings


def test_auto_keeps_global_cut_offs_for_a_panel_sharing_one_calendar(panel):
    choice = choose_splits(panel, CFG)
    assert choice.policy == "global"
    lines, warnings = split_table(panel, choice.splits)
    assert warnings == []
    assert [ln.split()[0] for ln in lines[1:]] == ["train", "val", "test"]
    assert all(int(ln.split()[1]) == len(panel) for ln in lines[1:])


def test_per_symbol_splits_are_time_ordered_with_the_horizon_gap_within_each_symbol(mixed):
    for h in (1, 5):
        cfg = dataclasses.replace(CFG, horizon=h)
        sp = per_symbol_splits(mixed, cfg)
        for i, s in enumerate(mixed):
            tr, va, te = (sp[k] for k in ("train", "val", "test"))
            assert tr.starts[i] == cfg.window - 1
            assert va.starts[i] - (tr.stops[i] - 1) > h   # the last train label is known before val
            assert te.starts[i] - (va.stops[i] - 1) > h
            assert te.stops[i] == len(s.label) - h
            n = te.stops[i] - tr.starts[i]
            assert abs(tr.counts[i] - 0.70 * n) <= h + 1


def test_pooled_label_scale_reproduces_the_failure_and_per_symbol_scale_removes_it(mixed):
    """The user's numbers: train loss ~1 but validation ~0.006, because the validation targets
    were hourly FX scaled by a daily equity's volatility. Per-symbol statistics give every split
    targets of unit scale."""
    def val_target_variance(split: str, per_symbol: bool) -> float:
        choice = choose_splits(mixed, dataclasses.replace(CFG, split=split))
        norm = fit_normalisation(mixed, choice.splits["train"], CFG.window, per_symbol=per_symbol)
        ds = WindowDataset(mixed, choice.splits["val"], CFG.window, norm)
        _, y = ds.__getitems__(list(range(len(ds))))
        return float(y.double().var())

    assert val_target_variance("global", per_symbol=False) < 0.05
    assert 0.5 < val_target_variance("auto", per_symbol=True) < 2.0


def test_per_symbol_statistics_are_each_symbols_training_rows_only(mixed):
    sp = per_symbol_splits(mixed, CFG)
    norm = fit_normalisation(mixed, sp["train"], CFG.window, per_symbol=True)
    assert norm.symbols == tuple(s.symbol for s in mixed)
    for i, s in enumerate(mixed):
        lo, hi = sp["train"].starts[i], sp["train"].stops[i]
        rows = np.asarray(s.features[lo - CFG.window + 1:hi], np.float64)
        np.testing.assert_allclose(norm.sym_mean[i], rows.mean(0), rtol=1e-4, atol=1e-5)
        y = np.asarray(s.label[lo:hi], np.float64)
        assert norm.sym_label_mean[i] == pytest.approx(y.mean(), rel=1e-9)
        assert norm.sym_label_std[i] == pytest.approx(y.std(), rel=1e-9)
    # Volatilities 10-20x apart are what the per-symbol scale absorbs.
    vols = dict(zip(norm.symbols, norm.sym_label_std, strict=True))
    assert vols["SPX"] / vols["EURUSD"] > 5
    # A change after the training rows changes nothing.
    changed = [dataclasses.replace(s, features=np.array(s.features), label=np.array(s.label)) for s in mixed]
    for i, s in enumerate(changed):
        s.features[sp["val"].starts[i]:] = 1e6
        s.label[sp["val"].starts[i]:] = 3.0
    again = fit_normalisation(changed, sp["train"], CFG.window, per_symbol=True)
    np.testing.assert_array_equal(again.sym_mean, norm.sym_mean)
    np.testing.assert_array_equal(again.sym_label_std, norm.sym_label_std)


def test_predictions_go_back_to_returns_with_each_symbols_own_scale(mixed):
    sp = per_symbol_splits(mixed, CFG)
    norm = fit_normalisation(mixed, sp["train"], CFG.window, per_symbol=True)
    ds = WindowDataset(mixed, sp["test"], CFG.window, norm)
    _, y = ds.__getitems__(list(range(len(ds))))
    realised = np.concatenate([np.asarray(s.label[a:b], np.float64) for s, a, b in
                               zip(mixed, sp["test"].starts, sp["test"].stops, strict=True)])
    np.testing.assert_allclose(ds.to_returns(y.numpy()), realised, rtol=1e-5, atol=1e-7)
    # ... also for a slice that starts mid-split (batched prediction).
    np.testing.assert_allclose(ds.to_returns(y.numpy()[100:300], start=100), realised[100:300], rtol=1e-5,
                               atol=1e-7)


def test_a_symbol_without_statistics_of_its_own_uses_the_pooled_ones(mixed):
    sp = per_symbol_splits(mixed, CFG)
    rows = np.array([MIN_OWN_ROWS - 1, 500, 500, 500])
    short = dataclasses.replace(sp["train"], stops=sp["train"].starts + rows)
    norm = fit_normalisation(mixed, short, CFG.window, per_symbol=True)
    assert mixed[0].symbol not in norm.symbols and len(norm.symbols) == 3
    mean, std, lm, ls = norm.scales([mixed[0].symbol, "NEVER_SEEN", mixed[1].symbol])
    np.testing.assert_array_equal(mean[0], norm.mean)
    np.testing.assert_array_equal(mean[1], norm.mean)
    assert (lm[1], ls[1]) == (norm.label_mean, norm.label_std)
    assert ls[2] == norm.sym_label_std[norm.symbols.index(mixed[1].symbol)]


def test_per_symbol_statistics_round_trip_through_a_checkpoint_dict_and_are_validated(mixed):
    sp = per_symbol_splits(mixed, CFG)
    norm = fit_normalisation(mixed, sp["train"], CFG.window, per_symbol=True)
    d = norm.to_dict()
    back = Normalisation.from_dict(d)
    assert back.symbols == norm.symbols
    np.testing.assert_array_equal(back.sym_std, norm.sym_std)
    np.testing.assert_array_equal(back.sym_label_mean, norm.sym_label_mean)
    assert ckpt._check_normalisation(d) == d["mean"].shape[0]
    for key, bad in (("symbols", ["A", "A", "B", "C"]), ("sym_std", d["sym_std"] * 0),
                     ("sym_label_mean", d["sym_label_mean"][:2]),
                     # Finite but absurd: a hand edit that would overflow or vanish every figure.
                     ("sym_label_std", d["sym_label_std"] * 0 + 1e300),
                     ("sym_label_std", d["sym_label_std"] * 0 + 1e-300),
                     ("sym_std", d["sym_std"] * 0 + 1e-45), ("sym_mean", d["sym_mean"] + 1e12),
                     ("label_std", d["label_std"] * 0 + 1e300), ("std", d["std"] * 0 + 1e20)):
        with pytest.raises(ckpt._Invalid, match=f"normalisation.{key}"):
            ckpt._check_normalisation({**d, key: bad})


def test_bar_frequency_is_read_per_file_and_a_mixed_folder_is_warned_about(mixed, panel):
    groups = frequency.frequencies(mixed)
    assert groups == {"1d": ["AAPL", "SPX"], "1h": ["EURUSD", "USDJPY"]} or \
        groups == {"1h": ["EURUSD", "USDJPY"], "1d": ["AAPL", "SPX"]}
    warning = frequency.mixed_warning(groups, horizon=5)
    assert warning and "1d" in warning and "1h" in warning and "5 bar" in warning
    assert frequency.mixed_warning(frequency.frequencies(panel), 5) is None


@pytest.mark.parametrize(("step", "name"), [(60 * 10**9, "1min"), (5 * 60 * 10**9, "5min"),
                                            (3600 * 10**9, "1h"), (86_400 * 10**9, "1d"),
                                            (7 * 86_400 * 10**9, "1w"), (31 * 86_400 * 10**9, "1mo"),
                                            (10**9 * 60 * 7, "7min"), (None, "?")])
def test_a_median_step_is_named_as_the_nearest_usual_bar_size(step, name):
    assert frequency.step_name(step) == name


def test_a_run_without_test_windows_is_refused_before_training(tmp_path) -> None:
    import subprocess
    import sys

    from conftest import REPO_ROOT, child_env, default_sigint

    r = subprocess.run([sys.executable, "train_indicator_transformer.py", "--symbols", "2", "--bars", "400",
                        "--train-frac", "0.5", "--val-frac", "0.4999", "--no-progress",
                        "--models-dir", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")],
                       cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
                       preexec_fn=default_sigint)
    assert r.returncode == 2, r.stderr
    assert "error: the test split has no windows" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("*.pth"))


def test_a_symbol_whose_price_never_moves_takes_the_pooled_label_scale_and_the_table_says_so(tmp_path):
    """A flat file's training returns are all 0: its own std (or the old fallback 1.0) scaled the
    model's output into returns thousands of times too large (MSE/mean 4105 on that symbol)."""
    frames = mixed_market_frames()
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("SPX", "AAPL"):
        frames[name].to_csv(folder / f"{name}.csv", index=False)
    flat = frames["SPX"].copy()
    flat[["Open", "High", "Low", "Close"]] = 100.0
    flat.to_csv(folder / "FLAT.csv", index=False)
    symbols = prepare(discover_files(folder), CFG, FeatureCache(tmp_path / "cache").open(),
                      show_progress=False).symbols
    sp = choose_splits(symbols, CFG).splits
    norm = fit_normalisation(symbols, sp["train"], CFG.window, per_symbol=True)
    assert set(norm.symbols) == {"SPX", "AAPL"}
    _, _, lm, ls = norm.scales(["FLAT", "SPX"])
    assert ls[0] == norm.label_std and 0 < ls[0] < 1   # pooled returns' scale, not 1.0
    assert ls[1] != norm.label_std
    _, warnings = split_table(symbols, sp)
    assert any("never change" in w and "FLAT" in w for w in warnings), warnings
