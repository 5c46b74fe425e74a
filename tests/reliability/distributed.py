"""Campaign 8: two CPU ranks under torchrun (the approach of tests/test_distributed.py).

Faults, at a random step: SIGINT or SIGTERM to the launcher, SIGTERM or SIGINT to one rank only,
``kill -9`` of one rank without ``--max-restarts`` (the job fails; resume by hand) and with
``--max-restarts=1`` (torchrun restarts the ranks, which resume by themselves). Afterwards: one
consistent interrupted checkpoint (graceful stops), every file verifies, no process of the job
left, and the job resumed to the end under torchrun equals the uninterrupted 2-rank run bit for bit.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import psutil

from reliability.harness import (
    BASE,
    EXIT_BY_SIGNAL,
    RESUME,
    STEPS_PER_EPOCH,
    TRAIN,
    Proc,
    Trial,
    TrialFailure,
    tail,
)
from reliability.interrupts import CHECKPOINT_EVERY, TOTAL_STEPS

LAUNCHER = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--monitor-interval", "0.5"]
CFG = tuple(BASE)
CFG_RESTART = (*BASE, "--checkpoint-every", str(CHECKPOINT_EVERY), "--keep", "3")


def torchrun_cmd(root: Path, script: str, args: list[str], launcher: tuple[str, ...] = ()) -> list[str]:
    """The torchrun command line (used for the reference runs too)."""
    from reliability.harness import REPO_ROOT

    return [sys.executable, *LAUNCHER, *launcher, "--log-dir", str(root / "logs"), "--tee", "3",
            str(REPO_ROOT / script), *args]


def _start(trial: Trial, script: str, args: list[str], *, launcher: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> Proc:
    cmd = torchrun_cmd(trial.root, script, args, launcher)
    return trial.start(cmd[1:], env=env, script=None)


def rank_logs(root: Path, attempt: int = 0) -> dict[int, list[str]]:
    """rank -> its stderr lines in one attempt (torchrun's --log-dir)."""
    out = {}
    for f in (root / "logs").glob(f"*/attempt_{attempt}/*/stderr.log"):
        out[int(f.parent.name)] = f.read_text(encoding="utf-8", errors="replace").splitlines()
    return out


def workers(proc: Proc) -> list[psutil.Process]:
    """The launcher's rank processes, ordered by rank."""
    procs = [p for p in psutil.Process(proc.pid).children() if TRAIN in " ".join(p.cmdline())]
    return sorted(procs, key=lambda p: int(p.environ()["RANK"]))


def distributed_trial(trial: Trial) -> None:
    rng = trial.rng
    fault = rng.choices(["launcher", "one_rank", "kill_rank", "kill_rank_restart"], [3, 3, 2, 2])[0]
    cfg = CFG_RESTART if fault == "kill_rank_restart" else CFG
    step = rng.choice([s for s in range(2, TOTAL_STEPS) if s % STEPS_PER_EPOCH])
    rank = rng.choice([0, 1])
    launcher = ("--max-restarts=1",) if fault == "kill_rank_restart" else ()
    if fault == "kill_rank_restart":
        step = rng.choice([s for s in range(CHECKPOINT_EVERY + 1, TOTAL_STEPS) if s % STEPS_PER_EPOCH])
    env = {"INDICATOR_TRANSFORMER_PAUSE_AT": f"train_step:{step}"}
    if fault == "launcher":
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        what = f"{signal.Signals(signum).name} to torchrun at step {step}"
    elif fault == "one_rank":
        signum = rng.choice([signal.SIGTERM, signal.SIGINT])
        env["INDICATOR_TRANSFORMER_PAUSE_RANKS"] = str(rank)
        what = f"{signal.Signals(signum).name} to rank {rank} only at step {step}"
    else:
        signum = signal.SIGKILL
        env["INDICATOR_TRANSFORMER_PAUSE_RANKS"] = f"{rank}@0" if launcher else str(rank)
        what = f"kill -9 of rank {rank} at step {step}{' with --max-restarts=1' if launcher else ''}"
    trial.inject(what)

    job = _start(trial, TRAIN, list(cfg), launcher=launcher, env=env)
    trial.wait_paused(job, count=2 if fault == "launcher" else 1, timeout=300)
    job.remember_family()
    if fault == "launcher":
        trial.signal(job, signum)
    else:
        ranks = workers(job)
        if len(ranks) != 2:
            raise TrialFailure(f"harness: expected 2 ranks, found {len(ranks)}")
        ranks[rank].send_signal(signum)
    code = job.finish(240)
    trial.check_no_process_left(job, timeout=60)
    models = trial.root / "models"
    logs = rank_logs(trial.root)

    if fault in ("launcher", "one_rank"):
        expected = EXIT_BY_SIGNAL[signum]
        interrupted = sorted(p.name for p in models.glob("*interrupted*"))
        trial.check(len(interrupted) == 1, f"expected one interrupted checkpoint, found {interrupted}")
        trial.check(code != 0, "torchrun exited 0 after a stop signal")
        for r in (0, 1):
            lines = logs.get(r, [])
            trial.check(bool(lines) and lines[-1] == "Cleanup complete",
                        f"rank {r}: last line {lines[-1] if lines else None!r}, expected 'Cleanup complete'")
            trial.check(any(f"exit code {expected}" in line for line in lines),
                        f"rank {r} does not report exit code {expected}:\n" + "\n".join(lines[-8:]))
            trial.check(not any("Traceback" in line for line in lines), f"rank {r}: a traceback:\n"
                        + "\n".join(lines[-20:]))
        trial.check("forcefully" not in job.stderr, "torchrun had to SIGKILL a rank")
    elif fault == "kill_rank":
        trial.check(code != 0, "torchrun exited 0 although a rank was killed and no restart was allowed")
    else:
        trial.check(code == 0, f"the restarted job exited {code}:\n{tail(job.stderr, 20)}")
        restarted = rank_logs(trial.root, attempt=1)
        trial.check(any("--resume auto: continuing from" in line for line in restarted.get(0, [])),
                    "the restarted rank 0 did not continue from a checkpoint:\n"
                    + "\n".join(restarted.get(0, [])[-10:]))
    trial.check_files(temp_allowed=fault.startswith("kill"))

    if code != 0:
        # Resume the job under torchrun: the spec's resume command when a checkpoint exists.
        has_checkpoint = models.is_dir() and any(models.glob("*.pth"))
        if has_checkpoint:
            again = _start(trial, RESUME, ["--no-progress", "--no-plots"])
        else:
            again = _start(trial, TRAIN, [*cfg, "--resume", "auto"])
        rc = again.finish(600)
        trial.check(rc == 0, f"the torchrun resume exited {rc}:\n{tail(again.stderr, 20)}")
        trial.check("Traceback" not in again.stderr,
                    f"the torchrun resume: a traceback:\n{tail(again.stderr, 20)}")
        trial.check_no_process_left(again, timeout=60)
    trial.check_files()
    trial.check_cache_consistent()
    trial.check_equals_reference(cfg, distributed=True)
