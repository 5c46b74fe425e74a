"""Stopping with a real SIGINT at any point and resuming equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, assert_same_training_state, load, pause_env


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env or child_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=default_sigint)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """The uninterrupted run's final checkpoint."""
    models = tmp_path_factory.mktemp("reference")
    r = _run(["train_indicator_transformer.py", *SMALL, "--cache-dir", str(cache_dir),
              "--models-dir", str(models)])
    assert r.returncode == 0, r.stderr
    return load(models / "checkpoint_epoch_2.pth")


def test_uninterrupted_runs_with_and_without_workers_are_identical(reference: dict, cache_dir: Path,
                                                                   tmp_path: Path) -> None:
    r = _run(["train_indicator_transformer.py", *SMALL, "--cache-dir", str(cache_dir),
              "--models-dir", str(tmp_path), "--num-workers", "2"])
    assert r.returncode == 0, r.stderr
    assert_same_training_state(reference, load(tmp_path / "checkpoint_epoch_2.pth"))


@pytest.mark.parametrize(("point", "workers", "epoch", "step_in_epoch"), [
    ("train_step:1", 0, 1, 1),                                   # first batch
    ("train_step:17", 0, 1, 17),                                 # mid-epoch
    (f"train_step:{STEPS_PER_EPOCH}", 0, 1, STEPS_PER_EPOCH),    # last batch of an epoch
    ("val_batch:1", 0, 1, STEPS_PER_EPOCH),                      # during validation
    ("train_step:45", 2, 2, 45 - STEPS_PER_EPOCH),               # mid second epoch, with workers
    (f"train_step:{2 * STEPS_PER_EPOCH}", 2, 2, STEPS_PER_EPOCH),  # last batch of the run
    # (validation with workers: the campaign's "signal" kind stops runs with 1 worker there)
])
def test_sigint_then_resume_equals_the_uninterrupted_run(point: str, workers: int, epoch: int,
                                                         step_in_epoch: int, reference: dict,
                                                         cache_dir: Path, tmp_path: Path) -> None:
    common = ["--cache-dir", str(cache_dir), "--models-dir", str(tmp_path), "--num-workers", str(workers)]
    child = Child(subprocess.Popen(
        [sys.executable, "train_indicator_transformer.py", *SMALL, *common], cwd=REPO_ROOT,
        env=pause_env(point), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete"

    saved = load(tmp_path / f"checkpoint_epoch_{epoch}_interrupted.pth")
    assert saved["interrupted"] is True
    assert (saved["epoch"], saved["step_in_epoch"]) == (epoch, step_in_epoch)
    assert len(saved["loss_history"]["steps"]) == saved["global_step"]

    r = _run(["resume_training.py", *common, "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert f"checkpoint_epoch_{epoch}_interrupted.pth" in r.stderr
    assert_same_training_state(reference, load(tmp_path / "checkpoint_epoch_2.pth"))
