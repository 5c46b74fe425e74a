"""indicator-transformer predict: a trained checkpoint on (new) data -> a CSV of predicted returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import child_env, default_sigint

from indicator_transformer.training import checkpoint as ckpt


def _predict(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indicator_transformer", "predict", *args, "--no-progress"],
                          cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=default_sigint)


def test_predict_writes_each_symbols_latest_bar_ranked_and_every_bar_with_all(real_run: Path,
                                                                            tmp_path: Path) -> None:
    best = real_run / "models" / "best.pth"
    cache = ["--cache-dir", str(real_run / "cache")]
    r = _predict(tmp_path, "--checkpoint", str(best), *cache, "--out", "latest.csv")
    assert r.returncode == 0, r.stderr
    latest = pd.read_csv(tmp_path / "latest.csv")
    assert list(latest.columns) == ["symbol", "time", "predicted_return", "rank"]
    assert sorted(latest["symbol"]) == ["SYN000", "SYN001", "SYN002"]
    assert sorted(latest["rank"]) == [1, 2, 3]
    assert latest.sort_values("rank")["predicted_return"].is_monotonic_decreasing

    r = _predict(tmp_path, "--checkpoint", str(best), *cache, "--all")
    assert r.returncode == 0, r.stderr
    from io import StringIO

    every = pd.read_csv(StringIO(r.stdout))
    window = ckpt.load_checkpoint(best)["config"]["features"]["window"]
    # Every bar with a full window, the latest ones identical to the latest-only run.
    assert every.groupby("symbol").size().min() > 100 and window == 8
    last = every.sort_values("time").groupby("symbol").tail(1).set_index("symbol")
    pd.testing.assert_series_equal(last["predicted_return"].sort_index(),
                                   latest.set_index("symbol")["predicted_return"].sort_index())


def test_predict_on_a_bad_file_exits_2_naming_it_and_writes_nothing(real_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "BAD.csv").write_text("Date,Open,High,Low,Close,Volume\n2020-01-01,1,2,0.5,abc,10\n")
    r = _predict(tmp_path, "--checkpoint", str(real_run / "models" / "best.pth"), "--data-dir", str(data),
                 "--cache-dir", str(tmp_path / "cache"), "--out", "p.csv")
    assert r.returncode == 2 and "BAD.csv" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_predict_refuses_a_damaged_or_missing_checkpoint(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.pth"
    if damage == "truncate":
        path.write_bytes(b"PK\x03\x04 not a whole archive")
    r = _predict(tmp_path, "--checkpoint", str(path))
    assert r.returncode == 2 and str(path) in r.stderr and "Traceback" not in r.stderr


def test_an_unusable_out_path_is_refused_before_any_work(real_run: Path, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    for out in ("folder", "missing/dir/p.csv"):
        r = _predict(tmp_path, "--checkpoint", str(real_run / "models" / "best.pth"), "--out", out,
                     "--cache-dir", str(tmp_path / "cache"))
        assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "Preparing" not in r.stderr and not (tmp_path / "cache").exists()


def test_predictions_use_each_symbols_own_scale_and_name_the_symbols_on_the_pooled_one(
        real_run: Path, tmp_path: Path) -> None:
    from conftest import write_symbol_csv

    from indicator_transformer.data.synthetic import synthetic_symbol

    # SYN000 as a file (the very bars it was trained on) beside a symbol the checkpoint never saw.
    data = tmp_path / "data"
    write_symbol_csv(data / "SYN000.csv", synthetic_symbol(1, 7, 0, 600))
    write_symbol_csv(data / "NEWCO.csv", synthetic_symbol(1, 7, 0, 600))  # same bars, unknown name
    best = real_run / "models" / "best.pth"
    r = _predict(tmp_path, "--checkpoint", str(best), "--data-dir", str(data), "--cache-dir",
                 str(tmp_path / "cache"), "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    assert "no normalisation statistics for 1 symbol(s)" in r.stderr and "NEWCO" in r.stderr
    assert "SYN000" not in r.stderr.split("no normalisation statistics")[1].splitlines()[0]
    p = pd.read_csv(tmp_path / "p.csv").set_index("symbol")["predicted_return"]
    # Identical bars, different statistics: the per-symbol and pooled scales give other numbers.
    assert p["SYN000"] != p["NEWCO"]
    norm = ckpt.load_checkpoint(best)["normalisation"]
    assert "SYN000" in norm["symbols"] and "NEWCO" not in norm["symbols"]


def test_latest_bars_of_different_times_are_ranked_together_with_a_warning(real_run: Path,
                                                                           tmp_path: Path) -> None:
    from conftest import write_symbol_csv

    from indicator_transformer.data.synthetic import synthetic_symbol

    data = tmp_path / "data"
    for i, bars in enumerate((600, 580, 560)):  # three symbols whose data end on different days
        write_symbol_csv(data / f"SYN00{i}.csv", synthetic_symbol(1, 7, i, bars))
    r = _predict(tmp_path, "--checkpoint", str(real_run / "models" / "best.pth"), "--data-dir", str(data),
                 "--cache-dir", str(tmp_path / "cache"), "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    assert "latest bars are not at one time" in r.stderr
    p = pd.read_csv(tmp_path / "p.csv")
    assert p["time"].nunique() == 3 and sorted(p["rank"]) == [1, 2, 3]
    assert p.sort_values("rank")["predicted_return"].is_monotonic_decreasing
