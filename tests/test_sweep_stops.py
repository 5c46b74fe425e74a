"""A sweep stopped by a signal or killed, then started again, continues the same trial from its
checkpoint and ends with exactly the trials (values, objectives, pruning) of a sweep never
stopped; several workers on one SQLite study run every trial once, and a dead worker's trial is
continued by another."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sweepproc import SPACE, TINY, outcomes, sweep_paused, sweep_run
from trainproc import pids_alive

ARGS = ["--space", "space.toml", "--trials", "4", "--sweep-seed", "3", "--pruner-startup-trials", "1",
        "--checkpoint-every", "7", *TINY]


def _setup(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "space.toml").write_text(SPACE)
    return d


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """The trials of a sweep never stopped."""
    d = _setup(tmp_path_factory.mktemp("sweep_whole"))
    r = sweep_run([*ARGS, "--out", "sw"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Sweep complete" in r.stderr
    return outcomes(d / "sw")


def test_a_sweep_stopped_and_killed_continues_to_the_uninterrupted_trials(tmp_path: Path,
                                                                          whole: list[tuple]) -> None:
    d = _setup(tmp_path)
    states = {s for _, s, *_ in whole}
    assert "COMPLETE" in states and "PRUNED" in states, whole  # the comparison covers pruning
    # 1. SIGINT while trial 0 trains (step 9 of its first epoch): the trial saves and stays.
    c = sweep_paused([*ARGS, "--out", "sw"], d, "train_step:9")
    c.wait_for("PAUSED train_step 9")
    os.kill(c.proc.pid, signal.SIGINT)
    assert c.finish() == 130, c.stderr[-3000:]
    assert c.lines[-1] == "Cleanup complete", c.stderr[-2000:]
    assert "Checkpoint saved" in c.stderr and "Traceback" not in c.stderr
    assert [t[1] for t in outcomes(d / "sw")] == ["RUNNING"]
    # 2. kill -9 of the sweep while the next trial trains: its process saves (it outlives no parent).
    c = sweep_paused([*ARGS, "--out", "sw"], d, "train_step:30")
    c.wait_for("[trial 0] continuing")
    line = c.wait_for("PAUSED train_step 30")
    assert line
    kids = [int(k) for k in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    os.kill(c.proc.pid, signal.SIGKILL)
    c.finish()
    deadline = time.monotonic() + 120
    while pids_alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pids_alive(kids), "a trial's process outlived its killed sweep"
    c._thread.join(timeout=30)
    saved = d / "sw" / "trials" / "0" / "models" / "checkpoint_epoch_2_interrupted.pth"
    assert saved.is_file(), c.stderr[-2000:]  # at most the current optimizer step is lost
    # 3. SIGTERM in the next trial (trial 0 ends first: past step 10), then the rest to the end.
    c = sweep_paused([*ARGS, "--out", "sw"], d, "train_step:10")
    c.wait_for("[trial 1] starting")
    c.wait_for("PAUSED train_step 10")
    os.kill(c.proc.pid, signal.SIGTERM)
    assert c.finish() == 143, c.stderr[-3000:]
    r = sweep_run([*ARGS, "--out", "sw"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[trial 1] continuing" in r.stderr
    assert outcomes(d / "sw") == whole
    for number, state, *_ in whole:  # a pruned trial keeps its checkpoint, and says where it stopped
        trial = d / "sw" / "trials" / str(number)
        assert (trial / "pruned.json").is_file() == (state == "PRUNED")
        if state == "PRUNED":
            assert (trial / "models" / "checkpoint_epoch_1.pth").is_file()


def test_two_workers_run_each_trial_once_and_continue_a_dead_workers_trial(tmp_path: Path) -> None:
    d = _setup(tmp_path)
    args = [*ARGS[:2], "--trials", "3", "--pruner", "none", *TINY, "--out", "sw"]
    a = sweep_paused(args, d, "train_step:5", timeout_s=300)
    a.wait_for("PAUSED train_step 5")  # worker A holds trial 0, paused in its training
    b = sweep_paused(args, d, "nowhere:0")
    b.wait_for("[trial 1] starting")  # B does not take A's trial
    os.kill(a.proc.pid, signal.SIGKILL)  # A dies; its trial's process saves and ends
    a.finish()
    assert b.finish(timeout=600) == 0, b.stderr[-3000:]
    assert "[trial 0] continuing" in b.stderr, b.stderr[-3000:]
    assert "Resuming from" in b.stderr
    got = outcomes(d / "sw")
    assert [(n, s) for n, s, *_ in got] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    for n in range(3):  # one run per trial (trial 0: one run folder, continued, not restarted)
        assert len(list((d / "sw" / "trials" / str(n) / "runs").iterdir())) == 1
