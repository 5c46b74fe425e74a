"""The run folder's plots: real PNGs that matplotlib reads back, written atomically, no leftovers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env

from indicator_transformer import plots
from indicator_transformer.atomic import is_temp_file
from indicator_transformer.report import TestPredictions, report_series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAY = 86_400 * 10**9
START = 1_577_836_800 * 10**9
ALL = {plots.LOSS_CURVES, plots.PREDICTED_VS_REALISED, plots.STRATEGIES, plots.IC_OVER_TIME}


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def history(epochs: int, steps_per_epoch: int, val_nan: bool = False) -> tuple[list[dict], list[float]]:
    rng = np.random.default_rng(1)
    n = epochs * steps_per_epoch
    steps = list(1.0 / np.sqrt(np.arange(1, n + 1)) + 0.1 * rng.random(n))
    hist = [{"epoch": e, "train_loss": float(np.mean(steps[(e - 1) * steps_per_epoch:e * steps_per_epoch])),
             "val_loss": float("nan") if val_nan else 0.9 - 0.01 * e, "val_ic": 0.01, "seconds": 1.0}
            for e in range(1, epochs + 1)]
    return hist, steps


def series(n_symbols: int, n_dates: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    times = np.tile(START + np.arange(n_dates) * DAY, n_symbols)
    symbols = np.repeat([f"S{i}" for i in range(n_symbols)], n_dates)
    signal = rng.normal(size=len(times))
    target = np.round(0.01 * (0.2 * signal + rng.normal(size=len(times))), 3)   # ties
    tp = TestPredictions(symbols, times, target, {"model": 0.002 * signal}, 0.0, 1, 1.0, 252.0)
    return report_series(tp)


def test_write_plots_writes_four_readable_pngs_and_nothing_else(tmp_path: Path) -> None:
    hist, steps = history(4, 30)
    paths, skipped = plots.write_plots(tmp_path, series(8, 120), hist, steps, 30, resume_steps=[45, 90])
    assert {p.name for p in paths} == ALL and skipped == {}
    assert {p.name for p in tmp_path.iterdir()} == ALL          # no temporary files left behind
    for p in paths:
        assert_png(p)


def test_one_symbol_has_no_ic_plot_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    (tmp_path / plots.IC_OVER_TIME).write_bytes(b"from an earlier evaluation")
    hist, steps = history(2, 10)
    s = series(1, 60)
    assert s["ic_over_time"] is None and s["long_short"] is None
    paths, skipped = plots.write_plots(tmp_path, s, hist, steps, 10, resume_steps=[])
    assert {p.name for p in paths} == ALL - {plots.IC_OVER_TIME}
    # The missing plot is never silent: the caller logs this reason and records it in the summary.
    assert list(skipped) == [plots.IC_OVER_TIME] and "3 or more symbols" in skipped[plots.IC_OVER_TIME]
    assert {p.name for p in tmp_path.iterdir()} == ALL - {plots.IC_OVER_TIME}


def test_empty_inputs_write_no_plot_and_do_not_raise(tmp_path: Path) -> None:
    empty = {"pred": np.array([]), "target": np.array([]), "long_short": None, "ic_over_time": None,
             "sign_strategy": {"time": np.array([], np.int64), "return": np.array([])},
             "buy_and_hold": {"time": np.array([], np.int64), "return": np.array([])}}
    paths, skipped = plots.write_plots(tmp_path, empty, [], [], 0, [])
    assert paths == [] and set(skipped) == ALL and all(skipped.values())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["losses", "scatter", "strategies", "ic"])
def test_each_plot_called_directly_with_no_data_still_writes_a_png(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    if name == "losses":
        plots.plot_losses([], [], 0, [], path)
    elif name == "scatter":
        plots.plot_predicted_vs_realised(np.array([np.nan, 1.0]), np.array([0.1, np.nan]), path)
    elif name == "strategies":
        plots.plot_strategies({"sign_strategy": None, "buy_and_hold": None}, path)
    else:
        plots.plot_ic_over_time(np.array([], np.int64), np.array([]), path)
    assert_png(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_loss_curves_with_an_all_nan_validation_loss_and_a_resume(tmp_path: Path) -> None:
    hist, steps = history(3, 20, val_nan=True)
    assert_png(plots.plot_losses(hist, steps, 20, [20], tmp_path / "loss.png"))
    # History read back from JSON has null for NaN.
    for e in hist:
        e["val_loss"] = None
    assert_png(plots.plot_losses(hist, steps, 20, [], tmp_path / "loss2.png"))


def test_a_large_scatter_is_subsampled_the_same_way_every_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pred = rng.normal(size=25_000) * 1e-3
    target = pred + rng.normal(size=25_000) * 1e-2
    a = plots.plot_predicted_vs_realised(pred, target, tmp_path / "a.png").read_bytes()
    b = plots.plot_predicted_vs_realised(pred, target, tmp_path / "b.png").read_bytes()
    assert a == b
    # A constant prediction has no least-squares line but still plots.
    assert_png(plots.plot_predicted_vs_realised(np.zeros(50), target[:50], tmp_path / "c.png"))


def test_importing_the_package_does_not_import_matplotlib() -> None:
    code = ("import sys, indicator_transformer.plots, indicator_transformer.report; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_plot_killed_while_it_is_written_leaves_the_previous_file_intact(tmp_path: Path, spawn) -> None:
    # A real child pauses inside the atomic write of ic_over_time.png (temporary file complete,
    # not yet renamed) and is killed with SIGKILL there: the old plot under the final name is
    # untouched and what is left beside it is a temporary file that readers and cleanup ignore.
    old = tmp_path / plots.IC_OVER_TIME
    old.write_bytes(PNG_SIGNATURE + b"the previous, complete plot")
    code = ("import sys, numpy as np; from indicator_transformer import plots; "
            "plots.plot_ic_over_time(np.arange(30) * 86400 * 10**9, np.linspace(-0.1, 0.1, 30), sys.argv[1])")
    env = {**child_env(), "INDICATOR_TRANSFORMER_PAUSE_AT": f"before_commit:{plots.IC_OVER_TIME}"}
    child = spawn(["-c", code, str(old)], env=env)
    assert any("PAUSED" in line for line in iter(child.stderr.readline, ""))
    child.kill()
    child.wait(timeout=10)
    assert old.read_bytes() == PNG_SIGNATURE + b"the previous, complete plot"
    leftovers = [p for p in tmp_path.iterdir() if p != old]
    assert leftovers and all(is_temp_file(p) for p in leftovers)


def test_the_loss_plot_divides_each_split_by_its_own_constant_prediction_loss(tmp_path: Path,
                                                                             monkeypatch) -> None:
    """Validation labels that vary less (a calmer period) put the raw validation loss far below
    the training loss; divided by each split's loss of predicting the training mean, the curves
    are comparable (1.0 = no better than the constant)."""
    hist, steps = history(3, 20)
    for e in hist:
        e["train_baseline"], e["val_baseline"] = 1.0, 0.6
        e["val_loss"] = 0.61
    drawn: dict[str, np.ndarray] = {}
    original = plots._save

    def capture(fig, path):  # read back what the axes hold before the figure is cleared
        for line in fig.axes[0].get_lines():
            drawn[str(line.get_label())] = np.asarray(line.get_ydata(), float)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    assert_png(plots.plot_losses(hist, steps, 20, [], tmp_path / "loss.png"))
    assert np.allclose(drawn["validation loss per epoch"], 0.61 / 0.6)
    assert "predicting the training mean" in drawn
    # A history from before these figures: drawn raw, the title says why the curves may differ.
    for e in hist:
        del e["train_baseline"], e["val_baseline"]
    drawn.clear()
    plots.plot_losses(hist, steps, 20, [], tmp_path / "raw.png")
    assert np.allclose(drawn["validation loss per epoch"], 0.61)
    assert "predicting the training mean" not in drawn


def test_test_periods_years_apart_get_one_panel_each_with_their_length_and_sharpe(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    a = series(3, 60)
    late = 5 * 365 * DAY
    n = 60 * 3
    times = np.r_[np.tile(START + np.arange(60) * DAY, 3), np.tile(START + late + np.arange(60) * DAY, 3)]
    symbols = np.r_[np.repeat(["A", "B", "C"], 60), np.repeat(["D", "E", "F"], 60)]
    rng = np.random.default_rng(4)
    target = rng.normal(size=2 * n) * 0.01
    tp = TestPredictions(symbols, times, target, {"model": target + rng.normal(size=2 * n) * 0.02},
                         0.0, 1, 1.0, 252.0)
    s = report_series(tp)
    assert len(s["periods"]) == 2 and a["periods"][0]["symbols"] == ["S0", "S1", "S2"]
    titles: list[str] = []
    spans: list[float] = []
    original = plots._save

    def capture(fig, path):
        for ax in fig.axes:
            titles.append(ax.get_title())
            for line in ax.get_lines():
                x = line.get_xdata()
                if len(x) > 2:
                    spans.append(float((np.max(x) - np.min(x)) / np.timedelta64(1, "D")))
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    assert_png(plots.plot_strategies(s, tmp_path / "s.png"))
    assert len(titles) == 2
    assert titles[0].startswith("A, B, C: 60 1d periods (0.24 years); sign Sharpe")
    assert all("under a year" in t for t in titles)
    assert max(spans) < 365                       # no curve spans the five-year gap
