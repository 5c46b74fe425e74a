"""A real run on a mixed folder (daily equities of different years beside hourly FX) and what it
exports: the honest headline, per-symbol split dates, predictions.csv, the saved baselines, and
``predict --all --baselines`` / ``evaluate --all-windows`` on the same or on unseen files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, child_env, default_sigint, write_symbol_csv

from indicator_transformer.data.synthetic import synthetic_symbol

HOUR = 3_600 * 10**9
DAY = 24 * HOUR
RUN = ["--epochs", "1", "--window", "8", "--batch-size", "64", "--d-model", "8", "--heads", "2",
       "--layers", "1", "--no-progress", "--threads", "1"]


def _cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_sigint)


def _bars(index: int, bars: int, start_ns: int, step_ns: int, scale: float = 1.0):
    """A synthetic symbol's bars on another calendar, its log returns scaled by ``scale`` (hourly
    FX moves about a tenth of a daily equity)."""
    x = synthetic_symbol(1, 5, index, bars)
    f = {k: np.exp(scale * np.log(getattr(x, k))) for k in ("open", "high", "low", "close")}
    return dataclasses.replace(x, time=start_ns + np.arange(bars, dtype=np.int64) * step_ns, **f)


def _mixed_folder(root: Path) -> Path:
    d = root / "mixed"
    y2011, y2016 = (int(pd.Timestamp(s, tz="UTC").value) for s in ("2011-01-03", "2016-01-04"))
    for i, (name, start) in enumerate((("GOOG", y2011), ("AAPL", y2011), ("SPX", y2016))):
        write_symbol_csv(d / f"{name}.csv", _bars(i, 700, start, DAY))
    for i, name in enumerate(("EURUSD", "USDJPY"), start=3):
        write_symbol_csv(d / f"{name}.csv", _bars(i, 900, y2016, HOUR, scale=0.1),
                         date_format="%Y-%m-%d %H:%M:%S")
    return d


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed_run")
    data = _mixed_folder(root)
    r = _cli(root, str(REPO_ROOT / "train_indicator_transformer.py"), "--data-dir", str(data),
             "--save-predictions", *RUN)
    assert r.returncode == 0, r.stderr
    (root / "train.stdout").write_text(r.stdout)
    (root / "train.stderr").write_text(r.stderr)
    return root


def _summary(root: Path) -> dict:
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return json.loads((run / "summary.json").read_text())


def _run_folder(root: Path) -> Path:
    return next(p for p in (root / "runs").iterdir() if p.is_dir())


def test_a_mixed_folder_gets_the_mean_symbol_ic_as_headline_and_one_strategy_panel_per_period(
        mixed_run: Path) -> None:
    doc = _summary(mixed_run)
    report = doc["report"]
    assert report["headline"]["metric"] == "symbol_ic" and report["headline"]["mse"] == "symbol_mean"
    assert "bar frequencies differ" in report["headline"]["reason"]
    model = report["predictors"]["model"]
    ics = [v["ic"] for v in model["by_symbol"].values() if v["ic"] is not None]
    assert model["headline"]["ic"] == pytest.approx(np.mean(ics))
    log = (mixed_run / "train.stderr").read_text()
    assert "Headline: symbol IC" in log and "symbol IC (t)" in log
    # GOOG and AAPL (2012) and SPX (2017) are separate test periods of the daily scope.
    periods = report["test_periods"]
    assert [p["symbols"] for p in periods] == [["AAPL", "GOOG"], ["SPX"]]
    assert "2 separate test periods" in log.replace("\n    ", " ")
    # No date has 3 symbols: the IC plot is missing, and the log and the summary say why.
    assert "ic_over_time.png" in doc["plots_skipped"] and "ic_over_time.png" not in doc["plots"]
    assert "note: ic_over_time.png not drawn: no test date has 3 or more symbols" in log
    # The baselines as fitted are in the table.
    assert "Baselines as fitted:" in log and "rounds (early-stopped on validation)" in log


def test_summary_records_each_symbols_split_dates_and_predictions_csv_holds_the_test_split(
        mixed_run: Path) -> None:
    doc = _summary(mixed_run)
    dates = doc["splits"]["by_symbol"]
    assert set(dates) == {"GOOG", "AAPL", "SPX", "EURUSD", "USDJPY"}
    for sym, splits in dates.items():
        train, val, test = splits["train"], splits["val"], splits["test"]
        assert train["to"] < val["from"] <= val["to"] < test["from"] <= test["to"], sym
    assert dates["SPX"]["train"]["from"].startswith("2016") and dates["GOOG"]["test"]["to"].startswith("2012")
    pred = pd.read_csv(_run_folder(mixed_run) / "predictions.csv")
    assert list(pred.columns) == ["symbol", "time", "predicted_return", "rank", "split", "realised_return",
                                  "zero", "train_mean", "symbol_mean", "momentum", "ridge", "lightgbm"]
    assert len(pred) == doc["report"]["samples"] and set(pred["split"]) == {"test"}
    for sym, group in pred.groupby("symbol"):
        t = pd.to_datetime(group["time"]).dt.tz_convert(None)
        assert str(t.min()).replace(" ", "T") == dates[sym]["test"]["from"]
        assert str(t.max()).replace(" ", "T") == dates[sym]["test"]["to"]
    assert pred["realised_return"].notna().all()
    # The report's figures are those of these very rows.
    from indicator_transformer.metrics import point_metrics
    m = point_metrics(pred["predicted_return"].to_numpy(), pred["realised_return"].to_numpy(), 0.0)
    assert m["ic"] == pytest.approx(doc["report"]["predictors"]["model"]["pooled"]["ic"], abs=1e-6)


def test_predict_all_tags_every_bar_with_its_split_and_adds_the_saved_baselines(mixed_run: Path) -> None:
    r = _cli(mixed_run, "-m", "indicator_transformer", "predict", "--checkpoint", "models/best.pth",
             "--all", "--baselines", "--no-progress", "--out", "all.csv")
    assert r.returncode == 0, r.stderr
    rows = pd.read_csv(mixed_run / "all.csv")
    assert set(rows["split"]) == {"train", "val", "test", "gap", "unseen"}
    # The last bar of each symbol has no realised return yet: unseen, an empty cell.
    last = rows.sort_values("time").groupby("symbol").tail(1)
    assert (last["split"] == "unseen").all() and last["realised_return"].isna().all()
    # The test rows are the run's own test predictions, model and baselines alike.
    saved = pd.read_csv(_run_folder(mixed_run) / "predictions.csv").set_index(["symbol", "time"])
    test = rows[rows["split"] == "test"].set_index(["symbol", "time"]).loc[saved.index]
    assert len(test) == len(saved)
    for col in ("predicted_return", "realised_return", "ridge", "lightgbm", "symbol_mean", "momentum"):
        np.testing.assert_allclose(test[col], saved[col], rtol=1e-5, atol=1e-9, err_msg=col)


def _monthly(root: Path) -> Path:
    d = root / "monthly"
    start = int(pd.Timestamp("2012-01-01", tz="UTC").value)
    x = _bars(7, 160, start, 0)
    months = pd.date_range("2012-01-01", periods=160, freq="MS", tz="UTC")
    write_symbol_csv(d / "BTCUSD.csv", dataclasses.replace(x, time=months.as_unit("ns").asi8))
    return d


def test_evaluate_all_windows_on_a_short_monthly_file_uses_the_runs_baselines_and_warns(
        mixed_run: Path, tmp_path: Path) -> None:
    monthly = _monthly(tmp_path)
    out = tmp_path / "ev"
    r = _cli(mixed_run, "-m", "indicator_transformer", "evaluate", "--checkpoint", "models/best.pth",
             "--data-dir", str(monthly), "--all-windows", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    table = r.stdout.replace("\n    ", " ").replace("\n  ", " ")
    assert "Every window (best.pth, other data):" in r.stdout
    assert "the model was trained on 1d, 1h bars; this data has 1mo (BTCUSD)" in table
    assert "every window holds" in table and "(under 250)" in table
    doc = json.loads((out / "summary.json").read_text())
    assert doc["scored"] == "every window (--all-windows)"
    assert any("1mo" in w for w in doc["warnings"]) and any("under 250" in w for w in doc["warnings"])
    # Every window with a known forward return is scored, not the file's last 15%.
    assert doc["report"]["samples"] > 100
    # Ridge is the run's own (fitted on the mixed folder's training windows), not refit on 50 samples.
    training = _summary(mixed_run)["baseline_settings"]["ridge"]
    assert doc["baseline_settings"]["ridge"]["fit_samples"] == training["fit_samples"]
    assert doc["baseline_settings"]["ridge"]["alpha"] == training["alpha"]


def test_evaluate_all_windows_on_an_edited_copy_of_a_training_file_calls_its_figures_in_sample(
        mixed_run: Path, tmp_path: Path) -> None:
    """A copy of GOOG.csv without its last rows has another cache key, but its bars are the ones
    the model trained on: the warning must come from the dates, not the key."""
    data = _monthly(tmp_path)
    rows = (mixed_run / "mixed" / "GOOG.csv").read_text().splitlines()
    (data / "GOOG.csv").write_text("\n".join(rows[:-40]) + "\n")
    # An exact copy under another name: its cache key differs (the key holds the name), its bars do not.
    (data / "NEWY.csv").write_bytes((mixed_run / "mixed" / "AAPL.csv").read_bytes())
    r = _cli(mixed_run, "-m", "indicator_transformer", "evaluate", "--checkpoint", "models/best.pth",
             "--data-dir", str(data), "--all-windows", "--out", str(tmp_path / "ev"), "--no-progress")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ev" / "summary.json").read_text())
    (warning,) = [w for w in doc["warnings"] if "in-sample" in w]
    assert warning.startswith("2 symbol(s) overlap the checkpoint's training and validation periods: GOOG (")
    assert "NEWY (the same bars as training symbol AAPL)" in warning and "BTCUSD" not in warning


def test_evaluate_all_windows_without_saved_baselines_scores_the_unfitted_ones_and_says_why(
        mixed_run: Path, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(mixed_run / "models", models)
    (models / "baselines.json").unlink()
    r = _cli(mixed_run, "-m", "indicator_transformer", "evaluate", "--checkpoint", str(models / "best.pth"),
             "--data-dir", str(_monthly(tmp_path)), "--all-windows", "--out", str(tmp_path / "ev"),
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "warning: only the model and the predictors without a fit are scored" in r.stderr
    assert "baselines.json does not exist" in r.stderr
    doc = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(doc["report"]["predictors"]) == {"model", "zero", "train_mean", "momentum"}
    r = _cli(mixed_run, "-m", "indicator_transformer", "predict", "--checkpoint", str(models / "best.pth"),
             "--baselines", "--no-progress")
    assert r.returncode == 2 and "--baselines:" in r.stderr and "Traceback" not in r.stderr
    # A symbolic link in its place (to the run's own, valid file) is refused like a linked checkpoint.
    (models / "baselines.json").symlink_to(mixed_run / "models" / "baselines.json")
    r = _cli(mixed_run, "-m", "indicator_transformer", "predict", "--checkpoint", str(models / "best.pth"),
             "--baselines", "--no-progress")
    assert r.returncode == 2 and "is a symbolic link" in r.stderr and "Traceback" not in r.stderr
