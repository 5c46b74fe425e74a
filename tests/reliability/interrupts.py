"""Campaigns 1-3: a stop signal, two or three quick Ctrl-Cs, and ``kill -9``, at a random moment of
a real single-process run; then every file check and a resume to the end, which must equal the
uninterrupted run bit for bit.

Moments are reached exactly with the named pause points (indicator_transformer/faults.py): the
child prints ``PAUSED <point> <n>`` and waits for a real signal. ``startup`` and ``random_instant``
use no pause point: the signal comes after a random delay, wherever the process happens to be.
"""

from __future__ import annotations

import random
import signal
import time

from reliability.harness import (
    BASE,
    EPOCHS,
    EXIT_BY_SIGNAL,
    RESUME,
    STEPS_PER_EPOCH,
    TEST_BATCHES,
    TRAIN,
    VAL_BATCHES,
    Proc,
    Trial,
    TrialFailure,
    tail,
)

TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
CHECKPOINT_EVERY = 5
# Seconds from start to the end of an uninterrupted run of BASE on this machine (roughly): a
# random instant is drawn below it, so it falls in start-up, preparation, training or the report.
RUN_SECONDS = 10.0


def draw_config(rng: random.Random) -> tuple[str, ...]:
    """BASE, with or without periodic checkpoints and a DataLoader worker process."""
    cfg = list(BASE)
    if rng.random() < 0.5:
        cfg += ["--checkpoint-every", str(CHECKPOINT_EVERY), "--keep", "3"]
    if rng.random() < 0.3:
        cfg += ["--num-workers", "1"]
    return tuple(cfg)


def _step_checkpoints() -> list[str]:
    return [f"checkpoint_epoch_{(s - 1) // STEPS_PER_EPOCH + 1}_step_{s}.pth"
            for s in range(CHECKPOINT_EVERY, TOTAL_STEPS, CHECKPOINT_EVERY) if s % STEPS_PER_EPOCH]


def draw_moment(rng: random.Random, cfg: tuple[str, ...], *, writes_weight: float = 1.0
                ) -> tuple[str, str | None, float]:
    """(phase, pause spec or None, delay in seconds) of a random moment of a run of ``cfg``.

    ``writes_weight`` raises the odds of landing inside a file write (kill -9 needs those most)."""
    phases = {"startup": 0.5, "prepare": 1.0, "first_batch": 0.7, "mid_epoch": 1.5, "epoch_end": 0.8,
              "validation": 1.0, "checkpoint_write": 1.2 * writes_weight, "cache_write": 0.8 * writes_weight,
              "final_eval": 1.0, "report": 1.0 * writes_weight, "random_instant": 1.2}
    phase = rng.choices(list(phases), weights=list(phases.values()))[0]
    if phase == "startup":
        return phase, None, rng.uniform(0.0, 1.5)
    if phase == "random_instant":
        return phase, None, rng.uniform(0.0, RUN_SECONDS)
    if phase == "prepare":
        return phase, f"prepare_symbol:{rng.randint(1, 3)}", 0.0
    if phase == "first_batch":
        return phase, "train_step:1", 0.0
    if phase == "mid_epoch":
        step = rng.choice([s for s in range(2, TOTAL_STEPS) if s % STEPS_PER_EPOCH])
        return phase, f"train_step:{step}", 0.0
    if phase == "epoch_end":
        step = rng.choice(range(STEPS_PER_EPOCH, TOTAL_STEPS + 1, STEPS_PER_EPOCH))
        return phase, f"train_step:{step}", 0.0
    if phase == "validation":
        return phase, f"val_batch:{rng.randint(1, VAL_BATCHES)}@{rng.randint(1, EPOCHS)}", 0.0
    if phase == "final_eval":
        return phase, f"test_batch:{rng.randint(1, TEST_BATCHES)}", 0.0
    if phase == "checkpoint_write":
        names = [f"checkpoint_epoch_{e}.pth" for e in range(1, EPOCHS + 1)]
        names += [f"best.pth@{e}" for e in range(1, EPOCHS + 1)]
        if "--checkpoint-every" in cfg:
            names += _step_checkpoints()
        return phase, f"before_commit:{rng.choice(names)}", 0.0
    if phase == "cache_write":  # the first writes of a run are the cache's: 3 data files, the manifest
        return phase, rng.choice(["before_commit:*@1", "before_commit:*@2", "before_commit:*@3",
                                  "before_commit:manifest.json@1"]), 0.0
    # report: metrics.csv after each epoch, summary.json and evaluation.json at the end
    target = rng.choice([f"metrics.csv@{k}" for k in range(1, EPOCHS + 2)] + ["summary.json@1",
                                                                            "evaluation.json"])
    return "report", f"before_commit:{target}", 0.0


def start_and_reach(trial: Trial, cfg: tuple[str, ...], pause: str | None, delay: float) -> Proc:
    """Start the training command and return once the moment is reached (paused, or after delay)."""
    env = {"INDICATOR_TRANSFORMER_PAUSE_AT": pause} if pause else None
    proc = trial.start(list(cfg), env=env, script=TRAIN)
    if pause:
        trial.wait_paused(proc)
    else:
        time.sleep(delay)
    return proc


def resume_to_end(trial: Trial, cfg: tuple[str, ...], *, how: str | None = None) -> Proc:
    """Continue to the end: ``resume_training.py`` when a checkpoint exists (or ``train ...
    --resume auto``, drawn at random), otherwise the same training command with ``--resume auto``."""
    models = trial.root / "models"
    has_checkpoint = models.is_dir() and any(p.suffix == ".pth" for p in models.iterdir())
    how = how or ("resume" if has_checkpoint and trial.rng.random() < 0.6 else "auto")
    if how == "resume":
        extra = [a for a in cfg if a in ("--no-progress", "--no-plots")]
        proc = trial.run(extra, script=RESUME, timeout=300)
    else:
        proc = trial.run([*cfg, "--resume", "auto"], script=TRAIN, timeout=300)
    code = proc.child.proc.returncode
    trial.check(code == 0, f"resume ({how}) exited {code}:\n{tail(proc.stderr, 20)}")
    trial.check_no_traceback(proc, f"resume ({how})")
    trial.check("skipping corrupt checkpoint" not in proc.stderr,
                f"resume ({how}) found a corrupt checkpoint after an interruption:\n{tail(proc.stderr, 10)}")
    trial.check_no_process_left(proc)
    return proc


def _reached_handler(proc: Proc) -> bool:
    return any(line.startswith("Received SIG") for line in proc.child.lines)


def check_graceful_stop(trial: Trial, proc: Proc, signum: int, code: int, *, phase: str) -> None:
    """The documented exit code, ``Cleanup complete`` printed last, nothing corrupt, no process."""
    expected = EXIT_BY_SIGNAL[signum]
    name = signal.Signals(signum).name
    if not _reached_handler(proc) and code in (0, -signum):
        # Before the handler is installed (interpreter start-up) the default action applies: the
        # shell shows it as 128+n as well. After the run ended (0), the signal came too late.
        trial.note(f"{name} {'before the handler was installed' if code else 'after the run ended'}")
        if code == -signum:
            trial.check("Traceback" not in proc.stderr or "KeyboardInterrupt" in proc.stderr,
                        f"{name} at start-up: a traceback:\n{tail(proc.stderr)}")
        return
    trial.check(code == expected, f"{name} during {phase}: exit code {code}, expected {expected}:\n"
                                  f"{tail(proc.stderr)}")
    if code == 0:
        return
    if not _reached_handler(proc) and (proc.last_line() or "").startswith("Interrupted"):
        # A Ctrl-C while the libraries load (before the handler exists): exit 130, nothing started.
        trial.note(f"{name} at start-up, before the handler: '{proc.last_line()}'")
        trial.check_no_traceback(proc, f"{name} at start-up")
        return
    trial.check(proc.last_line() == "Cleanup complete",
                f"{name} during {phase}: last line {proc.last_line()!r}, expected 'Cleanup complete'")
    trial.check_no_traceback(proc, f"{name} during {phase}")


def signal_trial(trial: Trial) -> None:
    """Campaign 1: one stop signal (SIGINT, SIGTERM, SIGUSR1 or SIGHUP) at a random moment."""
    rng = trial.rng
    cfg = draw_config(rng)
    phase, pause, delay = draw_moment(rng, cfg)
    signum = rng.choices([signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP], [3, 3, 2, 1])[0]
    group = signum == signal.SIGINT and rng.random() < 0.5  # a terminal's Ctrl-C reaches the group
    trial.inject(f"{signal.Signals(signum).name}{' to the group' if group else ''} during {phase} "
                 f"({pause or f'after {delay:.2f}s'}){_cfg_note(cfg)}")
    proc = start_and_reach(trial, cfg, pause, delay)
    trial.signal(proc, signum, group=group)
    code = proc.finish(120)
    check_graceful_stop(trial, proc, signum, code, phase=phase)
    trial.check_no_process_left(proc)
    trial.check_files()
    trial.check_cache_consistent()
    if code != 0:
        resume_to_end(trial, cfg)
    trial.check_files()
    trial.check_equals_reference(cfg)


def multi_signal_trial(trial: Trial) -> None:
    """Campaign 2: two or three Ctrl-Cs (or SIGTERMs) a random few milliseconds apart."""
    rng = trial.rng
    cfg = draw_config(rng)
    phase, pause, delay = draw_moment(rng, cfg)
    signum = rng.choice([signal.SIGINT, signal.SIGINT, signal.SIGTERM])
    count = rng.choice([2, 3])
    gaps = [rng.choice([0.0, rng.uniform(0.0, 0.02), rng.uniform(0.0, 0.3)]) for _ in range(count - 1)]
    group = signum == signal.SIGINT and rng.random() < 0.5
    trial.inject(f"{count}x {signal.Signals(signum).name}{' to the group' if group else ''} during {phase} "
                 f"({pause or f'after {delay:.2f}s'}), gaps {', '.join(f'{g * 1000:.0f}ms' for g in gaps)}"
                 f"{_cfg_note(cfg)}")
    proc = start_and_reach(trial, cfg, pause, delay)
    trial.signal(proc, signum, group=group)
    for gap in gaps:
        time.sleep(gap)
        trial.signal(proc, signum, group=group)
    t0 = time.monotonic()
    code = proc.finish(60)
    took = time.monotonic() - t0
    trial.check(took < 30, f"no prompt exit: {took:.1f}s after the last signal")
    expected = EXIT_BY_SIGNAL[signum]
    if code != 0:
        # Before the handler: the default action (-n); otherwise the documented code, at once.
        trial.check(code in (expected, -signum),
                    f"exit code {code}, expected {expected}:\n{tail(proc.stderr)}")
        if code == expected:
            trial.check("Traceback" not in proc.stderr, f"a traceback:\n{tail(proc.stderr)}")
    trial.check_no_process_left(proc)
    # A second signal may abandon a temporary file (never a final name): allowed, files verify.
    trial.check_files(temp_allowed=True)
    if "abandoning pending work" in proc.stderr and (trial.root / "cache").exists():
        # A hard exit, like kill -9, may leave computed entries no manifest lists yet: never used,
        # and validate_cache.py removes them (the resume below recomputes them anyway).
        fixed = trial.validate_cache(fix=True)
        trial.check(fixed.child.proc.returncode == 0 and "Cache is consistent" in fixed.stdout,
                    f"validate_cache.py after a hard exit: exit {fixed.child.proc.returncode}\n"
                    f"{fixed.stdout[-600:]}")
    trial.check_cache_consistent()
    if code != 0:
        resume_to_end(trial, cfg)
    trial.check_files()
    trial.check_equals_reference(cfg)


def kill9_trial(trial: Trial) -> None:
    """Campaign 3: SIGKILL at a random moment, often inside a checkpoint or cache write;
    validate_cache.py repairs, --list shows only complete checkpoints, a plain resume continues."""
    rng = trial.rng
    cfg = draw_config(rng)
    phase, pause, delay = draw_moment(rng, cfg, writes_weight=2.5)
    group = rng.random() < 0.3
    trial.inject(f"kill -9{' of the group' if group else ''} during {phase} "
                 f"({pause or f'after {delay:.2f}s'}){_cfg_note(cfg)}")
    proc = start_and_reach(trial, cfg, pause, delay)
    trial.signal(proc, signal.SIGKILL, group=group)
    code = proc.finish(60)
    if code == 0:
        trial.note("the run ended before the kill")
    else:
        trial.check(code == -signal.SIGKILL, f"exit code {code} after kill -9")
    trial.check_no_process_left(proc)
    trial.check_files(temp_allowed=True)  # a killed writer leaves its temporary file, never a final one

    # validate_cache.py repairs whatever the kill left; afterwards the cache is consistent.
    if (trial.root / "cache").exists():
        fixed = trial.validate_cache(fix=True)
        trial.check(fixed.child.proc.returncode == 0 and "Cache is consistent" in fixed.stdout,
                    f"validate_cache.py after kill -9: exit {fixed.child.proc.returncode}\n"
                    f"{fixed.stdout[-500:]}"
                    f"{tail(fixed.stderr)}")
        trial.check_no_traceback(fixed, "validate_cache.py")
    # --list shows only complete checkpoints (none CORRUPT: every write was atomic).
    if (trial.root / "models").is_dir():
        listed = trial.list_checkpoints()
        trial.check(listed.child.proc.returncode == 0, f"--list exited {listed.child.proc.returncode}")
        trial.check("CORRUPT" not in listed.stdout, f"--list shows a corrupt checkpoint after kill -9:\n"
                                                    f"{listed.stdout}")
        trial.check_no_traceback(listed, "--list")
    if code != 0:
        resume_to_end(trial, cfg)
    trial.check_files()
    trial.check_equals_reference(cfg)


def _cfg_note(cfg: tuple[str, ...]) -> str:
    extra = []
    if "--checkpoint-every" in cfg:
        extra.append(f"checkpoint-every {CHECKPOINT_EVERY}")
    if "--num-workers" in cfg:
        extra.append("1 worker")
    return f" [{', '.join(extra)}]" if extra else ""


__all__ = ["signal_trial", "multi_signal_trial", "kill9_trial", "draw_config", "draw_moment",
           "resume_to_end", "start_and_reach", "TrialFailure"]
