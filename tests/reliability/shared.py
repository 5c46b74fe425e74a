"""Campaigns 9-10: several processes on one working folder (issue 18).

two_runs: a run is paused at a random training step (or in its final evaluation); a second
training run, a resume or a ``--resume auto`` is started in the same folder. It must exit 2 naming
the live run's PID, before it trains, and change no file of the live run; a repair of the cache
(the live run is past its preparation) must leave its entries alone. Then the live run is stopped
or let go, and a resume to the end must equal the uninterrupted run bit for bit.

cache_maintenance: a run is paused in the middle of its preparation (entries written, not yet
committed); ``validate_cache.py`` (repair) or ``--clear-all`` is started. It must exit 2 naming the
preparing PID and remove nothing; ``--dry-run`` must run. The run is then stopped, the cache must
be consistent, and a rerun to the end must equal the uninterrupted run.
"""

from __future__ import annotations

import re
import signal

from reliability.harness import (
    BASE,
    EPOCHS,
    RESUME,
    STEPS_PER_EPOCH,
    TMP_SUFFIX,
    TRAIN,
    VALIDATE,
    Trial,
    tail,
)
from reliability.interrupts import check_graceful_stop, draw_config, resume_to_end

HELD = "300"  # seconds a pause waits for the trial's signal


def _files(trial: Trial) -> dict[str, int]:
    models = trial.root / "models"
    return {str(p.relative_to(models)): p.stat().st_mtime_ns for p in models.rglob("*")
            if p.is_file()} if models.is_dir() else {}


def two_runs_trial(trial: Trial) -> None:
    """A second writer in a live run's models folder is refused and changes nothing."""
    rng = trial.rng
    cfg = draw_config(rng)
    total = EPOCHS * STEPS_PER_EPOCH
    pause = rng.choice([f"train_step:{rng.randint(1, total - 1)}", "test_batch:1"])
    second = rng.choice(["train", "train_seed", "resume", "auto"])
    repair = rng.random() < 0.5
    ending = rng.choice(["SIGINT", "SIGTERM", "kill9"])
    trial.inject(f"{second} beside a run paused at {pause}{'; cache repair' if repair else ''}; "
                 f"then {ending}")
    live = trial.start(list(cfg), env={"INDICATOR_TRANSFORMER_PAUSE_AT": pause,
                                       "INDICATOR_TRANSFORMER_PAUSE_TIMEOUT": HELD}, script=TRAIN)
    try:
        trial.wait_paused(live)
        before = _files(trial)
        args = {"train": (list(cfg), TRAIN), "train_seed": ([*cfg, "--seed", "5"], TRAIN),
                "resume": (["--no-progress", "--no-plots"], RESUME),
                "auto": ([*cfg, "--resume", "auto"], TRAIN)}[second]
        other = trial.run(args[0], script=args[1], timeout=300)
        code = other.child.proc.returncode
        trial.check(code == 2, f"{second} in a live run's folder exited {code}, expected 2:\n"
                               f"{tail(other.stderr)}")
        trial.check(f"models/ is in use by PID {live.pid} (" in other.stderr,
                    f"{second}: the refusal does not name the live run (PID {live.pid}):\n"
                    f"{tail(other.stderr)}")
        trial.check(not re.search(r"^Training [\d,]+ parameters", other.stderr, re.M),
                    f"{second} started training beside a live run")
        trial.check_no_traceback(other, second)
        if repair:
            fix = trial.validate_cache(fix=True)
            trial.check(fix.child.proc.returncode == 0 and "orphaned: " not in fix.stdout,
                        f"a cache repair beside a trained run's cache: exit {fix.child.proc.returncode}: "
                        f"{fix.stdout[-400:]}")
        trial.check(_files(trial) == before, "files of the live run changed while it was paused: "
                    f"{sorted(set(_files(trial).items()) ^ set(before.items()))[:6]}")
        if ending == "kill9":
            trial.signal(live, signal.SIGKILL)
            live.finish(60)
        else:
            signum = getattr(signal, ending)
            trial.signal(live, signum)
            check_graceful_stop(trial, live, signum, live.finish(120), phase=pause)
        trial.check_no_process_left(live)
        trial.check_files(temp_allowed=ending == "kill9")
        resume_to_end(trial, cfg)  # a killed holder's lock is free: the resume takes it
        trial.check_files()
        trial.check_equals_reference(cfg)
    finally:
        trial.kill_everything()


def cache_maintenance_trial(trial: Trial) -> None:
    """A repair or --clear-all during a preparation is refused and removes nothing."""
    rng = trial.rng
    cfg = tuple(a for a in draw_config(rng))
    symbols = int(BASE[BASE.index("--symbols") + 1])
    at = rng.randint(1, symbols)
    what = rng.choice(["repair", "clear_all", "dry_run"])
    trial.inject(f"validate_cache {what} while preparation is paused after symbol {at}")
    live = trial.start(list(cfg), env={"INDICATOR_TRANSFORMER_PAUSE_AT": f"prepare_symbol:{at}",
                                       "INDICATOR_TRANSFORMER_PAUSE_TIMEOUT": HELD}, script=TRAIN)
    cache = trial.root / "cache"
    try:
        trial.wait_paused(live)
        # Final names only: the preparation's other threads go on writing (a temporary file is
        # renamed to its final name meanwhile).
        before = sorted(p.name for p in cache.iterdir() if not p.name.endswith(TMP_SUFFIX))
        args = {"repair": [], "clear_all": ["--clear-all"], "dry_run": ["--dry-run"]}[what]
        m = trial.run(["--cache-dir", str(cache), *args], script=VALIDATE, timeout=120)
        code = m.child.proc.returncode
        if what == "dry_run":
            trial.check(code in (0, 1) and f"in use by PID {live.pid}" in m.stdout,
                        f"--dry-run beside a preparation: exit {code}, no note naming PID {live.pid}: "
                        f"{m.stdout[-400:]}")
        else:
            trial.check(code == 2 and f"cache/ is in use by PID {live.pid}" in m.stderr,
                        f"{what} during a preparation: exit {code}, expected 2 naming PID {live.pid}:\n"
                        f"{tail(m.stderr)}{tail(m.stdout)}")
        trial.check_no_traceback(m, what)
        trial.check(set(before) <= {p.name for p in cache.iterdir()},
                    f"{what} removed cache files of a live preparation")
        trial.signal(live, signal.SIGINT)
        check_graceful_stop(trial, live, signal.SIGINT, live.finish(120), phase="prepare")
        trial.check_no_process_left(live)
        trial.check_cache_consistent(command=True)
        trial.check_files()
        resume_to_end(trial, cfg, how="auto")
        trial.check_files()
        trial.check_equals_reference(cfg)
    finally:
        trial.kill_everything()
