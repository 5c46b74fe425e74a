"""Declared features: any TA-Lib function, checked with an error naming the key and the feature,
causal, scale-free, part of the cache key, and trained through the real command line."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, child_env, default_sigint

from indicator_transformer.config import Config, ConfigError, DataConfig, FeatureConfig, build_config
from indicator_transformer.data.features import (
    compute_features,
    declare,
    feature_columns,
    registry,
    required_columns,
    warmup_bars,
)
from indicator_transformer.data.prepare import expected_keys
from indicator_transformer.data.synthetic import synthetic_symbol

RSI7 = {"name": "rsi_7", "fn": "RSI", "params": {"timeperiod": 7}, "inputs": ["close"], "transform": "osc100"}
DECLARED = [
    RSI7,
    {"name": "macd_h", "fn": "MACD", "output": "macdhist", "transform": "div_close"},
    {"name": "sma_gap", "fn": "sma", "params": {"timeperiod": 10}, "transform": "ratio_close"},
    {"name": "obv_z", "fn": "OBV", "inputs": ["close", "volume"], "transform": "zscore", "window": 30},
    {"name": "ema_chg", "fn": "EMA", "params": {"timeperiod": 5}, "transform": "log_change"},
    {"name": "doji", "fn": "CDLDOJI", "transform": "pct"},
    {"name": "corr_hl", "fn": "CORREL", "inputs": ["high", "low"], "transform": "none"},
]
NAMES = [d["name"] for d in DECLARED]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("declaration", "needles"), [
    ({"name": "x", "fn": "RSX", "transform": "osc100"}, ['"RSX"', "not a TA-Lib function", "RSI"]),
    ({"name": "x", "fn": "RSI", "params": {"period": 7}, "transform": "osc100"},
     ["unknown parameter", "period", "timeperiod"]),
    ({"name": "x", "fn": "RSI", "params": {"timeperiod": 7.5}, "transform": "osc100"},
     ["timeperiod", "an integer"]),
    ({"name": "x", "fn": "RSI", "params": {"timeperiod": True}, "transform": "osc100"}, ["timeperiod"]),
    ({"name": "x", "fn": "RSI", "params": {"timeperiod": 1}, "transform": "osc100"},
     ["TA-Lib refuses", "timeperiod = 1"]),
    ({"name": "x", "fn": "RSI", "params": {"timeperiod": 2**40}, "transform": "osc100"}, ["out of range"]),
    ({"name": "x", "fn": "RSI", "inputs": ["price"], "transform": "osc100"}, ["'price'", "open, high"]),
    ({"name": "x", "fn": "RSI", "inputs": ["close", "high"], "transform": "osc100"},
     ["names 2 column(s)", "reads 1"]),
    ({"name": "x", "fn": "MAVP", "transform": "ratio_close"}, ["'inputs' is needed"]),
    ({"name": "x", "fn": "MACD", "transform": "div_close"}, ["3 outputs", "macd, macdsignal, macdhist"]),
    ({"name": "x", "fn": "MACD", "output": "hist", "transform": "div_close"}, ["'hist'", "macdhist"]),
    ({"name": "x", "fn": "RSI", "transform": "scale"}, ["'scale'", "ratio_close", "zscore"]),
    ({"name": "x", "fn": "RSI"}, ["'transform' None"]),
    ({"name": "x", "fn": "OBV", "transform": "zscore"}, ["'window'", "2 to 5000"]),
    ({"name": "x", "fn": "OBV", "transform": "zscore", "window": 1}, ["'window' = 1"]),
    ({"name": "x", "fn": "OBV", "transform": "zscore", "window": 10**6}, ["'window'"]),
    ({"name": "x", "fn": "RSI", "transform": "osc100", "window": 5}, ["'window' only applies"]),
    ({"name": "x", "fn": "SMA", "transform": "none"}, ["not make it scale-free", "every price"]),
    ({"name": "x", "fn": "OBV", "transform": "none"}, ["not make it scale-free", "volume"]),
    ({"name": "rsi_14", "fn": "RSI", "transform": "osc100"}, ["'rsi_14' is a built-in"]),
    ({"name": "a,b", "fn": "RSI", "transform": "osc100"}, ["'name'"]),
    ({"fn": "RSI", "transform": "osc100"}, ["entry 1", "'name'"]),
    ({"name": "x", "fn": "RSI", "transform": "osc100", "timeperiod": 7}, ["unknown key", "timeperiod"]),
    ("RSI", ["expected a list of tables"]),
    # A bar position counted from the start of the file is never a feature, whatever the transform.
    ({"name": "x", "fn": "MAXINDEX", "params": {"timeperiod": 10}, "transform": "none"},
     ["MAXINDEX", "bar position", "AROON"]),
    ({"name": "x", "fn": "minmaxindex", "output": "minidx", "transform": "zscore", "window": 20},
     ["MINMAXINDEX", "bar position"]),
])
def test_a_bad_declaration_is_a_config_error_naming_the_key_the_feature_and_the_fix(declaration, needles):
    with pytest.raises(ConfigError) as info:
        FeatureConfig(custom_features=[declaration])
    message = str(info.value)
    assert info.value.key == "custom_features" and "'custom_features'" in message
    if isinstance(declaration, dict) and "name" in declaration and declaration["name"] == "x":
        assert "feature 'x'" in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert "\n" not in message and len(message) < 400


def test_a_name_declared_twice_is_refused():
    with pytest.raises(ConfigError, match="feature 'rsi_7': the name is declared twice"):
        FeatureConfig(custom_features=[RSI7, {**RSI7, "params": {"timeperiod": 9}}])


def test_the_error_names_the_file_or_flag_the_declaration_came_from():
    bad = [{"name": "x", "fn": "RSX", "transform": "osc100"}]
    with pytest.raises(ConfigError, match=r"^run\.toml: invalid value for 'custom_features'"):
        build_config({"custom_features": bad}, {}, "run.toml")
    with pytest.raises(ConfigError, match=r"^--custom-features: invalid value for 'custom_features'"):
        build_config({}, {"custom_features": bad})


def test_an_unknown_feature_name_lists_the_built_in_and_the_declared_names():
    with pytest.raises(ConfigError) as info:
        FeatureConfig(features=["ret_1", "rsi_8"], custom_features=[RSI7])
    assert "rsi_14" in str(info.value) and "declared in custom_features: rsi_7" in str(info.value)


def test_a_declaration_is_stored_in_full_so_equivalent_ones_are_one_setting():
    short = FeatureConfig(features=["rsi_7"], custom_features=[{"name": "rsi_7", "fn": "rsi",
                                                                "params": {"timeperiod": 7},
                                                                "transform": "osc100"}])
    assert short.custom_features == [{**RSI7, "output": "real"}]
    full = FeatureConfig(features=["rsi_7"], custom_features=[{**RSI7, "output": "real"}])
    assert short == full
    bb = declare([{"name": "bb", "fn": "BBANDS", "output": "upperband", "transform": "ratio_close"}])[0]
    assert bb["params"] == {"timeperiod": 20, "nbdevup": 2.0, "nbdevdn": 2.0, "matype": 0}


def test_features_mix_built_in_and_declared_names_and_declarations_alone_join_the_defaults():
    cfg = build_config({"custom_features": DECLARED}, {"features": ["ret_1", "obv_z", "rsi_14"]})
    assert cfg.features.features == ["ret_1", "obv_z", "rsi_14"]
    joined = build_config({"custom_features": DECLARED}, {})
    assert joined.features.features == list(FeatureConfig().features) + NAMES


# ----------------------------------------------------------------------------- computing
def test_declared_features_compute_the_documented_formulas():
    x = synthetic_symbol(1, 5, 1, 500)
    import talib

    cols = feature_columns(x, NAMES, DECLARED)
    np.testing.assert_array_equal(cols[:, 0], talib.RSI(x.close, 7) / 100 - 0.5)
    np.testing.assert_allclose(cols[:, 1], talib.MACD(x.close)[2] / x.close)
    np.testing.assert_allclose(cols[:, 2], talib.SMA(x.close, 10) / x.close - 1)
    obv = talib.OBV(x.close, x.volume)
    t = 200
    w = obv[t - 29:t + 1]
    assert cols[t, 3] == pytest.approx((obv[t] - w.mean()) / w.std())
    ema = talib.EMA(x.close, 5)
    assert cols[t, 4] == pytest.approx(np.log(ema[t] / ema[t - 1]))


def test_changing_bars_after_t_leaves_every_declared_feature_up_to_t_unchanged():
    x = synthetic_symbol(1, 21, 4, 600)
    full = compute_features(x, NAMES, 1, DECLARED)
    warm = warmup_bars(NAMES, DECLARED)
    for t in (warm + 3, 300, 598):
        other = synthetic_symbol(1, 1000 + t, 0, len(x))
        k = x.close[t] / other.close[t]
        changed = {}
        for c in ("open", "high", "low", "close", "volume"):
            a = getattr(x, c).copy()
            a[t + 1:] = getattr(other, c)[t + 1:] * (1.0 if c == "volume" else k)
            changed[c] = a
        after = compute_features(dataclasses.replace(x, **changed), NAMES, 1, DECLARED)
        upto = t - warm + 1
        np.testing.assert_array_equal(after.features[:upto], full.features[:upto])
        if t < 598:
            assert not np.array_equal(after.features[upto:], full.features[upto:])


def test_scaling_prices_and_volume_leaves_declared_features_unchanged():
    x = synthetic_symbol(1, 4, 2, 500)
    scaled = dataclasses.replace(x, open=x.open * 50, high=x.high * 50, low=x.low * 50, close=x.close * 50,
                                 volume=x.volume * 7)
    np.testing.assert_allclose(compute_features(scaled, NAMES, 1, DECLARED).features,
                               compute_features(x, NAMES, 1, DECLARED).features, rtol=1e-4, atol=1e-5)


def test_warm_up_covers_a_declared_period_longer_than_the_probe_series():
    long = [{"name": "sma_900", "fn": "SMA", "params": {"timeperiod": 900}, "transform": "ratio_close"}]
    assert warmup_bars(["sma_900"], long) == 899
    assert warmup_bars(["ret_1", "sma_900"], long) == 899
    x = synthetic_symbol(1, 0, 3, 1000)
    assert len(compute_features(x, ["sma_900"], 1, long).time) == 101


def test_required_columns_come_from_each_declaration():
    assert required_columns(["corr_hl"], DECLARED) == {"close", "high", "low"}
    assert required_columns(["obv_z", "rsi_7"], DECLARED) == {"close", "volume"}
    assert required_columns(["doji"], DECLARED) == {"open", "high", "low", "close"}
    with pytest.raises(KeyError):
        required_columns(["rsi_7"])  # a declared name means nothing without its declaration
    assert registry() is registry(())  # the built-ins alone cost nothing


def test_a_declared_feature_reads_only_the_columns_it_declares():
    x = synthetic_symbol(1, 0, 0, 300)
    garbage = dataclasses.replace(x, open=np.full(len(x), 7.5e3), volume=np.full(len(x), 3.0))
    np.testing.assert_array_equal(feature_columns(x, ["corr_hl"], DECLARED),
                                  feature_columns(garbage, ["corr_hl"], DECLARED))


# ----------------------------------------------------------------------------- cache key
def _keys(features: list[str], declared: list[dict]) -> dict[str, str]:
    return expected_keys(DataConfig(symbols=2, bars=300), FeatureConfig(features=features,
                                                                        custom_features=declared, window=8))


def test_a_used_declaration_is_in_the_cache_key_and_an_unused_one_is_not():
    base = _keys(["ret_1", "rsi_7"], [RSI7])
    assert _keys(["ret_1", "rsi_7"], [dict(RSI7)]) == base  # the same declaration: the same key
    assert _keys(["ret_1", "rsi_7"], [{**RSI7, "output": "real"}]) == base  # spelt out in full
    other = _keys(["ret_1", "rsi_7"], [{**RSI7, "params": {"timeperiod": 9}}])
    assert all(other[s] != base[s] for s in base)
    transform = _keys(["ret_1", "rsi_7"], [{**RSI7, "transform": "pct"}])
    assert all(transform[s] != base[s] for s in base)
    # Declared but not used: nothing computed changes, so neither does the key.
    assert _keys(["ret_1"], [RSI7]) == _keys(["ret_1"], [])


# ----------------------------------------------------------------------------- the real command line
TINY = ["--symbols", "3", "--bars", "600", "--epochs", "1", "--window", "8", "--batch-size", "64",
        "--d-model", "8", "--heads", "2", "--layers", "1", "--no-progress"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=default_sigint)


def _hits_misses(stderr: str) -> tuple[int, int]:
    m = re.search(r"cache hits (\d+), misses (\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def test_a_declared_feature_trains_end_to_end_is_cached_under_its_own_key_and_fixed_on_resume(tmp_path):
    train = str(REPO_ROOT / "train_indicator_transformer.py")
    (tmp_path / "run.toml").write_text(
        '[features]\nfeatures = ["ret_1", "rsi_7", "obv_z"]\ncustom_features = [\n'
        '  {name = "rsi_7", fn = "RSI", params = {timeperiod = 7}, inputs = ["close"], '
        'transform = "osc100"},\n'
        '  {name = "obv_z", fn = "OBV", inputs = ["close", "volume"], transform = "zscore", window = 20},\n'
        ']\n')
    r = _run([train, *TINY, "--config", "run.toml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _hits_misses(r.stderr) == (0, 3)
    state = torch.load(tmp_path / "models" / "checkpoint_epoch_1.pth", weights_only=True)
    saved = Config.from_dict(state["config"])
    assert saved.features.features == ["ret_1", "rsi_7", "obv_z"]
    assert saved.features.custom_features[0]["params"] == {"timeperiod": 7}
    assert state.get("feature_names", saved.features.features) == ["ret_1", "rsi_7", "obv_z"]

    # The same declaration hits the cache; other parameters are another entry.
    again = _run([train, *TINY, "--config", "run.toml", "--prepare-only"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert _hits_misses(again.stderr) == (3, 0)
    (tmp_path / "run9.toml").write_text((tmp_path / "run.toml").read_text().replace("timeperiod = 7",
                                                                                    "timeperiod = 9"))
    changed = _run([train, *TINY, "--config", "run9.toml", "--prepare-only"], tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert _hits_misses(changed.stderr) == (0, 3)

    # A resume with another declaration is refused like any fixed setting.
    other = '[{name = "rsi_7", fn = "RSI", params = {timeperiod = 9}, transform = "osc100"}, ' \
            '{name = "obv_z", fn = "OBV", transform = "zscore", window = 20}]'
    resume = _run([str(REPO_ROOT / "resume_training.py"), "--custom-features", other, "--epochs", "1",
                   "--no-progress"], tmp_path)
    assert resume.returncode == 2 and "Traceback" not in resume.stderr
    assert "--custom-features" in resume.stderr and "conflicts with the checkpoint" in resume.stderr
    # The same declaration, written shorter, is the same setting: the resume runs.
    same = other.replace("timeperiod = 9", "timeperiod = 7")
    resume = _run([str(REPO_ROOT / "resume_training.py"), "--custom-features", same, "--epochs", "1",
                   "--no-progress"], tmp_path)
    assert resume.returncode == 0, resume.stderr
    assert _hits_misses(resume.stderr) == (3, 0)
