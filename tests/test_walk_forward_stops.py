"""A walk-forward experiment stopped at a random moment, by a signal or kill -9 (of the experiment
or of one of its runs), with one run at a time and with two, then started again: the final
figures and out-of-sample predictions equal an uninterrupted experiment's byte for byte, no
finished run is trained again, and no process is left behind.

The moment is a random delay within the uninterrupted experiment's duration (seeded; the seed is
in every failure message): what is tested is that *any* moment is safe, so the test asserts
nothing about where the stop landed. Two trials run by default; ``--run-slow`` runs a campaign.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import child_env, default_sigint
from trainproc import Child
from wfproc import figures as _figures
from wfproc import wf_cmd as _cmd

TINY = ["--symbols", "4", "--bars", "600", "--epochs", "2", "--batch-size", "64", "--d-model", "16",
        "--heads", "2", "--layers", "1", "--no-progress", "--no-plots", "--window", "16", "--threads", "1",
        "--checkpoint-every", "7"]
EXPERIMENT = ["--folds", "2", "--seeds", "0,1", "--test-bars", "70", *TINY]
KINDS = ("SIGINT", "SIGTERM", "kill -9", "kill -9 of a run")


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (children first found through /proc)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in found:
                found.add(k)
                todo.append(k)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """An uninterrupted experiment and how long it took."""
    root = tmp_path_factory.mktemp("wfstops")
    start = time.monotonic()
    r = subprocess.run(_cmd([*EXPERIMENT, "--out", "whole"]), cwd=root, env=child_env(), capture_output=True,
                       text=True, timeout=900, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    return root, time.monotonic() - start


def _trial(root: Path, duration: float, seed: int, jobs: int, kind: str) -> None:
    rng = random.Random(seed)
    name = f"t{seed}-{jobs}-{kind.replace(' ', '_')}"
    args = [*EXPERIMENT, "--jobs", str(jobs), "--out", name]
    why = f"(trial seed {seed}, --jobs {jobs}, {kind})"
    proc = subprocess.Popen(_cmd(args), cwd=root, env=child_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=default_sigint)
    child = Child(proc)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + rng.uniform(0.0, duration)
        while time.monotonic() < deadline and proc.poll() is None:
            family |= _descendants(proc.pid)
            time.sleep(0.02)
        family |= _descendants(proc.pid)
        if proc.poll() is None:
            if kind == "kill -9 of a run":
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
                runs = [int(p) for p in kids.split()]
                if runs:
                    os.kill(rng.choice(runs), signal.SIGKILL)
            else:
                proc.send_signal({"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM,
                                  "kill -9": signal.SIGKILL}[kind])
        code = child.finish(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    expected = {"SIGINT": {0, 130}, "SIGTERM": {0, 143}, "kill -9": {0, -9}, "kill -9 of a run": {0, 1}}[kind]
    assert code in expected, f"{why}: exit code {code}\n{child.stderr}"
    assert "Traceback" not in child.stderr, f"{why}\n{child.stderr}"
    if code in (130, 143):
        assert child.lines[-1] == "Cleanup complete", f"{why}\n{child.stderr}"
    # Every process of the experiment ends (a run whose experiment was killed saves, then exits).
    end = time.monotonic() + 120
    while any(_alive(p) for p in family) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(_alive(p) for p in family), f"{why}: processes left: {[p for p in family if _alive(p)]}"
    done_before = {p.parent.parent.name for p in (root / name / "runs").glob("*/models/evaluation.json")} \
        if (root / name / "runs").is_dir() else set()
    again = subprocess.run(_cmd(args), cwd=root, env=child_env(), capture_output=True, text=True, timeout=900,
                           preexec_fn=default_sigint)
    assert again.returncode == 0, f"{why}: the rerun failed\n{child.stderr}\n---\n{again.stderr}"
    for run in done_before:  # a finished run is never trained again
        assert f"{run}: starting" not in again.stderr and f"{run}: continuing" not in again.stderr, \
            f"{why}: {run} had its report\n{again.stderr}"
    assert _figures(root / "whole") == _figures(root / name), f"{why}\n{child.stderr}\n---\n{again.stderr}"
    assert (root / "whole" / "oos_predictions.csv").read_bytes() == \
        (root / name / "oos_predictions.csv").read_bytes(), why


@pytest.mark.parametrize(("jobs", "kind"), [(1, "SIGINT"), (2, "kill -9")])
def test_an_experiment_stopped_at_a_random_moment_continues_to_the_uninterrupted_figures(
        whole: tuple[Path, float], jobs: int, kind: str) -> None:
    root, duration = whole
    _trial(root, duration, random.SystemRandom().randrange(10**6), jobs, kind)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(8))
def test_campaign_of_random_stops(whole: tuple[Path, float], trial: int) -> None:
    root, duration = whole
    _trial(root, duration, random.SystemRandom().randrange(10**6), 1 + trial % 2, KINDS[(trial // 2) % 4])
