"""Storage that stops accepting writes in the middle of a run, for real: the models folder is a bind
mount in the child's own mount namespace (a user namespace: no root needed), remounted read-only
while the child is paused at a known step. And memory running out in a training step.

Issue 18: a read-only models/ gave an EROFS traceback and exit 1; with a SIGINT, "Cleanup complete"
was followed by a 50-line traceback, exit 1 instead of 130, and no summary.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, Child, load, pause_env

TRAIN = str(REPO_ROOT / "train_indicator_transformer.py")


def _namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    import tempfile

    probe = tempfile.mkdtemp()
    try:
        r = subprocess.run(["unshare", "-rm", "--propagation", "private", "sh", "-c",
                            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', "sh", probe],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return r.returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(),
                                      reason="needs unshare/nsenter and unprivileged user namespaces")


def _start_in_namespace(tmp_path: Path, args: list[str], env: dict[str, str], folder: str = "models",
                        ) -> Child:
    bound = tmp_path / folder
    bound.mkdir()
    script = 'mount --bind "$1" "$1" && shift && exec "$@"'
    cmd = ["unshare", "-rm", "--propagation", "private", "sh", "-c", script, "sh", str(bound),
           sys.executable, TRAIN, *args]
    return Child(subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, preexec_fn=default_sigint))


def _read_only(child: Child, folder: Path) -> None:
    """Remount ``folder`` read-only inside the child's mount namespace (as a failing disk would be)."""
    enter = ["nsenter", "-t", str(child.proc.pid), "-U", "-m", "--preserve-credentials"]
    r = subprocess.run([*enter, "mount", "-o", "remount,bind,ro", str(folder)], capture_output=True,
                       text=True, timeout=30)
    tries = 0
    while r.returncode != 0 and "busy" in r.stderr and tries < 50:
        # A file open for writing there (the cache's .lock during a commit) forbids the remount: a
        # read-only bind stacked on it makes every file opened from now on read-only instead. The
        # child's preparation workers go on writing meanwhile, so a file opened between the bind
        # and its remount makes that remount busy too (seen in CI): stack another one and retry.
        tries += 1
        r = subprocess.run([*enter, "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"',
                            "sh", str(folder)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def _read_only_at(tmp_path: Path, args: list[str], point: str, folder: str, *, timeout: str = "3",
                  signum: int | None = None) -> Child:
    """Run the command in its own mount namespace with ``folder`` a bind mount, paused at ``point``
    (``"name:value"``); make the folder read-only there, send ``signum`` (or let the pause end
    after ``timeout`` seconds) and wait for the exit."""
    env = pause_env(point)
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = timeout
    child = _start_in_namespace(tmp_path, args, env, folder=folder)
    try:
        child.wait_for(f"PAUSED {point.partition(':')[0]} ")  # the one pause point it was given
        _read_only(child, tmp_path / folder)
        if signum is not None:
            child.proc.send_signal(signum)
        child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    return child


def _summary(tmp_path: Path) -> dict:
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return json.loads((run / "summary.json").read_text())


@needs_namespaces
def test_a_stop_while_models_is_read_only_exits_130_names_the_last_good_checkpoint_and_cleans_up_last(
        tmp_path: Path) -> None:
    env = pause_env("train_step:40")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "300"
    child = _start_in_namespace(tmp_path, [*SMALL, "--epochs", "3"], env)
    try:
        child.wait_for("PAUSED train_step 40")  # epoch 1's checkpoint written
        _read_only(child, tmp_path / "models")
        child.proc.send_signal(signal.SIGINT)
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    err = child.stderr
    assert code == 130, err
    assert "Traceback" not in err
    errors = [ln for ln in child.lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "checkpoint_epoch_2_interrupted.pth: could not be written: Read-only file " \
        "system" in errors[0] and "read-only" in errors[0], err
    assert "the interrupted checkpoint could not be saved; last good checkpoint: " in err
    assert [ln for ln in child.lines if ln.strip()][-1] == "Cleanup complete"
    doc = _summary(tmp_path)
    assert doc["status"] == "interrupted"
    assert doc["interrupted"]["checkpoint"] is None and "Read-only" in doc["interrupted"]["checkpoint_error"]
    last = Path(doc["interrupted"]["last_good_checkpoint"])
    assert last.name == "checkpoint_epoch_1.pth" and load(last)["epoch"] == 1  # nothing saved was lost


@needs_namespaces
def test_models_turning_read_only_without_a_stop_fails_the_run_with_one_error_line_and_a_summary(
        tmp_path: Path) -> None:
    env = pause_env("train_step:40")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "5"  # the pause ends by itself: training goes on
    child = _start_in_namespace(tmp_path, [*SMALL, "--epochs", "3"], env)
    try:
        child.wait_for("PAUSED train_step 40")
        _read_only(child, tmp_path / "models")
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    err = child.stderr
    assert code == 1, err
    assert "Traceback" not in err
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert ".pth: could not be written: Read-only file system" in line and "models/" in line
    doc = _summary(tmp_path)
    assert doc["status"] == "failed" and "Read-only file system" in doc["failed"]["reason"]


def test_memory_running_out_in_a_training_step_fails_the_run_with_a_summary(tmp_path: Path) -> None:
    """An address-space limit the model's activations do not fit in (ulimit -v): the allocator's
    failure is one error line saying what to change, and summary.json records the failure."""
    # Big activations per step (batch x window x d_model), few bytes of everything else.
    args = [*SMALL, "--epochs", "1", "--batch-size", "4096", "--bars", "5000", "--window", "64",
            "--d-model", "256", "--heads", "4", "--threads", "1"]
    def limited() -> None:
        default_sigint()
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    r = subprocess.run([sys.executable, TRAIN, *args], cwd=tmp_path, env=child_env(), capture_output=True,
                       text=True, timeout=600, preexec_fn=limited)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error: out of memory in training at epoch 1" in r.stderr and "--batch-size" in r.stderr
    doc = _summary(tmp_path)
    assert doc["status"] == "failed" and doc["failed"]["reason"].startswith("out of memory in training")


def test_the_working_folder_deleted_under_a_running_training_is_one_error_line(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = pause_env("train_step:40")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "3"  # the pause ends by itself: training goes on
    child = Child(subprocess.Popen([sys.executable, TRAIN, *SMALL, "--epochs", "3"], cwd=work, env=env,
                                   text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   preexec_fn=default_sigint))
    try:
        child.wait_for("PAUSED train_step 40")
        shutil.rmtree(work)
        code = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert "the folder this run holds was removed while it ran" in line, line


@needs_namespaces
def test_a_stop_while_the_cache_turned_read_only_in_preparation_exits_130_with_cleanup_complete_last(
        tmp_path: Path) -> None:
    """Before: the manifest's refused write after the SIGINT came after "Cleanup complete", exit 1."""
    child = _read_only_at(tmp_path, SMALL, "before_commit:manifest.json", "cache", timeout="300",
                          signum=signal.SIGINT)
    code, err = child.proc.returncode, child.stderr
    assert code == 130 and "Traceback" not in err, err
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert "manifest.json: could not be written: Read-only file system" in line
    assert [ln for ln in child.lines if ln.strip()][-1] == "Cleanup complete"


@needs_namespaces
def test_a_cache_turned_read_only_before_its_lock_is_taken_is_one_error_line(tmp_path: Path) -> None:
    """Before: the cache's lock file could not be created on the read-only folder: a filelock
    traceback. Paused inside the first entry's write, so the folder holds no lock file yet."""
    child = _read_only_at(tmp_path, SMALL, "before_commit:*@1", "cache")  # the pause ends by itself
    code, err = child.proc.returncode, child.stderr
    assert code == 1 and "Traceback" not in err, err
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert "Read-only file system" in line and "cache" in line, line


@needs_namespaces
def test_a_read_only_runs_folder_is_a_storage_error_exit_1(tmp_path: Path) -> None:
    """Before: "cannot create it (Read-only file system)", exit 2 as for bad input, no hint."""
    child = _read_only_at(tmp_path, SMALL, "prepare_symbol:1", "runs")
    code = child.proc.returncode
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert "cannot create it: Read-only file system" in line and "read-only" in line, line


@needs_namespaces
def test_models_turning_read_only_in_the_final_evaluation_records_the_run_as_failed(tmp_path: Path) -> None:
    """Found by an outside attack: a refused report write (baselines.json) after training left the
    run folder without a summary.json, though the runs folder had space."""
    child = _read_only_at(tmp_path, [*SMALL, "--epochs", "1"], "test_batch:1", "models")
    code = child.proc.returncode
    assert code == 1 and "Traceback" not in child.stderr, child.stderr
    (line,) = [ln for ln in child.lines if ln.startswith("error: ")]
    assert "Read-only file system" in line
    doc = _summary(tmp_path)
    assert doc["status"] == "failed" and "Read-only file system" in doc["failed"]["reason"]
