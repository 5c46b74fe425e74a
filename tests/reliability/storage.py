"""Campaigns 11-12: storage that stops accepting writes, and a process with few descriptors (issue 18).

read_only: the models, cache or runs folder is a bind mount in the child's own mount namespace (a
user namespace: the mount is the child's alone and goes with it). The run is paused at a random
moment (a training step, a validation or test batch, a preparation step, or inside a random atomic
write with its temporary file complete), the folder is remounted read-only, and the run is either
let go or stopped by SIGINT / SIGTERM. It must end with one ``error:`` line naming the file and
"Read-only file system" (exit 1), or the documented 130/143 with "Cleanup complete" last, never a
traceback; no file under a final name damaged. Outside the namespace the folder is writable again:
a resume to the end must equal the uninterrupted run bit for bit.

few_descriptors: the run starts under a random, low ``ulimit -n`` (soft and hard, so it cannot be
raised), with or without a DataLoader worker. It must finish, or stop with one ``error:`` line that
says how to raise the limit (exit 1 or 2) - never a traceback or a hang - and the rerun without the
limit must equal the uninterrupted run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from reliability.harness import TRAIN, Trial, tail
from reliability.interrupts import check_graceful_stop, draw_config, resume_to_end

HELD = "300"  # seconds a pause waits for the trial's signal
LET_GO = "4"  # seconds a pause waits when the run is let go after the remount
WRITES = 14   # atomic writes of the campaign's configuration (entries, manifest, metrics, checkpoints,
              # reports): a pause inside write k in 1..WRITES is always reached
_namespaces: bool | None = None


def namespaces_work() -> bool:
    """Whether a user + mount namespace with a read-only bind remount works here; checked once."""
    global _namespaces
    if _namespaces is None:
        probe = tempfile.mkdtemp()
        try:
            r = subprocess.run(["unshare", "-rm", "--propagation", "private", "sh", "-c",
                                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', "sh", probe],
                               capture_output=True, timeout=30)
            _namespaces = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _namespaces = False
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    return _namespaces


def _remount_read_only(trial: Trial, pid: int, folder: Path) -> None:
    """Make ``folder`` read-only in the child's namespace. A remount is refused while a file there
    is open for writing (the run folder's train.log): then a read-only bind is stacked on it, so
    every file opened from now on is read-only (the open train.log stays writable)."""
    enter = ["nsenter", "-t", str(pid), "-U", "-m", "--preserve-credentials"]
    remount = [*enter, "mount", "-o", "remount,bind,ro", str(folder)]
    r = subprocess.run(remount, capture_output=True, text=True, timeout=60)
    trial.out.commands.append(" ".join(remount))
    if r.returncode != 0 and "busy" in r.stderr:
        stack = [*enter, "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', "sh",
                 str(folder)]
        r = subprocess.run(stack, capture_output=True, text=True, timeout=60)
        trial.out.commands.append(" ".join(stack))
    trial.check(r.returncode == 0, f"harness: the read-only remount failed: {r.stderr}")


def read_only_trial(trial: Trial) -> None:
    """A folder turns read-only at a random moment; the run fails or stops clearly, nothing is lost."""
    rng = trial.rng
    if not namespaces_work():
        trial.note("skipped: no unprivileged user and mount namespaces here")
        return
    cfg = draw_config(rng)
    target = rng.choice(["models", "cache", "runs"])
    pause = rng.choice([f"train_step:{rng.randint(1, 35)}", "val_batch:1", "test_batch:1",
                        f"prepare_symbol:{rng.randint(1, 3)}", f"before_commit:*@{rng.randint(1, WRITES)}"])
    ending = rng.choice(["go", "SIGINT", "SIGTERM"])
    trial.inject(f"{target}/ read-only at {pause}; then {ending}")
    folder = trial.root / target
    folder.mkdir(parents=True)
    prefix = ["unshare", "-rm", "--propagation", "private", "sh", "-c",
              'mount --bind "$1" "$1" && shift && exec "$@"', "sh", str(folder)]
    env = {"INDICATOR_TRANSFORMER_PAUSE_AT": pause,
           "INDICATOR_TRANSFORMER_PAUSE_TIMEOUT": LET_GO if ending == "go" else HELD}
    live = trial.start(list(cfg), env=env, script=TRAIN, prefix=prefix)
    try:
        trial.wait_paused(live)
        _remount_read_only(trial, live.pid, folder)
        if ending == "go":
            code = live.finish(300)
            if code == 0:
                trial.note(f"no write to {target}/ after {pause}")
            else:
                trial.check(code == 1, f"exit {code} after {target}/ turned read-only, expected 1:\n"
                                       f"{tail(live.stderr)}")
                errors = [ln for ln in live.child.lines if ln.startswith("error: ")]
                trial.check(len(errors) == 1 and "Read-only file system" in errors[0],
                            f"expected one error line naming the read-only file system:\n{tail(live.stderr)}")
                trial.check_no_traceback(live, f"{target}/ read-only")
        else:
            signum = getattr(signal, ending)
            trial.signal(live, signum)
            check_graceful_stop(trial, live, signum, live.finish(120), phase=f"{target}/ read-only")
            if target == "models" and "could not be saved" in live.stderr:
                trial.check("last good checkpoint" in live.stderr,
                            f"the stop does not name the last good checkpoint:\n{tail(live.stderr)}")
        trial.check_no_process_left(live)
        # A temporary file that the read-only folder did not let it remove may stay; the next run's
        # start removes it (the strict check follows the resume).
        trial.check_files(temp_allowed=True)
        resume_to_end(trial, cfg)
        trial.check_files()
        trial.check_cache_consistent()
        trial.check_equals_reference(cfg)
    finally:
        trial.kill_everything()


def few_descriptors_trial(trial: Trial) -> None:
    """A low ``ulimit -n``: the run finishes or says how to raise the limit; never a hang."""
    rng = trial.rng
    cfg = draw_config(rng)
    limit = rng.choice([5, 6, 7, 8, 10, 12, 16, 24, 48])  # below ~8 even the preparation fails
    trial.inject(f"ulimit -n {limit}{' [1 worker]' if '--num-workers' in cfg else ''}")
    prefix = ["sh", "-c", f'ulimit -n {limit} && exec "$@"', "sh"]
    first = trial.start(list(cfg), script=TRAIN, prefix=prefix)
    try:
        code = first.finish(300)  # a hang is a failure (the harness names it)
        if code == 0:
            trial.note(f"finished under ulimit -n {limit}")
        else:
            trial.check(code in (1, 2), f"exit {code} under ulimit -n {limit}, expected 0, 1 or 2:\n"
                                        f"{tail(first.stderr)}")
            trial.check_no_traceback(first, f"ulimit -n {limit}")
            errors = [ln for ln in first.child.lines if ln.startswith("error: ")]
            trial.check(len(errors) == 1 and "ulimit -n" in errors[0],
                        f"expected one error line saying how to raise the limit:\n{tail(first.stderr)}")
        trial.check_no_process_left(first)
        trial.check_files(temp_allowed=code != 0)
        trial.check_cache_consistent()
        if code != 0:
            resume_to_end(trial, cfg)
            trial.check_files()
        trial.check_equals_reference(cfg)
    finally:
        trial.kill_everything()
