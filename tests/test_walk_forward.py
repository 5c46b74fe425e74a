"""``indicator-transformer walk-forward``: one ordinary run per (fold, seed) as a real child
process, the pooled out-of-sample report, and a stopped experiment that continues to the very
figures and predictions of an uninterrupted one."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trainproc import Child
from wfproc import figures as _figures
from wfproc import wf_paused
from wfproc import wf_run as _run

from indicator_transformer.cutoffs import parse_cuts

TINY = ["--symbols", "4", "--bars", "700", "--epochs", "2", "--batch-size", "64", "--d-model", "16",
        "--heads", "2", "--layers", "1", "--no-progress", "--no-plots", "--window", "16", "--threads", "1"]
EXPERIMENT = ["--folds", "2", "--seeds", "0,1", "--test-bars", "80", *TINY]


def _wait_for_after(child: Child, first: str, then: str, timeout: float = 300) -> None:
    """Block until a line starting with ``then`` follows the line starting with ``first``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = list(child.lines)
        at = next((i for i, ln in enumerate(lines) if ln.startswith(first)), None)
        if at is not None and any(ln.startswith(then) for ln in lines[at:]):
            return
        assert child.proc.poll() is None, child.stderr
        time.sleep(0.05)
    raise AssertionError(f"no '{then}' after '{first}':\n{child.stderr}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted experiment (its cache is shared with the other tests' experiments)."""
    root = tmp_path_factory.mktemp("wf")
    r = _run([*EXPERIMENT, "--out", "whole"], root)
    assert r.returncode == 0, r.stderr
    assert "Experiment complete" in r.stderr and "Traceback" not in r.stderr
    return root


def test_every_out_of_sample_window_is_tested_once_per_seed_in_its_own_fold(finished: Path) -> None:
    out = finished / "whole"
    doc = _figures(out)
    oos = pd.read_csv(out / "oos_predictions.csv")
    assert list(oos.columns[:6]) == ["symbol", "time", "fold", "seed", "realised", "model"]
    assert {"ridge", "lightgbm", "train_mean"} <= set(oos.columns)
    folds = doc["experiment"]["folds"]
    assert [f["index"] for f in folds] == [0, 1] and folds[0]["test_end"] == folds[1]["test_start"]
    times = pd.to_datetime(oos["time"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    for f in folds:  # each row lies in its fold's test period
        rows = oos["fold"].to_numpy() == f["index"]
        start = parse_cuts(f["test_start"], "x")["*"]
        assert times[rows].min() >= start
        if f["test_end"] is not None:
            assert times[rows].max() < parse_cuts(f["test_end"], "x")["*"]
    per_seed = [oos[oos["seed"] == s] for s in (0, 1)]
    assert len(per_seed[0]) == len(per_seed[1]) > 0
    for part in per_seed:
        assert not part.duplicated(["symbol", "time"]).any()  # once per seed
        assert (part[["symbol", "time", "realised"]].to_numpy() == per_seed[0][["symbol", "time",
                                                                               "realised"]].to_numpy()).all()
    # The seeds differ (the model is seeded), the pooled report has them both, with the spread.
    assert not np.array_equal(per_seed[0]["model"].to_numpy(), per_seed[1]["model"].to_numpy())
    agg = doc["over_seeds"]
    assert agg["seeds"] == [0, 1] and agg["headline"] == "CS IC"
    model = agg["predictors"]["model"]["cs_ic"]
    assert len(model["per_seed"]) == 2 and model["std"] > 0
    assert set(agg["model_against"]) == {"symbol_mean", "ridge", "lightgbm"}
    assert doc["verdict"].startswith("Out of sample over every fold, the model's CS IC is")
    # A constant per fold has no cross-section: no figure, not a spurious IC over time.
    assert doc["pooled_by_seed"]["0"]["predictors"]["train_mean"]["headline"]["ic"] is None
    assert len(doc["runs"]) == 4 and {r["run"] for r in doc["runs"]} == {
        "fold0-seed0", "fold0-seed1", "fold1-seed0", "fold1-seed1"}
    # Per fold: each fold's runs' own headline, mean and std over the seeds, by hand.
    assert [f["fold"] for f in doc["per_fold"]] == [0, 1]
    for f in doc["per_fold"]:
        runs = sorted((r for r in doc["runs"] if r["fold"] == f["fold"]), key=lambda r: r["seed"])
        for name in ("model", "ridge", "lightgbm"):
            values = [r["headline"][name]["ic"] for r in runs]
            got = f["predictors"][name]["ic"]
            assert got["per_seed"] == values
            assert got["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert got["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert f["test_start"] == folds[f["fold"]]["test_start"]
    # The pooled CS IC of seed 0 from the exported predictions alone: the per-date Pearson IC
    # across symbols (dates with 3 or more), averaged over every fold's dates.
    zero = oos[oos["seed"] == 0]
    ics = [np.corrcoef(g["model"], g["realised"])[0, 1] for _, g in zero.groupby("time") if len(g) >= 3]
    pooled_ic = doc["pooled_by_seed"]["0"]["predictors"]["model"]["headline"]["ic"]
    assert pooled_ic == pytest.approx(float(np.mean(ics)), abs=1e-6)
    # Over seeds: the pooled headline of each seed, mean and std.
    for name in ("model", "lightgbm"):
        per_seed = [doc["pooled_by_seed"][str(s)]["predictors"][name]["headline"]["ic"] for s in (0, 1)]
        got = agg["predictors"][name]["cs_ic"]
        assert got["per_seed"] == per_seed and got["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)


def test_the_same_command_again_retrains_nothing_and_status_lists_every_run(finished: Path) -> None:
    out = finished / "whole"
    before = (out / "summary.json").read_bytes()
    r = _run([*EXPERIMENT, "--out", "whole"], finished)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done, not retrained") == 4 and "starting" not in r.stderr
    assert (out / "summary.json").read_bytes() == before
    st = _run(["--status", "--out", "whole"], finished)
    assert st.returncode == 0, st.stderr
    assert "4 of 4 run(s) done" in st.stdout and st.stdout.count(" done ") == 4


def test_other_settings_in_the_same_folder_are_refused_and_new_moves_the_old_one_aside(
        finished: Path) -> None:
    import shutil

    shutil.copytree(finished / "whole", finished / "other")
    r = _run([*EXPERIMENT[:-4], "--threads", "1", "--lr", "0.002", "--out", "other"], finished)  # no --window
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "other/ holds another experiment: " in r.stderr and "config.features.window 16 -> 32" in r.stderr
    assert "config.train.lr" in r.stderr
    for flag in (["--seed", "3"], ["--test-start", "2003-01-01"], ["--models-dir", "m"]):
        bad = _run([*EXPERIMENT, *flag, "--out", "other"], finished)
        assert bad.returncode == 2 and "set for each run by the experiment" in bad.stderr, bad.stderr


def test_a_stopped_experiment_continues_to_the_figures_of_an_uninterrupted_one(finished: Path) -> None:
    child = wf_paused([*EXPERIMENT, "--out", "stopped"], finished, "train_step:30", 20)  # a signal ends it
    proc = child.proc
    try:
        child.wait_for("[2/4] fold0-seed1: starting", timeout=300)
        _wait_for_after(child, "[2/4] fold0-seed1: starting", "PAUSED train_step 30")  # the 2nd run's
        st = _run(["--status", "--out", "stopped"], finished)  # found by the attack: said "stopped"
        assert st.returncode == 0, st.stderr
        assert "The experiment is running: PID" in st.stdout
        assert [ln.split()[1] for ln in st.stdout.splitlines() if ln.startswith("fold0-seed1")] == ["running"]
        proc.send_signal(signal.SIGTERM)  # to the experiment only: it passes the stop on
        code = child.finish(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143, child.stderr
    assert child.lines[-1] == "Cleanup complete", child.stderr
    assert "Experiment stopped after" in child.stderr and "Traceback" not in child.stderr
    models = finished / "stopped" / "runs" / "fold0-seed1" / "models"
    assert list(models.glob("*_interrupted.pth")), child.stderr
    again = _run([*EXPERIMENT, "--out", "stopped"], finished)
    assert again.returncode == 0, again.stderr
    assert "[1/4] fold0-seed0: done, not retrained" in again.stderr
    assert "[2/4] fold0-seed1: continuing, stopped at epoch " in again.stderr
    assert ", global step 30 (" in again.stderr
    a, b = _figures(finished / "whole"), _figures(finished / "stopped")
    assert a == b
    assert (finished / "whole" / "oos_predictions.csv").read_bytes() == \
        (finished / "stopped" / "oos_predictions.csv").read_bytes()


def test_a_killed_experiment_process_makes_its_run_save_and_the_rerun_continues(finished: Path) -> None:
    """kill -9 of the experiment: its run gets SIGTERM (PR_SET_PDEATHSIG) and saves its state,
    and the same command continues to the figures of an uninterrupted experiment."""
    import os
    import time

    child = wf_paused([*EXPERIMENT, "--out", "killed"], finished, "train_step:30", 300)  # waits for a signal
    proc = child.proc
    try:
        child.wait_for("PAUSED train_step 30", timeout=300)  # the first run, paused
        (run_pid,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.kill()
        child.finish(timeout=60)
        deadline = time.monotonic() + 120
        while Path(f"/proc/{run_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # it saves its checkpoint, then exits
        assert not Path(f"/proc/{run_pid}").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
    models = finished / "killed" / "runs" / "fold0-seed0" / "models"
    assert list(models.glob("*_interrupted.pth")), child.stderr
    again = _run([*EXPERIMENT, "--out", "killed"], finished)
    assert again.returncode == 0, again.stderr
    assert "[1/4] fold0-seed0: continuing, stopped at epoch " in again.stderr
    assert _figures(finished / "whole") == _figures(finished / "killed")
    assert os.path.getsize(finished / "killed" / "oos_predictions.csv") > 0


def test_two_runs_at_a_time_give_the_figures_of_one_at_a_time(finished: Path) -> None:
    r = _run([*EXPERIMENT, "--jobs", "2", "--out", "parallel"], finished)
    assert r.returncode == 0, r.stderr
    assert "Running 4 run(s), 2 at a time, 1 thread(s) each" in r.stderr
    assert (finished / "parallel" / "runs" / "fold0-seed0" / "console.log").is_file()
    assert _figures(finished / "whole") == _figures(finished / "parallel")
    assert (finished / "whole" / "oos_predictions.csv").read_bytes() == \
        (finished / "parallel" / "oos_predictions.csv").read_bytes()


def test_the_experiment_flags_read_from_the_config_file_and_the_report_has_parquet_and_plots(
        finished: Path) -> None:
    """[walk_forward] in the config file gives the experiment's flags (a flag given wins): the
    same experiment as the flags, so nothing is retrained; the report step writes the Parquet
    twin of the CSV and the three plots."""
    import shutil

    shutil.copytree(finished / "whole", finished / "from_toml")
    (finished / "wf.toml").write_text('[walk_forward]\nfolds = 3\nseeds = [0, 1]\ntest-bars = 80\n'
                                      'out = "from_toml"\n\n[train]\nthreads = 1\n')
    shown = [a for a in TINY if a != "--no-plots"]
    r = _run(["--config", "wf.toml", "--folds", "2", *shown[:-2]], finished)  # --threads from the file
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done, not retrained") == 4 and "starting" not in r.stderr, r.stderr
    out = finished / "from_toml"
    assert _figures(out) == _figures(finished / "whole")
    csv = pd.read_csv(out / "oos_predictions.csv")
    pq = pd.read_parquet(out / "oos_predictions.parquet")
    assert list(pq.columns) == list(csv.columns) and len(pq) == len(csv)
    assert isinstance(pq["time"].dtype, pd.DatetimeTZDtype) and str(pq["time"].dt.tz) == "UTC"
    assert (pq["time"] == pd.to_datetime(csv["time"], utc=True)).all()
    assert np.allclose(pq["model"].to_numpy(), csv["model"].to_numpy(), rtol=1e-7, atol=0)
    for c in pq.columns[4:]:  # realised and every predictor typed alike (zero was int64)
        assert pq[c].dtype == np.float64, c
    assert (pq[["symbol", "fold", "seed"]].astype(str).to_numpy()
            == csv[["symbol", "fold", "seed"]].astype(str).to_numpy()).all()
    for name in ("ic_per_fold.png", "oos_strategies.png", "headline_over_seeds.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    (finished / "bad.toml").write_text('[walk_forward]\nfold = 2\n')
    bad = _run(["--config", "bad.toml", "--out", "from_toml", *TINY], finished)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "bad.toml: unknown key 'fold' in [walk_forward]" in bad.stderr
    assert _figures(out) == _figures(finished / "whole")  # nothing written


@pytest.mark.parametrize("damage", ["truncated", "column dropped", "value edited", "rows twice",
                                    "another fold's file", "text in a number", "twice, no digest"])
def test_a_damaged_run_prediction_file_is_named_and_never_used(finished: Path, damage: str) -> None:
    """Found by the outside attack: a done run's predictions.csv was read unchecked, so a cut or
    edited file changed the figures silently (or ended in a traceback)."""
    import shutil

    from indicator_transformer.integrity import seal_json

    out = finished / f"damaged-{damage.replace(' ', '_').replace(',', '')}"
    shutil.copytree(finished / "whole", out)
    (path,) = (out / "runs" / "fold0-seed0" / "runs").glob("*/predictions.csv")
    lines = path.read_text().splitlines(keepends=True)
    if damage == "truncated":
        path.write_text("".join(lines[:100]))
    elif damage == "column dropped":
        df = pd.read_csv(path)
        df.drop(columns=["realised_return"]).to_csv(path, index=False)
    elif damage == "value edited":
        cells = lines[5].split(",")
        cells[3] = "0.5"
        lines[5] = ",".join(cells)
        path.write_text("".join(lines))
    elif damage in ("rows twice", "twice, no digest"):
        path.write_text("".join(lines + lines[1:]))
        if damage == "twice, no digest":  # a run of an older version: no digest, the contents checked
            ev = out / "runs" / "fold0-seed0" / "models" / "evaluation.json"
            doc = json.loads(ev.read_text())
            doc.pop("sha256")
            doc.pop("predictions")
            ev.write_text(json.dumps(seal_json(doc), indent=2, sort_keys=True))
    elif damage == "another fold's file":
        (other,) = (out / "runs" / "fold1-seed0" / "runs").glob("*/predictions.csv")
        shutil.copyfile(other, path)
    else:
        cells = lines[5].split(",")
        cells[3] = "abc"
        lines[5] = ",".join(cells)
        path.write_text("".join(lines))
    before = (out / "summary.json").read_bytes()
    r = _run([*EXPERIMENT, "--out", out.name], finished)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {path.relative_to(finished)}: " in r.stderr, r.stderr
    assert "This run's test predictions are damaged" in r.stderr
    if damage == "twice, no digest":
        assert "repeats symbol" in r.stderr
    assert (out / "summary.json").read_bytes() == before


def test_runs_trained_with_other_settings_are_not_adopted_when_the_record_is_gone(finished: Path) -> None:
    import shutil

    shutil.copytree(finished / "whole", finished / "orphans")
    (finished / "orphans" / "experiment.json").unlink()
    (finished / "orphans" / "summary.json").unlink()
    r = _run([*EXPERIMENT, "--lr", "0.05", "--out", "orphans"], finished)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "this run was trained with other settings than this experiment gives it (train.lr" in r.stderr
    assert not (finished / "orphans" / "summary.json").exists()


def test_small_mistakes_get_their_own_messages(finished: Path) -> None:
    """Found by the outside attack: --out '' ran in the current folder; --status ignored a broken
    --config; a [walk_forward] value's error named a flag; stale report temporaries stayed."""
    r = _run([*EXPERIMENT, "--out", ""], finished)
    assert r.returncode == 2 and "--out '': expected a folder name" in r.stderr, r.stderr
    assert not (finished / "experiment.json").exists()
    st = _run(["--status", "--config", "missing.toml"], finished)
    assert st.returncode == 2 and "missing.toml: config file not found" in st.stderr, st.stderr
    (finished / "jobs.toml").write_text("[walk_forward]\njobs = -1\n")
    bad = _run(["--config", "jobs.toml", *EXPERIMENT, "--out", "whole"], finished)
    assert bad.returncode == 2 and "jobs.toml: [walk_forward] jobs = -1: expected 1 to 256" in bad.stderr
    stale = finished / "whole" / ".oos_predictions.parquet.4194303.0badc0de.tmp"  # a writer long gone
    stale.write_bytes(b"half")
    old = finished / "whole" / "runs" / "fold1-seed0" / "models" / "checkpoint_epoch_1.pth"
    saved = old.read_bytes()
    old.write_bytes(b"")  # a damaged older checkpoint of a done run: named, not used
    again = _run([*EXPERIMENT, "--out", "whole"], finished)
    old.write_bytes(saved)
    assert again.returncode == 0, again.stderr
    assert not stale.exists()
    assert f"warning: fold1-seed0: {old.relative_to(finished)}: " in again.stderr, again.stderr
    assert "(damaged, not used)" in again.stderr


def test_a_changed_fold_is_named_by_its_index_and_key() -> None:
    from indicator_transformer.experiment.walkforward import differences

    old = {"folds": [{"index": 0, "test_start": "2002-01-25T00:00:00", "test_end": None}]}
    new = {"folds": [{"index": 0, "test_start": "2002-01-28T00:00:00", "test_end": None}]}
    assert differences(old, new) == ['folds[0].test_start "2002-01-25T00:00:00" -> "2002-01-28T00:00:00"']
