"""Every configuration field is classified: it changes the computed features (so it is part of the
cache key) or it does not (and the table says why). A new field fails the first test until it is
classified here, so a setting can never again change what is computed without changing the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
from conftest import ohlcv_frame

from indicator_transformer.config import DataConfig, FeatureConfig
from indicator_transformer.data.prepare import expected_keys
from indicator_transformer.data.synthetic import synthetic_symbol


class Setting(NamedTuple):
    keyed: bool          # does changing it change what preparation computes for a symbol?
    why: str
    base: dict[str, Any]     # overrides of the field's config for the reference run
    changed: dict[str, Any]  # the same, with this field changed


DATA_A, DATA_B = "<folder A>", "<folder B>"  # two real folders of the same symbols, other bytes
PANEL_A, PANEL_B = "<panel A>", "<panel B>"  # two real panel files of the same symbols, other rows

SETTINGS: dict[tuple[type, str], Setting] = {
    (DataConfig, "data_dir"): Setting(True, "the input files: keyed by the sha256 of their bytes",
                                      {"data_dir": DATA_A}, {"data_dir": DATA_B}),
    (DataConfig, "data_file"): Setting(True, "a panel file: each symbol keyed by the sha256 of its own rows",
                                       {"data_file": PANEL_A}, {"data_file": PANEL_B}),
    (DataConfig, "symbols"): Setting(False, "how many synthetic symbols exist; each symbol's own bars "
                                            "do not depend on it", {"symbols": 2}, {"symbols": 3}),
    (DataConfig, "bars"): Setting(True, "the synthetic bars: part of the synthetic spec (the identity)",
                                  {"bars": 300}, {"bars": 301}),
    (DataConfig, "data_seed"): Setting(True, "the synthetic bars: part of the synthetic spec",
                                       {"data_seed": 7}, {"data_seed": 8}),
    (DataConfig, "skip_bad_files"): Setting(False, "which files are used, not what is computed from one",
                                            {}, {"skip_bad_files": True}),
    (DataConfig, "use_adj_close"): Setting(True, "Adj Close replaces Close (and scales open/high/low)",
                                           {"data_dir": DATA_A}, {"data_dir": DATA_A, "use_adj_close": True}),
    (DataConfig, "cache_dir"): Setting(False, "where entries are stored, not what they hold",
                                       {}, {"cache_dir": "elsewhere"}),
    (DataConfig, "prep_workers"): Setting(False, "thread count; results are identical (test_prepare)",
                                          {}, {"prep_workers": 4}),
    (FeatureConfig, "features"): Setting(True, "the feature columns", {},
                                         {"features": list(FeatureConfig().features)[:-1]}),
    (FeatureConfig, "custom_features"): Setting(
        True, "a declared feature's function, parameters, inputs, output and transform (those in use)",
        {"features": ["ret_1", "rsi_x"], "custom_features": [
            {"name": "rsi_x", "fn": "RSI", "params": {"timeperiod": 7}, "transform": "osc100"}]},
        {"features": ["ret_1", "rsi_x"], "custom_features": [
            {"name": "rsi_x", "fn": "RSI", "params": {"timeperiod": 9}, "transform": "osc100"}]}),
    (FeatureConfig, "horizon"): Setting(True, "the label's forward horizon", {"horizon": 1}, {"horizon": 2}),
    (FeatureConfig, "window"): Setting(False, "windows are cut from the cached arrays; the minimum row "
                                              "count is checked on every hit too", {"window": 8},
                                       {"window": 16}),
    (FeatureConfig, "train_frac"): Setting(False, "the split is made from the cached arrays",
                                           {}, {"train_frac": 0.6}),
    (FeatureConfig, "val_frac"): Setting(False, "the split is made from the cached arrays",
                                         {}, {"val_frac": 0.2}),
    (FeatureConfig, "split"): Setting(False, "the split is made from the cached arrays",
                                      {}, {"split": "per-symbol"}),
    (FeatureConfig, "normalise"): Setting(False, "statistics are fitted on the cached arrays after the split",
                                          {}, {"normalise": "global"}),
    (FeatureConfig, "val_start"): Setting(False, "date cuts split the cached arrays",
                                          {"test_start": "2004-06-01"},
                                          {"test_start": "2004-06-01", "val_start": "2004-03-01"}),
    (FeatureConfig, "test_start"): Setting(False, "date cuts split the cached arrays",
                                           {}, {"test_start": "2004-06-01"}),
    (FeatureConfig, "train_start"): Setting(False, "date cuts split the cached arrays",
                                            {"test_start": "2004-06-01"},
                                            {"test_start": "2004-06-01", "train_start": "2003-06-01"}),
    (FeatureConfig, "test_end"): Setting(False, "date cuts split the cached arrays",
                                         {"test_start": "2004-06-01"},
                                         {"test_start": "2004-06-01", "test_end": "2004-09-01"}),
}


def test_every_data_and_feature_config_field_is_classified_as_keyed_or_not():
    fields = {(cls, f.name) for cls in (DataConfig, FeatureConfig) for f in dataclasses.fields(cls)}
    unclassified = sorted(f"{cls.__name__}.{name}" for cls, name in fields - set(SETTINGS))
    stale = sorted(f"{cls.__name__}.{name}" for cls, name in set(SETTINGS) - fields)
    assert not unclassified, (f"classify {unclassified} in SETTINGS: does it change the computed "
                              f"features (then add it to prepare.feature_settings) or not (say why)?")
    assert not stale, f"{stale} no longer exist: remove them from SETTINGS"


def _data_folder(path: Path, seed: int) -> str:
    """Two symbols with an Adj Close column (so that --use-adj-close has something to change)."""
    path.mkdir()
    for i in range(2):
        x = synthetic_symbol(1, seed, i, 300)
        df = ohlcv_frame(x)
        df["Adj Close"] = x.close * 0.98
        df.to_csv(path / f"S{i}.csv", index=False)
    return str(path)


def _panel_file(path: Path, seed: int) -> str:
    """The symbols of _data_folder in one long-format CSV file with a Symbol column."""
    frames = [ohlcv_frame(synthetic_symbol(1, seed, i, 300)).assign(Symbol=f"S{i}") for i in range(2)]
    pd.concat(frames).to_csv(path, index=False)
    return str(path)


def _configs(overrides: dict[str, Any], folders: dict[str, str]) -> tuple[DataConfig, FeatureConfig]:
    data = {"symbols": 2, "bars": 300}
    feats: dict[str, Any] = {"window": 8}
    for name, value in overrides.items():
        value = folders.get(value, value) if isinstance(value, str) else value
        (data if name in {f.name for f in dataclasses.fields(DataConfig)} else feats)[name] = value
    return DataConfig(**data), FeatureConfig(**feats)


@pytest.mark.parametrize("field", sorted(SETTINGS, key=lambda k: (k[0].__name__, k[1])),
                         ids=lambda k: f"{k[0].__name__}.{k[1]}")
def test_a_keyed_setting_changes_every_key_and_another_changes_none(tmp_path, field):
    setting = SETTINGS[field]
    folders = {DATA_A: _data_folder(tmp_path / "a", seed=1), DATA_B: _data_folder(tmp_path / "b", seed=2),
               PANEL_A: _panel_file(tmp_path / "a.csv", seed=1),
               PANEL_B: _panel_file(tmp_path / "b.csv", seed=2)}
    before = expected_keys(*_configs(setting.base, folders))
    after = expected_keys(*_configs(setting.changed, folders))
    common = sorted(set(before) & set(after))
    assert common, "the two configurations share no symbol: nothing to compare"
    changed = [s for s in common if before[s] != after[s]]
    if setting.keyed:
        assert changed == common, f"{field[1]} changes what is computed but not the cache key"
    else:
        assert changed == [], f"{field[1]} ({setting.why}) needlessly changes the cache key"

