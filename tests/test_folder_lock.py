"""Two processes in one models folder: the second is refused naming the first, never moves, deletes
or overwrites its files; readers never block; a lock left by a killed process is taken over.

Reproduces issue 18's first case: a second run started once the first had written a checkpoint
moved the first run's files to previous_runs/ while it trained, and their retention deleted each
other's checkpoints; both exited 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, pause_env, run, start

from indicator_transformer.folder_lock import LOCK_NAME, FolderInUse, hold_folder

TRAIN = str(REPO_ROOT / "train_indicator_transformer.py")
RESUME = str(REPO_ROOT / "resume_training.py")


_start, _run = start, run


def _paused(point: str) -> dict[str, str]:
    env = pause_env(point)
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "300"  # held until the test signals it
    return env


def _files(models: Path) -> dict[str, int]:
    return {str(p.relative_to(models)): p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()}


def test_a_second_run_resume_and_new_run_in_a_live_runs_folder_are_refused_and_touch_nothing(
        tmp_path: Path) -> None:
    first = _start([TRAIN, *SMALL, "--epochs", "3"], tmp_path, _paused("train_step:40"))
    try:
        first.wait_for("PAUSED train_step 40")  # epoch 1's checkpoint is written, the run is live
        models = tmp_path / "models"
        before = _files(models)
        assert "checkpoint_epoch_1.pth" in before
        for args in ([TRAIN, *SMALL, "--seed", "5"], [RESUME, "--epochs", "1", "--no-progress"],
                     [TRAIN, *SMALL, "--resume", "auto"]):
            r = _run(args, tmp_path)
            assert r.returncode == 2, r.stderr
            assert f"models/ is in use by PID {first.proc.pid} (" in r.stderr, r.stderr
            assert "use another --models-dir or stop it" in r.stderr and "Traceback" not in r.stderr
            assert " parameters on " not in r.stderr  # refused before it trains or writes anything
        assert _files(models) == before and not (models / "previous_runs").exists()
        # Readers do not take the lock: they run while the run is live.
        listing = _run([RESUME, "--list"], tmp_path)
        assert listing.returncode == 0 and "checkpoint_epoch_1.pth" in listing.stdout, listing.stderr
        pred = _run(["-m", "indicator_transformer", "predict", "--checkpoint",
                     "models/checkpoint_epoch_1.pth",
                     "--no-progress"], tmp_path)
        assert pred.returncode == 0, pred.stderr
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        first.finish()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_resumes(tmp_path: Path) -> None:
    first = _start([TRAIN, *SMALL, "--epochs", "3"], tmp_path, _paused("train_step:40"))
    first.wait_for("PAUSED train_step 40")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.finish()
    assert (tmp_path / "models" / LOCK_NAME).exists()  # the file stays; the kernel freed the flock
    r = _run([RESUME, "--epochs", "1", "--no-progress", "--no-plots"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Resuming from models/checkpoint_epoch_1.pth" in r.stderr


def test_two_runs_started_at_the_same_instant_one_trains_and_the_other_is_refused(tmp_path: Path) -> None:
    env = _paused("train_step:1")
    a, b = (_start([TRAIN, *SMALL], tmp_path, env) for _ in range(2))
    try:
        deadline = time.monotonic() + 240
        while a.proc.poll() is None and b.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        refused, live = (a, b) if a.proc.poll() is not None else (b, a)
        assert refused.finish() == 2, refused.stderr
        assert f"is in use by PID {live.proc.pid} (train, started " in refused.stderr
        live.wait_for("PAUSED train_step 1")
    finally:
        for c in (a, b):
            if c.proc.poll() is None:
                c.proc.kill()
            c.finish()


def test_the_lock_in_process_names_its_holder_frees_on_exit_and_forked_children_do_not_keep_it(
        tmp_path: Path) -> None:
    m = tmp_path / "m"
    read, write = os.pipe()
    ready_r, ready_w = os.pipe()
    with hold_folder(m, "train"):
        (m / "checkpoint_epoch_1.pth").write_bytes(b"x")  # written by the holder: the folder stays
        with pytest.raises(FolderInUse, match=rf"is in use by PID {os.getpid()} \(train, started "):
            with hold_folder(m, "resume"):
                pass
        pid = os.fork()  # like a preparation worker: it outlives the block below
        if pid == 0:
            os.close(write)
            os.write(ready_w, b"r")  # the at-fork handlers have run by now
            os.read(read, 1)
            os._exit(0)
        assert os.read(ready_r, 1) == b"r"
    os.close(read)
    try:
        assert (m / LOCK_NAME).read_bytes() == b""  # no stale holder name
        with hold_folder(m, "again"):  # free although the child is still alive
            pass
    finally:
        os.close(write)
        os.waitpid(pid, 0)


def test_a_resume_whose_choice_went_stale_while_it_prepared_is_refused_and_moves_nothing(
        tmp_path: Path) -> None:
    """Found by an outside attack: a resume chose epoch 1's checkpoint while a run was live, and
    took the lock once that run had ended during its preparation. It then forked a new line from
    epoch 1 and moved the finished run's files aside. Now the choice is checked once the lock is held."""
    first = _start([TRAIN, *SMALL, "--epochs", "3"], tmp_path, _paused("train_step:40"))
    env = pause_env("claim:0")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "12"  # the first run stops meanwhile (in ~2 s)
    second = None
    try:
        first.wait_for("PAUSED train_step 40")  # only checkpoint_epoch_1.pth exists
        second = _start([RESUME, "--no-progress", "--no-plots", "--cache-dir", "cache2"], tmp_path, env)
        second.wait_for("PAUSED claim 0")  # it chose epoch 1's checkpoint, not yet the lock
        first.proc.send_signal(signal.SIGINT)  # the live run writes its interrupted checkpoint, ends
        assert first.finish() == 130, first.stderr
        models = tmp_path / "models"
        before = _files(models)
        assert second.finish() == 2, second.stderr
    finally:
        for child in (first, second):
            if child is not None and child.proc.poll() is None:
                child.proc.kill()
    err = second.stderr
    assert "models/ changed after this command chose its checkpoint" in err, err
    assert "checkpoint_epoch_2_interrupted.pth" in err and "Traceback" not in err
    assert " parameters on " not in err
    # Only the holder file changed (it named the resume while it held the folder).
    assert {k: v for k, v in _files(models).items() if k != LOCK_NAME} == \
        {k: v for k, v in before.items() if k != LOCK_NAME}
    assert not (models / "previous_runs").exists()


def test_removing_the_lock_file_by_hand_does_not_let_a_second_run_in(tmp_path: Path) -> None:
    """Found by an outside attack: the flock was on models/.lock, so `rm models/.lock` let a second
    run lock a new file and train beside the live one. The flock is on the folder now."""
    first = _start([TRAIN, *SMALL, "--epochs", "3"], tmp_path, _paused("train_step:40"))
    try:
        first.wait_for("PAUSED train_step 40")
        models = tmp_path / "models"
        (models / LOCK_NAME).unlink()
        before = _files(models)
        r = _run([TRAIN, *SMALL, "--seed", "5"], tmp_path)
        assert r.returncode == 2 and "models/ is in use by" in r.stderr, r.stderr
        after = _files(models)
        assert {k: v for k, v in after.items() if k != LOCK_NAME} == before  # nothing moved or written
        assert not (models / "previous_runs").exists()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        first.finish()


@pytest.mark.parametrize("where", ["models/.lock", "cache/.in-use"])
def test_a_named_pipe_at_a_lock_file_is_one_error_line_not_a_hang(tmp_path: Path, where: str) -> None:
    """Found by an outside attack: a FIFO at models/.lock blocked the open for ever (and the first
    SIGTERM did not end it)."""
    fifo = tmp_path / where
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, TRAIN, *SMALL, "--epochs", "1"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True, timeout=180, preexec_fn=default_sigint)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert where.split("/")[1] in line and "named pipe" in line, line


def test_ctrl_c_right_after_the_report_exits_without_a_traceback(tmp_path: Path) -> None:
    """Found by an outside attack: a SIGINT just after the last line (Report: ...) met Python's
    default handler during the interpreter's exit: death by SIGINT, or a KeyboardInterrupt traceback
    from an atexit callback."""
    env = pause_env("exiting:0")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "3"  # an ignored signal does not end the pause
    child = _start([TRAIN, *SMALL, "--epochs", "1"], tmp_path, env)
    try:
        child.wait_for("PAUSED exiting 0")  # after the report, the handler given back
        child.proc.send_signal(signal.SIGINT)
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert code == 0, child.stderr  # the work is done
    assert "Traceback" not in child.stderr and "KeyboardInterrupt" not in child.stderr, child.stderr
    assert "Exception ignored" not in child.stderr


def test_a_resume_whose_chosen_file_was_rewritten_under_the_same_name_is_refused(tmp_path: Path) -> None:
    """Found by the second outside attack: a second stop within one epoch rewrites
    checkpoint_epoch_1_interrupted.pth under the same name; comparing names only let the resume
    fork the older state. The line, step and time stamp are compared now."""
    first = _start([TRAIN, *SMALL, "--epochs", "3"], tmp_path, _paused("train_step:3"))
    first.wait_for("PAUSED train_step 3")
    first.proc.send_signal(signal.SIGINT)
    assert first.finish() == 130, first.stderr  # checkpoint_epoch_1_interrupted.pth at step 3
    live = _start([RESUME, "--no-progress", "--no-plots"], tmp_path, _paused("train_step:6"))
    env = pause_env("claim:0")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "12"  # the live resume stops meanwhile (in ~2 s)
    second = None
    try:
        live.wait_for("PAUSED train_step 6")
        second = _start([RESUME, "--no-progress", "--no-plots", "--cache-dir", "cache2"], tmp_path, env)
        second.wait_for("PAUSED claim 0")  # it chose the step-3 file
        live.proc.send_signal(signal.SIGINT)  # the same name now holds step 6
        assert live.finish() == 130, live.stderr
        assert second.finish() == 2, second.stderr
    finally:
        for child in (live, second):
            if child is not None and child.proc.poll() is None:
                child.proc.kill()
    assert "models/ changed after this command chose its checkpoint" in second.stderr, second.stderr
    assert not (tmp_path / "models" / "previous_runs").exists()


def test_a_models_folder_moved_under_a_live_run_gets_none_of_its_later_files(tmp_path: Path) -> None:
    """Found by the second outside attack: after `mv models models.old` (or rm -rf) a second run
    made a new models/ and both wrote into it. The live run now notices at its next write."""
    env = pause_env("train_step:5")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "3"  # the pause ends by itself: training goes on
    child = _start([TRAIN, *SMALL, "--epochs", "2"], tmp_path, env)
    try:
        child.wait_for("PAUSED train_step 5")
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models").rename(tmp_path / "models.old")
        (tmp_path / "models").mkdir()  # as a second run would make it
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert f"the folder this run holds was moved to {tmp_path / 'models.old'} while it ran" in line, line
    assert "where another folder is now" in line
    # It stopped at once, its state saved where the folder went (the lock still holds it there).
    assert "saved its state there as checkpoint_epoch_1_interrupted.pth and stopped" in line, line
    assert (tmp_path / "models.old" / "checkpoint_epoch_1_interrupted.pth").is_file()
    assert list((tmp_path / "models").iterdir()) == []  # nothing of this run in the new folder


def test_a_named_pipe_at_the_cache_manifest_is_distrusted_not_waited_on(tmp_path: Path) -> None:
    """Found by the second outside attack: a FIFO at cache/manifest.json blocked the open for ever."""
    (tmp_path / "cache").mkdir()
    os.mkfifo(tmp_path / "cache" / "manifest.json")
    r = subprocess.run([sys.executable, TRAIN, *SMALL, "--epochs", "1"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True, timeout=180, preexec_fn=default_sigint)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "manifest is not a regular file; not trusted" in r.stderr


def test_a_models_folder_moved_during_the_test_evaluation_gets_no_report_elsewhere(tmp_path: Path) -> None:
    """Found by the third outside attack: moved while the test split was scored, the folder's
    report (evaluation.json, baselines.json) went to a new models/ at the old name."""
    env = pause_env("test_batch:1")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "3"
    child = _start([TRAIN, *SMALL, "--epochs", "1"], tmp_path, env)
    try:
        child.wait_for("PAUSED test_batch 1")
        (tmp_path / "models").rename(tmp_path / "models.old")
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert f"the folder this run holds was moved to {tmp_path / 'models.old'} while it ran" in line, line
    assert not (tmp_path / "models").exists()
