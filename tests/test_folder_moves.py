"""A models or runs folder taken while a run prepares, or moved under a live run.

Found by the fourth outside attack on issue 18: a second fresh run was let in while the first one
prepared (the lock was taken only after the preparation); a resume whose models/ was moved during
its preparation made a new models/ at the old name; a runs/ folder moved under a live run was
rebuilt, half, at the old name; a move during the write of evaluation.json was reported as a
missing file; a resume beside a fresh run that had no checkpoint yet said "no valid checkpoint"
instead of naming the run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from trainproc import SMALL, Child, pause_env, run, start

from indicator_transformer.atomic import storage_error

TRAIN = str(REPO_ROOT / "train_indicator_transformer.py")
RESUME = str(REPO_ROOT / "resume_training.py")


_start, _run = start, run


def _paused(point: str, timeout_s: int = 300) -> dict[str, str]:
    env = pause_env(point)
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = str(timeout_s)
    return env


def _kill(*children: Child | None) -> None:
    for c in children:
        if c is not None and c.proc.poll() is None:
            c.proc.kill()
            c.finish()


def _moved_at(tmp_path: Path, args: list[str], point: str, name: str) -> tuple[int, Child]:
    """Start ``args`` paused at ``point`` (3 s), rename models/ to models.old there, let it go on
    to its end: (exit code, the child)."""
    child = _start(args, tmp_path, _paused(point, 3))
    try:
        child.wait_for(f"PAUSED {point.partition(':')[0]} {name}")
        (tmp_path / "models").rename(tmp_path / "models.old")
        code = child.finish(timeout=400)
    finally:
        _kill(child)
    return code, child


def _error_line(child: Child) -> str:
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    return line


def test_a_second_run_during_the_first_ones_preparation_is_refused_before_it_prepares(tmp_path: Path) -> None:
    first = _start([TRAIN, *SMALL], tmp_path, _paused("prepare_symbol:1"))
    try:
        first.wait_for("PAUSED prepare_symbol 1")  # no checkpoint yet: the first run is preparing
        for args in ([TRAIN, *SMALL, "--seed", "5"], [TRAIN, *SMALL, "--resume", "auto"],
                     [RESUME, "--no-progress"]):
            r = _run(args, tmp_path)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert f"models/ is in use by PID {first.proc.pid} (train, started " in r.stderr, r.stderr
            assert "Preparing " not in r.stderr  # refused at once, not after its own preparation
        first.proc.send_signal(signal.SIGINT)
        assert first.finish() == 130, first.stderr
    finally:
        _kill(first)
    # The folder made for the lock held nothing when the stopped run let it go: it is removed.
    assert not (tmp_path / "models").exists()


def test_bad_data_leaves_no_models_folder_behind(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "AAA.csv").write_text("date,open,high,low,close,volume\nnot a date,1,1,1,1,1\n")
    r = _run([TRAIN, *SMALL, "--data-dir", "data", "--models-dir", "fresh/models"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "fresh" / "models").exists()


def test_a_resume_whose_models_folder_is_moved_while_it_prepares_writes_nothing_at_the_old_name(
        tmp_path: Path) -> None:
    r = _run([TRAIN, *SMALL, "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    resume = _start([RESUME, "--epochs", "1", "--no-progress", "--no-plots", "--cache-dir", "cache2"],
                    tmp_path, _paused("prepare_symbol:1", 3))
    try:
        resume.wait_for("PAUSED prepare_symbol 1")  # it holds models/ and prepares
        before = sorted(p.name for p in (tmp_path / "models").iterdir())
        (tmp_path / "models").rename(tmp_path / "models.old")
        code = resume.finish()
    finally:
        _kill(resume)
    assert code == 1 and "Traceback" not in resume.stderr, resume.stderr
    assert f"the folder this run holds was moved to {tmp_path / 'models.old'} while it ran" in \
        _error_line(resume)
    assert not (tmp_path / "models").exists()  # no new folder, no files of this resume
    assert sorted(p.name for p in (tmp_path / "models.old").iterdir()) == before


def test_a_resume_beside_a_fresh_run_without_checkpoints_names_that_run(tmp_path: Path) -> None:
    first = _start([TRAIN, *SMALL], tmp_path, _paused("train_step:3"))
    try:
        first.wait_for("PAUSED train_step 3")  # its first checkpoint comes at the epoch's end
        r = _run([RESUME, "--no-progress"], tmp_path)
    finally:
        _kill(first)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"models/ is in use by PID {first.proc.pid} (train, started " in r.stderr, r.stderr
    assert "has written no checkpoint yet" in r.stderr and "no valid checkpoint" not in r.stderr


def test_a_runs_folder_moved_under_a_live_run_is_not_rebuilt_at_the_old_name(tmp_path: Path) -> None:
    child = _start([TRAIN, *SMALL], tmp_path, _paused("train_step:5", 3))
    try:
        child.wait_for("PAUSED train_step 5")
        (tmp_path / "runs").rename(tmp_path / "runs.old")
        code = child.finish()
    finally:
        _kill(child)
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    assert "the run folder was moved or removed while the run ran" in _error_line(child)
    assert not (tmp_path / "runs").exists()
    (run,) = (tmp_path / "runs.old").iterdir()
    assert "Training " in (run / "train.log").read_text()  # the log went on where the folder went
    assert (tmp_path / "models" / "checkpoint_epoch_1.pth").is_file()  # saved before metrics.csv


def test_a_models_folder_moved_while_its_report_is_written_names_the_move(tmp_path: Path) -> None:
    code, child = _moved_at(tmp_path, [TRAIN, *SMALL, "--epochs", "1"], "before_commit:evaluation.json",
                            "evaluation.json")
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    assert f"the folder this run holds was moved to {tmp_path / 'models.old'} while it ran" in \
        _error_line(child)
    assert not (tmp_path / "models").exists()
    assert not [p for p in (tmp_path / "models.old").iterdir() if p.name.endswith(".tmp")]  # no leftover


def test_a_missing_folder_in_a_write_is_said_plainly() -> None:
    e = storage_error(Path("/x/models/evaluation.json"), OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert e is not None
    assert str(e) == ("/x/models/evaluation.json: could not be written: No such file or directory. /x/models "
                      "(or a folder above it) was moved or removed while the command ran: put it back or "
                      "choose another folder, and run the command again (a stopped training continues "
                      "with resume_training.py)")


def test_two_models_folders_sharing_runs_never_share_a_run_folder(tmp_path: Path) -> None:
    """Found by the fifth outside attack: `--resume auto` in models_b, finding no checkpoint,
    adopted the live run folder of models_a (both runs logged into it; B's summary was lost)."""
    a = _start([TRAIN, *SMALL, "--models-dir", "models_a"], tmp_path, _paused("train_step:5"))
    try:
        a.wait_for("PAUSED train_step 5")
        r = _run([TRAIN, *SMALL, "--epochs", "1", "--models-dir", "models_b", "--resume", "auto"], tmp_path)
    finally:
        _kill(a)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("Run folder: ")]
    assert line.endswith("(new run)"), line
    a_line = next(ln for ln in a.lines if ln.startswith("Run folder: "))
    assert a_line.split()[2] != line.split()[2]
    a_log = (Path(a_line.split()[2]) / "train.log").read_text()
    assert "models_b" not in a_log and a_log.count("Run folder:") == 1


def test_a_models_folder_moved_during_training_keeps_every_step_where_it_went(tmp_path: Path) -> None:
    """Found by the fifth outside attack: the move was noticed at the next checkpoint, so the
    epoch's steps were trained for nothing and a stop after the move saved nothing."""
    code, child = _moved_at(tmp_path, [TRAIN, *SMALL], "train_step:5", "5")
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    line = _error_line(child)
    assert "saved its state there as checkpoint_epoch_1_interrupted.pth and stopped" in line, line
    assert " --models-dir " + str(tmp_path / "models.old") in line
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed"]["global_step"] == 5
    saved = tmp_path / "models.old" / "checkpoint_epoch_1_interrupted.pth"
    assert summary["checkpoints"]["newest"] == str(saved)
    assert not (tmp_path / "models").exists()
    resumed = _run([RESUME, "--models-dir", "models.old", "--no-progress", "--no-plots"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from models.old/checkpoint_epoch_1_interrupted.pth: epoch 1, step 5/" in resumed.stderr


def test_a_move_while_a_checkpoint_is_written_leaves_it_complete_where_the_folder_went(
        tmp_path: Path) -> None:
    code, child = _moved_at(tmp_path, [TRAIN, *SMALL], "before_commit:best.pth", "best.pth")
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    assert "saved its state there as checkpoint_epoch_1.pth and stopped" in _error_line(child)
    names = sorted(p.name for p in (tmp_path / "models.old").iterdir())
    assert names == [".lock", "best.pth", "checkpoint_epoch_1.pth"], names  # no temporary file


def test_a_resume_of_a_named_checkpoint_whose_folder_moved_before_it_held_it_writes_nothing(
        tmp_path: Path) -> None:
    """Found by the fifth outside attack: --checkpoint made a new models/ at the old name."""
    assert _run([TRAIN, *SMALL, "--epochs", "1"], tmp_path).returncode == 0
    code, resume = _moved_at(tmp_path, [RESUME, "--checkpoint", "models/checkpoint_epoch_1.pth", "--epochs",
                                        "1", "--no-progress"], "claim:0", "0")
    assert code == 2 and "Traceback" not in resume.stderr, resume.stderr
    assert "models/ was moved or removed after this command chose what to continue there" in resume.stderr
    assert not (tmp_path / "models").exists()


def test_folders_made_for_the_lock_are_removed_with_their_parents(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "AAA.csv").write_text("date,open,high,low,close,volume\nnot a date,1,1,1,1,1\n")
    r = _run([TRAIN, *SMALL, "--data-dir", "data", "--models-dir", "x/y/models"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--cache-dir", "runs"], "'cache_dir': 'runs' (expected a folder other than the runs folder beside "
                              "models_dir"),
    (["--models-dir", "m"], "'models_dir': 'm' (expected a folder other than cache_dir (cache))"),
])
def test_one_folder_in_two_roles_is_refused_also_through_a_link(tmp_path: Path, args: list[str],
                                                                  message: str) -> None:
    (tmp_path / "m").symlink_to("cache")
    r = _run([TRAIN, *SMALL, *args], tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_models_folder_reached_through_a_link_gets_only_its_usual_checkpoints(tmp_path: Path) -> None:
    """Found by the sixth outside attack: the resolved path of a linked folder counted as a move,
    so an interrupted checkpoint was written after every step of a run that was never stopped."""
    (tmp_path / "real").mkdir()
    (tmp_path / "models").symlink_to("real")
    r = _run([TRAIN, *SMALL], tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "real").iterdir())
    assert not [n for n in names if n.endswith("_interrupted.pth")], names


def test_a_stop_after_the_models_folder_moved_reports_the_checkpoint_saved_where_it_went(
        tmp_path: Path) -> None:
    """Found by the sixth outside attack: ``mv models m2`` then Ctrl-C saved the checkpoint in m2,
    but the run said "the interrupted checkpoint could not be saved" and its summary named none."""
    child = _start([TRAIN, *SMALL], tmp_path, _paused("train_step:5", 300))
    try:
        child.wait_for("PAUSED train_step 5")
        (tmp_path / "models").rename(tmp_path / "m2")
        child.proc.send_signal(signal.SIGINT)
        code = child.finish(timeout=400)
    finally:
        _kill(child)
    assert code == 130 and "Traceback" not in child.stderr, child.stderr
    saved = tmp_path / "m2" / "checkpoint_epoch_1_interrupted.pth"
    assert f"Checkpoint saved: {saved}" in child.lines, child.stderr
    assert "could not be saved" not in child.stderr
    assert any(ln.startswith("warning: ") and "--models-dir " + str(tmp_path / "m2") in ln
               for ln in child.lines), child.stderr
    assert child.lines[-1] == "Cleanup complete", child.lines[-3:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert summary["interrupted"]["checkpoint"] == str(saved)
    assert "checkpoint_error" not in summary["interrupted"]
    assert not (tmp_path / "models").exists()
    resumed = _run([RESUME, "--models-dir", "m2", "--no-progress", "--no-plots"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from m2/checkpoint_epoch_1_interrupted.pth: epoch 1, step 5/" in resumed.stderr
