"""The sweep command end to end on real processes and a real SQLite study: the space file's
checks, the report files, best.toml reproducing the best trial's model bit for bit, --status,
skipped combinations, and a locked or damaged database as one clear error."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, default_sigint
from sweepproc import SPACE, TINY, outcomes, sweep_run
from trainproc import assert_same_training_state, load

from indicator_transformer.config import Config
from indicator_transformer.errors import UserError
from indicator_transformer.sweep.space import load_space

ONE_EPOCH = [a if a != "2" or TINY[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY)]


@pytest.mark.parametrize(("text", "says"), [
    ("data_dir = {choices = ['a', 'b']}", "'data_dir' cannot be swept: a path"),
    ("seed = {low = 0, high = 3}", "'seed' cannot be swept"),
    ("horizon = {low = 1, high = 3}", "'horizon' cannot be swept: it changes the data"),
    ("skip_bad_files = {choices = [true, false]}", "'skip_bad_files' cannot be swept: a switch"),
    ("threads = {low = 1, high = 2}", "'threads' cannot be swept: it changes only speed"),
    ("learning_rate = {low = 0.1, high = 0.2}", "'learning_rate' is not a setting"),
    ("lr = {low = 0.1}", "lr: expected low and high"),
    ("lr = {low = 0.2, high = 0.1}", "lr: low = 0.2 must be below high = 0.1"),
    ("lr = {low = 0.0, high = 0.1, log = true}", "lr: log = true needs low > 0"),
    ("lr = {low = 0.1, high = 0.5, log = true, step = 0.1}", "lr: log = true cannot be given with step"),
    ("lr = {low = 0.1, high = 2.0}", "lr: 2.0: invalid value for 'lr'"),
    ("dropout = {low = 0.0, high = 1.0}", "dropout: 1.0:"),
    ("layers = {low = 1.5, high = 3}", "layers: low = 1.5: expected a whole number"),
    ("layers = {low = 1, high = 3, base = 2}", "layers: unknown key(s) base"),
    ("layers = 3", "layers = 3: expected a table"),
    ("d_model = {choices = []}", "d_model: choices must be a non-empty list"),
    ("d_model = {choices = [16, 16]}", "hold a value twice"),
    ("normalise = {low = 1, high = 2}", "normalise: a text setting"),
    ("normalise = {choices = ['per-symbol', 'sideways']}", "normalise: 'sideways'"),
    ("d_model = {choices = [30]}\nheads = {choices = [4, 8]}", "no value of d_model and heads"),
    ("", "no settings to sweep"),
    ("lr = [", "not valid TOML"),
    ("lr = {low = 1e-4, high = 1e-2}\n'lr' = {low = 1e-4, high = 1e-3}", "not valid TOML"),
])
def test_a_bad_space_file_names_the_file_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_space(path, Config())
    assert str(path) in str(e.value) and says in str(e.value), str(e.value)


def test_a_good_space_file_gives_optuna_distributions(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text("lr = {low = 1e-4, high = 1e-2, log = true}\n[model]\nd_model = {choices = [16, 32]}\n"
                    "window = {low = 16, high = 64, step = 16}\n")
    space = load_space(path, Config())
    assert space.names() == ["lr", "d_model", "window"]
    dists = [p.distribution() for p in space.params]
    assert dists[0].log and dists[0].low == 1e-4
    assert list(dists[1].choices) == [16, 32]
    assert (dists[2].low, dists[2].high, dists[2].step) == (16, 64, 16)


def _dir(tmp_path: Path, space: str = SPACE) -> Path:
    (tmp_path / "space.toml").write_text(space)
    return tmp_path


@pytest.mark.parametrize(("extra", "says"), [
    (["--lr", "0.01"], "--lr: also swept by space.toml"),
    (["--models-dir", "m"], "--models-dir: set for each trial by the sweep (use --out)"),
    (["--trials", "0"], "--trials 0: expected 1 to 100,000"),
    (["--space", "missing.toml"], "--space missing.toml: no such file"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path: Path, extra: list[str], says: str) -> None:
    d = _dir(tmp_path)
    r = sweep_run(["--space", "space.toml", *TINY, "--out", "sw", *extra], d)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr
    assert not (d / "sw").exists()


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-trial sweep, with plots."""
    d = _dir(tmp_path_factory.mktemp("sweep_done"))
    args = [a for a in TINY if a != "--no-plots"]
    r = sweep_run(["--space", "space.toml", "--trials", "3", "--pruner", "none", "--sweep-seed", "5",
                   *args, "--out", "sw"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    (d / "stderr.txt").write_text(r.stderr)
    return d


def test_the_report_has_the_trials_the_best_one_and_its_test_report(done: Path) -> None:
    out = done / "sw"
    err = (done / "stderr.txt").read_text()
    got = outcomes(out)
    assert [s for _, s, *_ in got] == ["COMPLETE"] * 3
    summary = json.loads((out / "summary.json").read_text())
    best = min(got, key=lambda t: t[3])
    assert summary["best"]["trial"] == best[0] and summary["best"]["val_loss"] == best[3]
    assert summary["best"]["selected_on"] == "validation"
    assert {"model"} <= set(summary["best"]["test"]) or "ic" in str(summary["best"]["test"])
    assert {"ridge", "lightgbm"} <= set(summary["best"]["baselines"])
    assert [r["trial"] for r in summary["trials"]] == [0, 1, 2]
    assert f"Best trial: {best[0]}" in err and f"Test split of trial {best[0]}, selected on validation" in err
    assert "Parameter importances" in err or "no parameter importances" in err
    lines = (out / "trials.csv").read_text().splitlines()
    assert lines[0] == "trial,state,objective,epochs,pruned,seconds,lr,d_model,note" and len(lines) == 4
    for name in ("optimization_history.png", "parallel_coordinate.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each trial is an ordinary run with its report.
    for n in range(3):
        assert (out / "trials" / str(n) / "models" / "evaluation.json").is_file()


def test_best_toml_trains_the_best_trials_model_bit_for_bit(done: Path) -> None:
    out = done / "sw"
    best = json.loads((out / "summary.json").read_text())["best"]["trial"]
    r = subprocess.run([sys.executable, "train_indicator_transformer.py", "--config", str(out / "best.toml"),
                        "--models-dir", str(done / "again"), "--no-progress", "--no-plots"],
                       cwd=done, env=child_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=default_sigint) if (done / "train_indicator_transformer.py").exists() else \
        subprocess.run([sys.executable, "-m", "indicator_transformer.train_main", "--config",
                        str(out / "best.toml"), "--models-dir", str(done / "again"), "--no-progress",
                        "--no-plots"], cwd=done, env=child_env(), capture_output=True, text=True,
                       timeout=300, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load(out / "trials" / str(best) / "models" / "checkpoint_epoch_2.pth")
    b = load(done / "again" / "checkpoint_epoch_2.pth")
    assert_same_training_state(a, b)
    ea = json.loads((out / "trials" / str(best) / "models" / "evaluation.json").read_text())
    eb = json.loads((done / "again" / "evaluation.json").read_text())
    assert ea["test"] == eb["test"] and ea["baselines"] == eb["baselines"]


def test_status_lists_the_trials_without_writing(done: Path) -> None:
    before = (done / "sw" / "sweep.db").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "indicator_transformer", "sweep", "--status", "--out", "sw"],
                       cwd=done, env=child_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 trial(s) complete" in r.stdout and "Best trial:" in r.stdout
    assert r.stdout.count("complete ") >= 3
    assert (done / "sw" / "sweep.db").stat().st_mtime_ns == before


def test_a_finished_sweep_started_again_trains_nothing_and_other_settings_are_refused(done: Path) -> None:
    args = ["--space", "space.toml", "--pruner", "none", "--sweep-seed", "5",
            *[a for a in TINY if a != "--no-plots"], "--out", "sw"]
    r = sweep_run(["--trials", "3", *args], done)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting" not in r.stderr and "continuing" not in r.stderr and "Sweep complete" in r.stderr
    r = sweep_run(["--trials", "3", *args, "--weight-decay", "0.05"], done)
    assert r.returncode == 2, r.stderr
    assert "is another sweep: config.train.weight_decay 0.01 -> 0.05" in r.stderr, r.stderr


def test_values_that_make_no_model_are_skipped_with_the_reason(tmp_path: Path) -> None:
    d = _dir(tmp_path, "d_model = {choices = [8, 12]}\nheads = {choices = [8, 3]}\n")
    r = sweep_run(["--space", "space.toml", "--trials", "6", "--pruner", "none", "--sweep-seed", "0",
                   *[a for a in ONE_EPOCH if a not in ("--heads", "2")], "--out", "sw"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    got = outcomes(d / "sw")
    bad = [t for t in got if (t[2]["d_model"], t[2]["heads"]) in ((8, 3), (12, 8))]
    assert bad and all(t[1] == "FAIL" for t in bad), got
    assert all(t[1] == "COMPLETE" for t in got if t not in bad), got
    assert "skipped, its values make no valid model" in r.stderr and "divisor of d_model" in r.stderr
    rows = (d / "sw" / "trials.csv").read_text()
    assert "divisor of d_model" in rows
    for t in bad:
        assert not (d / "sw" / "trials" / str(t[0])).exists()


def test_a_damaged_database_is_one_clear_error_and_touches_no_trial(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    (d / "sw" / "trials" / "0").mkdir(parents=True)
    keep = d / "sw" / "trials" / "0" / "note.txt"
    keep.write_text("mine")
    (d / "sw" / "sweep.db").write_bytes(b"\x00garbage" * 100)
    r = sweep_run(["--space", "space.toml", *TINY, "--out", "sw"], d)
    assert r.returncode == 1, r.stderr
    assert "sweep storage sqlite:///" in r.stderr and "not an SQLite database" in r.stderr
    assert "Traceback" not in r.stderr and keep.read_text() == "mine"


def test_a_locked_database_is_one_clear_error(tmp_path: Path) -> None:
    import optuna

    d = _dir(tmp_path)
    (d / "sw").mkdir()
    url = f"sqlite:///{d / 'sw' / 'sweep.db'}"
    optuna.create_study(storage=url, study_name="other")
    con = sqlite3.connect(d / "sw" / "sweep.db", isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        env = child_env()
        env["INDICATOR_TRANSFORMER_SWEEP_DB_TIMEOUT"] = "0.5"
        r = subprocess.run([sys.executable, "-m", "indicator_transformer", "sweep", "--space", "space.toml",
                            *TINY, "--out", "sw"], cwd=d, env=env, capture_output=True, text=True,
                           timeout=300, preexec_fn=default_sigint)
    finally:
        con.rollback()
        con.close()
    assert r.returncode == 1, r.stderr
    assert "database is locked" in r.stderr and "another process holds a write lock" in r.stderr
    assert "Traceback" not in r.stderr


def test_jobs_2_runs_every_trial_once_each_console_in_its_folder(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    r = sweep_run(["--space", "space.toml", "--trials", "3", "--jobs", "2", "--pruner", "none", *ONE_EPOCH,
                   "--out", "sw"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Running up to 2 trials at a time" in r.stderr
    assert [s for _, s, *_ in outcomes(d / "sw")] == ["COMPLETE"] * 3
    for n in range(3):
        trial = d / "sw" / "trials" / str(n)
        assert len(list((trial / "runs").iterdir())) == 1
        assert "Report:" in (trial / "console.log").read_text()


@pytest.mark.parametrize(("url", "says"), [
    ("sqlite:////nonexistent-folder/x.db", "unable to open database file"),
    ("postgresql://me:secret@127.0.0.1:1/db", "postgresql://me:***@127.0.0.1:1/db"),
    ("nonsense://x", "opening the database failed"),
])
def test_an_unreachable_database_is_one_clear_error_and_writes_nothing(tmp_path: Path, url: str,
                                                                        says: str) -> None:
    d = _dir(tmp_path)
    r = sweep_run(["--space", "space.toml", *TINY, "--out", "sw", "--storage", url], d)
    assert r.returncode in (1, 2), r.stderr
    assert says in r.stderr and "secret" not in r.stderr and "Traceback" not in r.stderr
    assert not (d / "sw").exists()


def test_a_new_study_refuses_trial_folders_of_another_sweep(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    old = d / "sw" / "trials" / "0" / "models"
    old.mkdir(parents=True)
    (old / "note.txt").write_text("an earlier sweep's trial")
    r = sweep_run(["--space", "space.toml", *TINY, "--out", "sw"], d)
    assert r.returncode == 2, r.stderr
    assert "holds the trials of another sweep" in r.stderr and "Traceback" not in r.stderr
    assert (old / "note.txt").read_text() == "an earlier sweep's trial"
