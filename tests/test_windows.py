"""windows.py: time-ordered splits with a horizon gap, train-only normalisation, lazy windows."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import SymbolData, prepare
from indicator_transformer.data.sources import synthetic_sources
from indicator_transformer.data.windows import (
    Normalisation,
    WindowDataset,
    collate_batch,
    fit_normalisation,
    make_splits,
    per_symbol_splits,
)

DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Five synthetic symbols prepared through a real cache (memory-mapped arrays)."""
    root = tmp_path_factory.mktemp("cache")
    cfg = FeatureConfig(window=16, horizon=1)
    result = prepare(synthetic_sources(5, 500, seed=8), cfg, FeatureCache(root).open(), show_progress=False)
    return result.symbols


def _in_memory(symbols: list[SymbolData]) -> list[SymbolData]:
    return [dataclasses.replace(s, features=np.array(s.features), label=np.array(s.label),
                                time=np.array(s.time)) for s in symbols]


def _staggered(symbols: list[SymbolData]) -> list[SymbolData]:
    """Symbols that start on different days and have different lengths, like a real universe."""
    out = []
    for i, s in enumerate(_in_memory(symbols)):
        cut = len(s.label) - 37 * i
        out.append(dataclasses.replace(s, features=s.features[:cut], label=s.label[:cut],
                                       time=s.time[:cut] + 23 * i * DAY))
    return out


@pytest.mark.parametrize("horizon", [1, 5])
def test_global_splits_are_in_time_order_with_a_gap_of_the_horizon(prepared, horizon):
    cfg = FeatureConfig(window=16, horizon=horizon, split="global")
    symbols = _staggered(prepared)
    splits = make_splits(symbols, cfg)
    L = cfg.window

    def end_bars(name):
        sp = splits[name]
        return [(s, t) for s, (lo, hi) in enumerate(zip(sp.starts, sp.stops, strict=True))
                for t in range(lo, hi)]

    times = {}
    label_times = {}
    for name in ("train", "val", "test"):
        bars = end_bars(name)
        assert bars, name
        for s, t in bars:
            assert t - L + 1 >= 0  # a full window behind
            assert t + horizon < len(symbols[s].label)  # a known label ahead
            assert np.isfinite(symbols[s].label[t])
        times[name] = [symbols[s].time[t] for s, t in bars]
        label_times[name] = [symbols[s].time[t + horizon] for s, t in bars]

    # Every train label is known before the first validation end bar of any symbol; same val/test.
    assert max(label_times["train"]) < min(times["val"])
    assert max(label_times["val"]) < min(times["test"])
    # Within each symbol, the gap between the last train end bar and the first val end bar is > h.
    for s in range(len(symbols)):
        tr, va, te = (splits[k] for k in ("train", "val", "test"))
        if tr.stops[s] > tr.starts[s] and va.stops[s] > va.starts[s]:
            assert va.starts[s] - (tr.stops[s] - 1) > horizon
        if va.stops[s] > va.starts[s] and te.stops[s] > te.starts[s]:
            assert te.starts[s] - (va.stops[s] - 1) > horizon
    n = {k: len(splits[k]) for k in splits}
    assert n["train"] > n["val"] > 0 and n["train"] > n["test"] > 0


def test_splits_of_symbols_too_short_for_a_window_are_empty_not_an_error(prepared):
    tiny = [dataclasses.replace(s, features=s.features[:10], label=s.label[:10], time=s.time[:10])
            for s in _in_memory(prepared)]
    splits = make_splits(tiny, FeatureConfig(window=16))
    assert all(len(sp) == 0 for sp in splits.values())


def _test_period_start(symbols, cfg):
    return make_splits(symbols, cfg)["test"].starts


def test_normalisation_uses_training_rows_only(prepared):
    cfg = FeatureConfig(window=16, horizon=1)
    symbols = _in_memory(prepared)
    splits = make_splits(symbols, cfg)
    base = fit_normalisation(symbols, splits["train"], cfg.window)

    # Wild changes to every feature row and label of the validation and test periods change nothing.
    changed = _in_memory(prepared)
    for s, start in zip(changed, splits["val"].starts, strict=True):
        s.features[start:] = 1e6
        s.label[start:] = 5.0
    again = fit_normalisation(changed, splits["train"], cfg.window)
    np.testing.assert_array_equal(again.mean, base.mean)
    np.testing.assert_array_equal(again.std, base.std)
    assert (again.label_mean, again.label_std) == (base.label_mean, base.label_std)

    # ... while a change to one training row does change it (the test can fail).
    touched = _in_memory(prepared)
    touched[0].features[splits["train"].starts[0]] += 100.0
    assert not np.array_equal(fit_normalisation(touched, splits["train"], cfg.window).mean, base.mean)


def test_normalisation_is_the_mean_and_std_of_the_rows_training_windows_read(prepared):
    cfg = FeatureConfig(window=16)
    splits = make_splits(prepared, cfg)
    norm = fit_normalisation(prepared, splits["train"], cfg.window)
    tr = splits["train"]
    rows = np.concatenate([np.asarray(s.features[lo - cfg.window + 1:hi])
                           for s, lo, hi in zip(prepared, tr.starts, tr.stops, strict=True)])
    np.testing.assert_allclose(norm.mean, rows.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.std, rows.astype(np.float64).std(0), rtol=1e-4, atol=1e-6)
    labels = np.concatenate([np.asarray(s.label[lo:hi], np.float64)
                             for s, lo, hi in zip(prepared, tr.starts, tr.stops, strict=True)])
    assert norm.label_mean == pytest.approx(labels.mean(), rel=1e-6)
    assert norm.label_std == pytest.approx(labels.std(), rel=1e-6)
    back = Normalisation.from_dict(norm.to_dict())
    assert (back.label_mean, back.label_std) == (norm.label_mean, norm.label_std)
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)


def _dataset(symbols, split="train", window=16, horizon=1):
    cfg = FeatureConfig(window=window, horizon=horizon)
    splits = make_splits(symbols, cfg)
    norm = fit_normalisation(symbols, splits["train"], window)
    return WindowDataset(symbols, splits[split], window, norm), norm


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_window_equals_the_direct_slice_normalised(prepared, split):
    ds, norm = _dataset(prepared, split)
    rng = np.random.default_rng(0)
    for i in [0, len(ds) - 1, *rng.integers(0, len(ds), 30)]:
        s, t = ds.locate(int(i))
        x, y = ds[int(i)]
        raw = np.asarray(prepared[s].features[t - 15:t + 1], np.float32)
        expected = np.clip((raw - norm.mean) / norm.std, -10, 10)
        assert x.shape == (16, raw.shape[1]) and x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
        # The target is the label standardised with the training labels' mean and std.
        assert y.item() == pytest.approx((float(prepared[s].label[t]) - norm.label_mean) / norm.label_std,
                                         rel=1e-5, abs=1e-6)


def test_sample_indices_cover_each_symbols_range_in_order(prepared):
    ds, _ = _dataset(prepared, "val")
    sp = ds.split
    expected = [(s, t) for s in range(len(prepared)) for t in range(sp.starts[s], sp.stops[s])]
    assert [ds.locate(i) for i in range(len(ds))] == expected
    with pytest.raises(IndexError):
        ds.locate(len(ds))
    with pytest.raises(IndexError):
        ds.locate(-1)


def test_getitems_equals_stacking_getitem(prepared):
    ds, _ = _dataset(prepared, "train")
    indices = [5, 0, len(ds) - 1, 77, 5, 300]
    xb, yb = ds.__getitems__(indices)
    xs = torch.stack([ds[i][0] for i in indices])
    ys = torch.stack([ds[i][1] for i in indices])
    assert xb.shape == (len(indices), 16, prepared[0].features.shape[1])
    torch.testing.assert_close(xb, xs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(yb, ys)
    assert collate_batch((xb, yb)) == (xb, yb)


def test_extreme_values_are_clipped_to_ten_standard_deviations(prepared):
    symbols = _in_memory(prepared)
    ds, _ = _dataset(symbols, "test")
    s, t = ds.locate(0)
    symbols[s].features[t] = 1e9
    x, _ = ds[0]
    assert float(x.max()) == WindowDataset.CLIP
    xb, _ = ds.__getitems__([0])
    assert float(xb.max()) == WindowDataset.CLIP


def test_the_dataset_holds_memory_maps_and_no_per_sample_array(prepared):
    ds, _ = _dataset(prepared, "train")
    assert all(isinstance(s.features, np.memmap) for s in ds.symbols)
    assert all(isinstance(s.label, np.memmap) for s in ds.symbols)
    own = sum(v.nbytes if isinstance(v, np.ndarray) else sys.getsizeof(v)
              for k, v in vars(ds).items() if k != "symbols")
    one_copy = len(ds) * ds.window * len(ds.mean) * 4  # what materialising (N, L, F) would cost
    assert own < 4096 < one_copy // 100
    # The dataset's own memory does not grow with the number of samples: a longer window
    # (fewer samples) or a longer split (more samples) keeps the same bookkeeping size.
    val, _ = _dataset(prepared, "val")
    own_val = sum(v.nbytes for k, v in vars(val).items() if isinstance(v, np.ndarray))
    own_train = sum(v.nbytes for k, v in vars(ds).items() if isinstance(v, np.ndarray))
    assert len(ds) > 3 * len(val) and own_train == own_val


def test_the_realised_returns_scored_are_the_stored_labels_so_an_unchanged_price_stays_zero() -> None:
    """Tick-rounded prices leave many returns exactly 0; turned into standardised float32 labels
    and back they became moves of ~1e-12, and the hit rate and 'always long' counted them."""
    rng = np.random.default_rng(3)
    symbols = []
    for k in range(2):
        label = np.round(rng.normal(0, 0.01, 300) / 0.0025) * 0.0025  # about 15% exactly 0
        symbols.append(SymbolData(f"S{k}", f"k{k}", rng.normal(size=(300, 3)).astype(np.float32),
                                  label.astype(np.float32), np.arange(300, dtype=np.int64) * 86_400 * 10**9))
    splits = per_symbol_splits(symbols, FeatureConfig(features=["ret_1"], window=5, horizon=1))
    norm = fit_normalisation(symbols, splits["train"], 5, per_symbol=True)
    ds = WindowDataset(symbols, splits["test"], 5, norm)
    stored = np.concatenate([np.asarray(s.label[lo:hi], np.float64)
                             for s, lo, hi in zip(symbols, splits["test"].starts, splits["test"].stops,
                                                  strict=True)])
    assert np.array_equal(ds.labels(), stored)
    assert (stored == 0).mean() > 0.1 and np.array_equal(ds.labels() == 0, stored == 0)
    round_trip = ds.to_returns(np.concatenate([ds[i][1].numpy()[None] for i in range(len(ds))]))
    assert (round_trip[stored == 0] != 0).any()  # what the report used to score against
