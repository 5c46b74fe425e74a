"""train_indicator_transformer.py as a user runs it: real subprocesses, real signals, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO_ROOT, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, load, pause_env, pids_alive

from indicator_transformer.training.checkpoint import REQUIRED_KEYS


def start(args: list[str], pause: str, tmp_path: Path, *, new_session: bool = False) -> Child:
    """Start training paused at ``pause``; models and cache go under ``tmp_path``."""
    cmd = [sys.executable, "train_indicator_transformer.py", *SMALL, "--cache-dir",
           str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models"), *args]
    return Child(subprocess.Popen(cmd, cwd=REPO_ROOT, env=pause_env(pause), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
                                  start_new_session=new_session))


def test_default_job_trains_checkpoints_and_evaluates(run_python, tmp_path: Path) -> None:
    r = run_python(["train_indicator_transformer.py", *SMALL, "--cache-dir", str(tmp_path / "c"),
                    "--models-dir", str(tmp_path / "m")])
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == [".lock", "baselines.json", "best.pth", "checkpoint_epoch_1.pth",
                     "checkpoint_epoch_2.pth",
                     "evaluation.json"]  # .lock: the folder lock the run held (free now, and empty)
    assert (tmp_path / "m" / ".lock").read_bytes() == b""
    state = load(tmp_path / "m" / "checkpoint_epoch_2.pth")
    assert set(REQUIRED_KEYS) <= set(state)
    assert state["interrupted"] is False and state["epoch"] == 2
    assert len(state["loss_history"]["epochs"]) == 2
    assert len(state["loss_history"]["steps"]) == 2 * STEPS_PER_EPOCH == state["global_step"]
    report = json.loads((tmp_path / "m" / "evaluation.json").read_text())
    assert report["test"]["samples"] > 0 and -1 <= report["test"]["ic"] <= 1
    assert "Test split (" in r.stderr and "Verdict:" in r.stderr and "Cleanup complete" not in r.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_saves_checkpoint_then_prints_cleanup_complete_last(sig: int, code: int,
                                                                           tmp_path: Path) -> None:
    child = start([], "train_step:5", tmp_path)
    child.wait_for("PAUSED")
    child.proc.send_signal(sig)
    assert child.finish() == code, child.stderr
    path = tmp_path / "models" / "checkpoint_epoch_1_interrupted.pth"
    received = next(i for i, line in enumerate(child.lines) if line.startswith("Received"))
    saved = child.lines.index(f"Checkpoint saved: {path}")
    assert received < saved < len(child.lines) - 1
    assert child.lines[-1] == "Cleanup complete"
    state = load(path)
    assert state["global_step"] == 5 and state["interrupted"] is True  # no completed step lost
    assert "Traceback" not in child.stderr


def test_ctrl_c_to_the_whole_process_group_with_workers_leaves_no_process_and_no_traceback(
        tmp_path: Path) -> None:
    # A terminal's Ctrl-C reaches every process of the foreground group, workers included.
    child = start(["--num-workers", "2"], "train_step:5", tmp_path, new_session=True)
    child.wait_for("PAUSED")
    workers = [c.pid for c in psutil.Process(child.proc.pid).children(recursive=True)]
    assert len(workers) >= 2
    os.killpg(child.proc.pid, signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete"
    assert "Traceback" not in child.stderr and "KeyboardInterrupt" not in child.stderr
    deadline = time.monotonic() + 10
    while pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_alive(workers) == []
    assert (tmp_path / "models" / "checkpoint_epoch_1_interrupted.pth").exists()


def test_second_ctrl_c_during_the_checkpoint_write_exits_fast_and_keeps_previous_files_intact(
        tmp_path: Path) -> None:
    # The first Ctrl-C (in epoch 2) asks for the interrupted checkpoint; the second one lands while
    # that file is complete in its temporary name but not yet renamed.
    child = start([], f"train_step:{STEPS_PER_EPOCH + 3},before_commit:checkpoint_epoch_2_interrupted.pth",
                  tmp_path)
    child.wait_for(f"PAUSED train_step {STEPS_PER_EPOCH + 3}")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("PAUSED before_commit")
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGINT)
    assert child.finish(timeout=30) == 130
    assert time.monotonic() - t0 < 2.0
    assert any("again" in line and "exiting" in line for line in child.lines), child.stderr
    models = tmp_path / "models"
    assert not (models / "checkpoint_epoch_2_interrupted.pth").exists()  # abandoned, not half-written
    for p in models.glob("*.pth"):
        load(p)  # every file under a final name is complete
    assert load(models / "checkpoint_epoch_1.pth")["epoch"] == 1
    # Readers ignore the abandoned temporary file; the next training start removes it.
    assert list(models.glob(".checkpoint_epoch_2_interrupted.pth.*.tmp"))
    r = subprocess.run([sys.executable, "resume_training.py", "--list", "--models-dir", str(models)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "CORRUPT" not in r.stdout and ".tmp" not in r.stdout
    r = subprocess.run([sys.executable, "resume_training.py", "--models-dir", str(models), "--cache-dir",
                        str(tmp_path / "cache"), "--no-progress"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    assert not list(models.glob(".*.tmp"))


def test_sigint_during_test_evaluation_writes_no_report(tmp_path: Path) -> None:
    child = start([], "test_batch:1", tmp_path)
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete"
    assert not (tmp_path / "models" / "evaluation.json").exists()
    assert not list((tmp_path / "models").glob(".*.tmp"))
    assert load(tmp_path / "models" / "checkpoint_epoch_2.pth")["epoch"] == 2
    # Resuming the finished run runs the evaluation that did not complete.
    r = subprocess.run([sys.executable, "resume_training.py", "--models-dir", str(tmp_path / "models"),
                        "--cache-dir", str(tmp_path / "cache"), "--no-progress"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "models" / "evaluation.json").read_text())["test"]["samples"] > 0


def test_kill_9_at_any_moment_leaves_only_loadable_checkpoints(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for delay in (0.3, 0.9, 1.6, 2.4):
        proc = subprocess.Popen(
            [sys.executable, "train_indicator_transformer.py", *SMALL, "--checkpoint-every", "1",
             "--keep", "2", "--cache-dir", str(tmp_path / "cache"), "--models-dir", str(models)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=default_sigint)
        # Wait until checkpoints are being written, then kill at some instant.
        deadline = time.monotonic() + 60
        while not list(models.glob("checkpoint_epoch_*_step_*.pth")) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=30)
        for p in models.glob("*.pth"):
            load(p)


def test_bad_flags_exit_2_naming_the_field(run_python, tmp_path: Path) -> None:
    r = run_python(["train_indicator_transformer.py", "--d-model", "30", "--heads", "4",
                    "--models-dir", str(tmp_path)])
    assert r.returncode == 2
    assert "heads" in r.stderr and "d_model=30" in r.stderr and "Traceback" not in r.stderr
    r = run_python(["train_indicator_transformer.py", "--keep", "1", "--models-dir", str(tmp_path)])
    assert r.returncode == 2 and "'keep'" in r.stderr
    r = run_python(["train_indicator_transformer.py", "--epochs", "two"])
    assert r.returncode == 2 and "--epochs" in r.stderr
    r = run_python(["train_indicator_transformer.py", "--data-dir", str(tmp_path / "nope"),
                    "--models-dir", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")])
    assert r.returncode == 2 and str(tmp_path / "nope") in r.stderr
    assert not (tmp_path / "m").exists()


def test_toml_config_is_applied_and_flags_override_it(run_python, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('epochs = 1\nd_model = 8\nheads = 2\nlayers = 1\nsymbols = 3\nbars = 600\n'
                   'batch_size = 128\n')
    r = run_python(["train_indicator_transformer.py", "--config", str(cfg), "--batch-size", "64",
                    "--no-progress", "--cache-dir", str(tmp_path / "c"), "--models-dir", str(tmp_path / "m")])
    assert r.returncode == 0, r.stderr
    state = load(tmp_path / "m" / "checkpoint_epoch_1.pth")
    assert state["config"]["model"]["d_model"] == 8
    assert state["config"]["train"]["batch_size"] == 64
    assert state["config"]["data"]["symbols"] == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    r = run_python(["train_indicator_transformer.py", "--config", str(bad)])
    assert r.returncode == 2 and "epoch" in r.stderr and str(bad) in r.stderr


def test_help_explains_every_option(run_python) -> None:
    r = run_python(["train_indicator_transformer.py", "--help"])
    assert r.returncode == 0
    for flag in ("--data-dir", "--symbols", "--bars", "--epochs", "--batch-size", "--lr", "--window",
                 "--horizon", "--d-model", "--heads", "--layers", "--dropout", "--num-workers",
                 "--seed", "--device", "--models-dir", "--cache-dir", "--checkpoint-every", "--keep",
                 "--config"):
        assert flag in r.stdout


def test_kill_9_of_the_trainer_takes_its_dataloader_workers_down_at_once(tmp_path: Path) -> None:
    child = start(["--num-workers", "2"], "train_step:5", tmp_path)
    child.wait_for("PAUSED")
    workers = [c.pid for c in psutil.Process(child.proc.pid).children(recursive=True)]
    assert len(workers) >= 2
    time.sleep(1.0)  # the workers are now idle, blocked on their queue with PyTorch's 5 s timeout
    # From the kill on, not after child.finish(): that waits for stderr to close, which the workers
    # hold open as long as they live.
    deadline = time.monotonic() + 1.5  # PyTorch's own watchdog alone would take ~3.5 s more
    child.proc.kill()
    child.proc.wait(timeout=30)
    while pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_alive(workers) == []
    child.finish()


def test_a_new_run_moves_the_previous_runs_files_aside_instead_of_mixing_with_them(run_python,
                                                                                   tmp_path: Path) -> None:
    common = ["--cache-dir", str(tmp_path / "c"), "--models-dir", str(tmp_path / "m")]
    first = run_python(["train_indicator_transformer.py", *SMALL, "--epochs", "3", *common])
    assert first.returncode == 0, first.stderr
    second = run_python(["train_indicator_transformer.py", *SMALL, "--epochs", "1", "--seed", "1", *common])
    assert second.returncode == 0, second.stderr
    assert "moved the previous run's checkpoints" in second.stderr
    models = tmp_path / "m"
    assert sorted(p.name for p in models.glob("*.pth")) == ["best.pth", "checkpoint_epoch_1.pth"]
    assert load(models / "checkpoint_epoch_1.pth")["config"]["train"]["seed"] == 1
    (archive,) = (models / "previous_runs").iterdir()
    assert sorted(p.name for p in archive.iterdir()) == [
        "baselines.json", "best.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth",
        "checkpoint_epoch_3.pth",
        "evaluation.json"]
    assert load(archive / "checkpoint_epoch_3.pth")["config"]["train"]["seed"] == 0


@pytest.mark.parametrize(("line", "key"), [("batch_size = 64.5", "batch_size"), ("d_model = 8.0", "d_model"),
                                           ("data_dir = 5", "data_dir"), ('features = "rsi_14"', "features"),
                                           ("skip_bad_files = 1", "skip_bad_files")])
def test_a_toml_value_of_the_wrong_type_exits_2_naming_the_file_and_key(run_python, tmp_path: Path,
                                                                       line: str, key: str) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(line + "\n")
    r = run_python(["train_indicator_transformer.py", "--config", str(cfg), "--models-dir", str(tmp_path)])
    assert r.returncode == 2, r.stderr
    assert f"{cfg}: invalid value for '{key}'" in r.stderr and "Traceback" not in r.stderr


def _startup_child(argv: list[str], pause_at: str) -> subprocess.Popen:
    """A command started with an import pause (startup.py's test seam) at ``pause_at``."""
    from conftest import REPO_ROOT, child_env, default_sigint

    env = {**child_env(), "INDICATOR_TRANSFORMER_PAUSE_AT": pause_at}
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)


def _wait_for_line(proc: subprocess.Popen, wanted: str, timeout: float = 120) -> list[str]:
    """Read the child's stderr until a line equal to ``wanted``; the lines read so far."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.strip() == wanted:
            return seen
    raise AssertionError(f"no line {wanted!r} from the child; it wrote: {''.join(seen)[-3000:]}")


@pytest.mark.parametrize(("script", "module"), [("train_indicator_transformer.py", "numpy"),
                                               ("train_indicator_transformer.py", "talib"),
                                               ("train_indicator_transformer.py", "torch"),
                                               ("resume_training.py", "numpy"),
                                               ("resume_training.py", "torch"),
                                               ("validate_cache.py", "numpy"),
                                               ("indicator-transformer", "numpy"), ("-m", "numpy")])
def test_ctrl_c_while_the_libraries_load_exits_130_without_a_traceback(script: str, module: str,
                                                                       tmp_path: Path) -> None:
    """The signal lands while ``module`` is being imported: the child says so (an import pause,
    startup.py's test seam) before the test signals it. A KeyboardInterrupt raised inside numpy's
    import was once swallowed by torch's C++ numpy import, leaving numpy half-initialised: the run went
    on training and died at the first validation with "module 'numpy' has no attribute 'matrix'"."""
    out = tmp_path / "out"
    if script == "indicator-transformer":  # the installed console script (pip install -e)
        argv = [str(Path(sys.executable).with_name(script)), "features"]
    elif script == "-m":
        argv = [sys.executable, "-m", "indicator_transformer", "features"]
    else:
        argv = [sys.executable, script, "--cache-dir", str(out / "cache")]
    if script.endswith(".py") and script != "validate_cache.py":
        argv += ["--models-dir", str(out / "models"), "--runs-dir", str(out / "runs")]
    proc = _startup_child(argv, f"import:{module}")
    try:
        _wait_for_line(proc, f"PAUSED import {module}")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Interrupted during start-up: nothing was written" in err
    assert not out.exists()


def test_a_second_ctrl_c_while_the_libraries_load_ends_the_process_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C is held while numpy loads; the second, while TA-Lib loads (the remaining
    imports, torch among them, take seconds), ends the process at once."""
    argv = [sys.executable, "train_indicator_transformer.py", "--models-dir", str(tmp_path / "m")]
    proc = _startup_child(argv, "import:numpy,import:talib")
    try:
        _wait_for_line(proc, "PAUSED import numpy")
        proc.send_signal(signal.SIGINT)
        _wait_for_line(proc, "PAUSED import talib")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 1.0  # not after the remaining imports
    assert err.count("Interrupted during start-up") == 1 and "Traceback" not in err
