"""resume_training.py as a user runs it: --list, --checkpoint, --epochs, conflicts, changed data."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, load, pause_env

TINY = ["--window", "8", "--batch-size", "64", "--d-model", "8", "--heads", "2", "--layers", "1",
        "--no-progress"]


@pytest.fixture
def trained(run_python, tmp_path: Path) -> Path:
    """A finished 2-epoch run; returns its models folder (cache next to it)."""
    r = run_python(["train_indicator_transformer.py", *SMALL, "--cache-dir", str(tmp_path / "cache"),
                    "--models-dir", str(tmp_path / "models")])
    assert r.returncode == 0, r.stderr
    return tmp_path / "models"


def interrupt(tmp_path: Path, point: str) -> Path:
    child = Child(subprocess.Popen(
        [sys.executable, "train_indicator_transformer.py", *SMALL, "--cache-dir", str(tmp_path / "cache"),
         "--models-dir", str(tmp_path / "models")], cwd=REPO_ROOT, env=pause_env(point),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    return tmp_path / "models"


def test_list_shows_a_table_newest_last_with_corrupt_files_marked(run_python, trained: Path) -> None:
    (trained / "checkpoint_epoch_9.pth").write_bytes(b"\x00" * 100)
    r = run_python(["resume_training.py", "--list", "--models-dir", str(trained)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["file", "line", "epoch", "step"]
    rows = [ln for ln in lines if ln.startswith(str(trained))]
    assert "checkpoint_epoch_9.pth" in rows[0] and "CORRUPT" in rows[0]
    assert "checkpoint_epoch_1.pth" in rows[1]
    assert rows[-1].split()[0].endswith("best.pth") or rows[-1].split()[0].endswith("checkpoint_epoch_2.pth")
    assert any("interrupted" in ln for ln in lines[:1])
    assert lines[-1].startswith("A plain resume continues line ") and "checkpoint_epoch_2.pth" in lines[-1]


def test_resume_without_checkpoints_exits_2_with_a_hint(run_python, tmp_path: Path) -> None:
    r = run_python(["resume_training.py", "--models-dir", str(tmp_path)])
    assert r.returncode == 2
    assert "no valid checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_a_missing_or_corrupt_checkpoint_path_exits_2_naming_it(run_python, tmp_path: Path) -> None:
    r = run_python(["resume_training.py", "--checkpoint", str(tmp_path / "nope.pth")])
    assert r.returncode == 2 and "nope.pth" in r.stderr
    bad = tmp_path / "checkpoint_epoch_1.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    r = run_python(["resume_training.py", "--checkpoint", str(bad)])
    assert r.returncode == 2 and str(bad) in r.stderr and "corrupt" in r.stderr


def test_a_conflicting_architecture_flag_is_an_error_naming_it(run_python, trained: Path) -> None:
    cache = ["--cache-dir", str(trained.parent / "cache")]
    r = run_python(["resume_training.py", "--models-dir", str(trained), "--d-model", "32", "--epochs", "1",
                    *cache])
    assert r.returncode == 2
    assert "--d-model 32" in r.stderr and "d_model = 16" in r.stderr
    # The same value as the checkpoint is not a conflict.
    r = run_python(["resume_training.py", "--models-dir", str(trained), "--d-model", "16", *cache])
    assert r.returncode == 0, r.stderr
    assert "Nothing to do" in r.stdout


def test_epochs_trains_that_many_more_after_the_last_completed_epoch(run_python, trained: Path) -> None:
    r = run_python(["resume_training.py", "--models-dir", str(trained), "--epochs", "1", "--no-progress",
                    "--cache-dir", str(trained.parent / "cache")])
    assert r.returncode == 0, r.stderr
    state = load(trained / "checkpoint_epoch_3.pth")
    assert [e["epoch"] for e in state["loss_history"]["epochs"]] == [1, 2, 3]
    assert len(state["loss_history"]["steps"]) == 3 * STEPS_PER_EPOCH


def test_an_interrupted_epoch_counts_as_one_of_the_epochs(run_python, tmp_path: Path) -> None:
    models = interrupt(tmp_path, f"train_step:{STEPS_PER_EPOCH + 5}")
    r = run_python(["resume_training.py", "--models-dir", str(models), "--epochs", "1", "--no-progress",
                    "--cache-dir", str(tmp_path / "cache")])
    assert r.returncode == 0, r.stderr
    assert (models / "checkpoint_epoch_2.pth").exists()
    assert not (models / "checkpoint_epoch_3.pth").exists()


def test_resume_skips_a_corrupt_newest_checkpoint_with_a_warning(run_python, tmp_path: Path) -> None:
    models = interrupt(tmp_path, "train_step:40")
    newest = models / "checkpoint_epoch_2_interrupted.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    r = run_python(["resume_training.py", "--models-dir", str(models), "--no-progress",
                    "--cache-dir", str(tmp_path / "cache")])
    assert r.returncode == 0, r.stderr
    assert "skipping corrupt checkpoint" in r.stderr and "checkpoint_epoch_2_interrupted.pth" in r.stderr
    assert "Resuming from" in r.stderr and "checkpoint_epoch_1.pth" in r.stderr


def test_changed_data_is_refused_unless_allowed(run_python, make_data_dir, tmp_path: Path) -> None:
    data = make_data_dir(3, 400)
    common = ["--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models")]
    r = run_python(["train_indicator_transformer.py", "--data-dir", str(data), "--epochs", "1", *TINY,
                    *common])
    assert r.returncode == 0, r.stderr
    f = data / "S001.csv"
    df = pd.read_csv(f)
    df.loc[200, "Volume"] += 1
    df.to_csv(f, index=False)
    r = run_python(["resume_training.py", "--epochs", "1", "--no-progress", *common])
    assert r.returncode == 2
    assert "changed" in r.stderr and "S001" in r.stderr and "--allow-data-change" in r.stderr
    assert not (tmp_path / "models" / "checkpoint_epoch_2.pth").exists()
    r = run_python(["resume_training.py", "--epochs", "1", "--allow-data-change", "--no-progress", *common])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / "checkpoint_epoch_2.pth").exists()


def test_resume_from_another_folder_finds_relative_data_or_says_where_the_path_came_from(
        run_python, make_data_dir, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    make_data_dir(3, 400, name="run/data")
    r = run_python([str(REPO_ROOT / "train_indicator_transformer.py"), "--data-dir", "data", "--epochs", "1",
                    *TINY], cwd=run_dir)
    assert r.returncode == 0, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    common = ["--checkpoint", str(run_dir / "models" / "checkpoint_epoch_1.pth"), "--epochs", "1",
              "--cache-dir", str(run_dir / "cache"), "--no-progress"]
    r = run_python([str(REPO_ROOT / "resume_training.py"), *common], cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"using data_dir {run_dir / 'data'} recorded in" in r.stderr
    # Moved away: the error says the path came from the checkpoint and which flag overrides it.
    (run_dir / "data").rename(tmp_path / "moved")
    r = run_python([str(REPO_ROOT / "resume_training.py"), *common], cwd=elsewhere)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "recorded in this checkpoint" in r.stderr and "--data-dir" in r.stderr
    r = run_python([str(REPO_ROOT / "resume_training.py"), *common, "--data-dir", str(tmp_path / "moved")],
                   cwd=elsewhere)
    assert r.returncode == 0, r.stderr


def test_a_data_location_flag_replaces_the_other_kind_recorded_in_the_checkpoint(
        run_python, make_data_dir, tmp_path: Path) -> None:
    data = make_data_dir(3, 400)
    common = ["--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models")]
    r = run_python(["train_indicator_transformer.py", "--data-dir", str(data), "--epochs", "1", *TINY,
                    *common])
    assert r.returncode == 0, r.stderr
    panel = tmp_path / "panel.csv"
    frames = [pd.read_csv(f).assign(Symbol=f.stem) for f in sorted(data.glob("*.csv"))]
    pd.concat(frames).to_csv(panel, index=False)
    r = run_python(["resume_training.py", "--epochs", "1", "--data-file", str(panel), "--allow-data-change",
                    "--no-progress", *common])
    assert r.returncode == 0, r.stderr
    assert "not both" not in r.stderr and str(panel) in r.stderr


def test_a_kill_while_the_last_epoch_checkpoint_is_written_is_repaired_by_the_resume(tmp_path: Path) -> None:
    """best.pth is written first and checkpoint_epoch_2.pth second, from the same bytes: a kill
    between the two leaves best.pth the newest checkpoint. The resume continues from it and first
    writes the missing epoch checkpoint, so the folder ends as an uninterrupted run's does."""
    from conftest import child_env

    args = [*SMALL, "--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models")]
    child = Child(subprocess.Popen([sys.executable, "train_indicator_transformer.py", *args], cwd=REPO_ROOT,
                                   env=pause_env("before_commit:checkpoint_epoch_2.pth"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=default_sigint))
    child.wait_for("PAUSED before_commit checkpoint_epoch_2.pth")
    child.proc.kill()
    child.finish(timeout=60)
    models = tmp_path / "models"
    assert not (models / "checkpoint_epoch_2.pth").exists()
    best = load(models / "best.pth")
    assert best["epoch"] == 2 and best["epoch_complete"], "this configuration's epoch 2 must be its best"
    r = subprocess.run([sys.executable, "train_indicator_transformer.py", *args, "--resume", "auto"],
                       cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    assert "restored it from best.pth" in r.stderr
    assert load(models / "checkpoint_epoch_2.pth")["global_step"] == best["global_step"]
    assert (models / "evaluation.json").exists()
