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
    paths = plots.write_plots(tmp_path, series(8, 120), hist, steps, 30, resume_steps=[45, 90])
    assert {p.name for p in paths} == ALL
    assert {p.name for p in tmp_path.iterdir()} == ALL          # no temporary files left behind
    for p in paths:
        assert_png(p)


def test_one_symbol_has_no_ic_plot_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    (tmp_path / plots.IC_OVER_TIME).write_bytes(b"from an earlier evaluation")
    hist, steps = history(2, 10)
    s = series(1, 60)
    assert s["ic_over_time"] is None and s["long_short"] is None
    paths = plots.write_plots(tmp_path, s, hist, steps, 10, resume_steps=[])
    assert {p.name for p in paths} == ALL - {plots.IC_OVER_TIME}
    assert {p.name for p in tmp_path.iterdir()} == ALL - {plots.IC_OVER_TIME}


def test_empty_inputs_write_no_plot_and_do_not_raise(tmp_path: Path) -> None:
    empty = {"pred": np.array([]), "target": np.array([]), "long_short": None, "ic_over_time": None,
             "sign_strategy": {"time": np.array([], np.int64), "return": np.array([])},
             "buy_and_hold": {"time": np.array([], np.int64), "return": np.array([])}}
    assert plots.write_plots(tmp_path, empty, [], [], 0, []) == []
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
