"""walk-forward --nproc-per-node 2: each run under torchrun (gloo on CPU), every rank in it, one
run at a time; a stop passed to the launcher saves the run's checkpoint on every rank, and the
same command continues to the figures of an uninterrupted experiment."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from trainproc import load
from wfproc import figures as _figures
from wfproc import wf_paused
from wfproc import wf_run as _run

TINY = ["--symbols", "4", "--bars", "500", "--epochs", "2", "--batch-size", "64", "--d-model", "16",
        "--heads", "2", "--layers", "1", "--no-progress", "--no-plots", "--window", "16", "--threads", "1"]
EXPERIMENT = ["--folds", "2", "--seeds", "0", "--test-bars", "60", "--nproc-per-node", "2", *TINY]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wftorchrun")
    r = _run([*EXPERIMENT, "--out", "whole"], root)
    assert r.returncode == 0, r.stderr
    assert "Experiment complete" in r.stderr and "Traceback" not in r.stderr, r.stderr
    return root


def test_each_run_trains_under_torchrun_on_every_rank(root: Path) -> None:
    for fold in (0, 1):
        models = root / "whole" / "runs" / f"fold{fold}-seed0" / "models"
        state = load(models / "checkpoint_epoch_2.pth")
        assert len(state["rng_ranks"]) == 2  # both ranks' RNG states: a two-rank job
    doc = _figures(root / "whole")
    assert doc["experiment"]["settings"]["nproc_per_node"] == 2
    assert {r["run"] for r in doc["runs"]} == {"fold0-seed0", "fold1-seed0"}
    bad = _run([*EXPERIMENT, "--jobs", "2", "--out", "x"], root)
    assert bad.returncode == 2 and "runs go one at a time" in bad.stderr, bad.stderr


@pytest.mark.xfail(strict=False, reason="known intermittent defect (open): now and then the stop passed "
                   "to the launcher does not reach the paused ranks, which train on after the pause")
def test_a_stop_under_torchrun_saves_on_every_rank_and_the_rerun_gives_the_same_figures(root: Path) -> None:
    child = wf_paused([*EXPERIMENT, "--out", "stopped"], root, "train_step:5", 120)  # each rank waits
    proc = child.proc
    try:
        child.wait_for("[1/2] fold0-seed0: starting", timeout=300)
        deadline = 300
        import time

        end = time.monotonic() + deadline
        while sum("PAUSED train_step 5" in ln for ln in list(child.lines)) < 2:  # both ranks there
            assert proc.poll() is None and time.monotonic() < end, child.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # to the experiment: it passes the stop to the launcher
        code = child.finish(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete", child.stderr[-3000:]
    models = root / "stopped" / "runs" / "fold0-seed0" / "models"
    (saved,) = models.glob("*_interrupted.pth")
    state = load(saved)
    assert state["global_step"] == 5 and len(state["rng_ranks"]) == 2
    again = _run([*EXPERIMENT, "--out", "stopped"], root)
    assert again.returncode == 0, again.stderr
    assert "[1/2] fold0-seed0: continuing, stopped at epoch 1, global step 5" in again.stderr
    assert _figures(root / "whole") == _figures(root / "stopped")
    assert (root / "whole" / "oos_predictions.csv").read_bytes() == \
        (root / "stopped" / "oos_predictions.csv").read_bytes()
