"""``indicator-transformer sweep``: tune the model's settings with Optuna, every trial an ordinary
run that a stop or a kill never costs more than its current optimizer step.

    indicator-transformer sweep --space space.toml --trials 20 --out sweep
    indicator-transformer sweep --space space.toml --trials 20 --out sweep   # continues
    indicator-transformer sweep --status --out sweep

Every train flag applies to every trial (the swept settings excepted). See sweep/study.py for the
folder layout and how trials are claimed and resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..config import Config, build_config, load_toml
from ..errors import UserError
from ..shutdown import SignalHandler
from ..startup import deferred_interrupt
from .common import check_folders, run_with_handler
from .options import add_common_switches, add_setting_flags, flag_values

IDLE_S = 5.0  # a worker with free slots and no work looks for some (another's orphan) this often
SET_PER_TRIAL = {"models_dir": "--out", "runs_dir": "--out"}


class TrialFailed(UserError):
    """A trial's run ended with bad input or was killed: the sweep stops, the trial stays to continue."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def configure(p: argparse.ArgumentParser) -> None:
    """The flags: the sweep's own, then every train flag."""
    p.epilog = ("Exit codes: 0 done (or nothing left to do), 130/143/138 stopped by SIGINT/SIGTERM/SIGUSR1 "
                "(the trial in progress saved its checkpoint; the same command continues it), 2 bad "
                "input or usage (the space file, a flag, a trial's run refusing its input), 1 a database "
                "or storage fault, or a trial's process killed. Every train flag applies to every trial; "
                "the space file's settings are the trial's own.")
    g = p.add_argument_group("the sweep")
    g.add_argument("--space", default=None, help="TOML file of the settings to sweep, named like the train "
                   "flags: lr = {low = 1e-4, high = 1e-2, log = true}, d_model = {choices = [16, 32, 64]}, "
                   "window = {low = 16, high = 64, step = 16}")
    g.add_argument("--trials", type=int, default=20, help="trials in the study in all, counting those "
                   "of earlier starts and of other workers (default: 20)")
    g.add_argument("--storage", default=None, help="the study's database, an SQLAlchemy URL (default: "
                   "sqlite:///DIR/sweep.db); postgresql://user@host/db for workers on several machines, "
                   "which then share --out on one filesystem too")
    g.add_argument("--study", default="sweep", help="the study's name in the storage (default: sweep)")
    g.add_argument("--objective", choices=("val_loss", "val_ic"), default="val_loss",
                   help="what the sweep optimises, on the validation split: val_loss (lower is better) "
                        "or val_ic (higher), of the epoch whose model the run tests (its best "
                        "validation loss) (default: val_loss)")
    g.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median: stop a trial after an epoch whose objective is worse than the median of "
                        "the earlier trials at that epoch (Optuna's MedianPruner); its checkpoint is kept "
                        "(default: median)")
    g.add_argument("--pruner-startup-trials", type=int, default=5, metavar="K",
                   help="no pruning until K trials have finished (default: 5)")
    g.add_argument("--sweep-seed", type=int, default=None, metavar="S",
                   help="seed of the sampler (TPE): with one worker, the same trials in the same order "
                        "however often the sweep is stopped (default: random)")
    g.add_argument("--jobs", type=int, default=1, help="trials at once, as separate processes; each gets "
                   "--threads threads (default: the cores divided by --jobs) (default: 1)")
    g.add_argument("--out", default="sweep", help="the sweep's folder (default: sweep)")
    g.add_argument("--status", action="store_true", help="print the trials and the best one, and exit")
    add_setting_flags(p)
    add_common_switches(p)


def run(args: argparse.Namespace) -> int:
    """Check the settings, then run (or continue) the sweep, or print its status."""
    if not str(args.out).strip():
        raise UserError(f"--out {args.out!r}: expected a folder name for the sweep")
    out = Path(args.out)
    from ..sweep import storage as st

    url = args.storage if args.storage is not None else st.default_url(out)
    if not url.strip():
        raise UserError("--storage: expected a database URL, got an empty string")
    if not args.study.strip():
        raise UserError("--study: expected a study name, got an empty string")
    if args.status:
        return status(out, url, args.study)
    from ..training import distributed

    if distributed.under_torchrun():
        raise UserError("sweep starts each trial as its own process: run it without torchrun")
    if args.space is None:
        raise UserError("--space FILE is required: the settings to sweep and their ranges")
    if args.config is not None and not args.config.strip():
        raise UserError("--config: expected a TOML file name, got an empty string")
    if not 1 <= args.trials <= 100_000:
        raise UserError(f"--trials {args.trials}: expected 1 to 100,000")
    if not 1 <= args.jobs <= 256:
        raise UserError(f"--jobs {args.jobs}: expected 1 to 256 trials at once")
    if not 0 <= args.pruner_startup_trials <= 100_000:
        raise UserError(f"--pruner-startup-trials {args.pruner_startup_trials}: expected 0 or more")
    if args.sweep_seed is not None and not 0 <= args.sweep_seed < 2**63:
        raise UserError(f"--sweep-seed {args.sweep_seed}: expected 0 to 2**63 - 1")
    raw = load_toml(args.config) if args.config is not None else {}
    given = flag_values(args)
    for key, instead in SET_PER_TRIAL.items():
        if key in given or key in raw or any(isinstance(v, dict) and key in v for v in raw.values()):
            raise UserError(f"{'--' + key.replace('_', '-') if key in given else args.config + ': ' + key}: "
                            f"set for each trial by the sweep (use {instead})")
    if "threads" not in given and not any(isinstance(v, dict) and "threads" in v for v in raw.values()) \
            and "threads" not in raw:
        given["threads"] = max(1, (os.cpu_count() or 1) // args.jobs)
    cfg = build_config(raw, given, args.config)
    from ..sweep.space import load_space

    space = load_space(args.space, cfg)
    both = [n for n in space.names() if n in given]
    if both:
        raise UserError(f"--{both[0].replace('_', '-')}: also swept by {args.space}; give it in one place")
    check_folders(cfg, models=False)
    extra = [flag for flag, on in (("--no-progress", args.no_progress), ("--no-plots", args.no_plots)) if on]
    return run_with_handler(lambda handler: _sweep(cfg, space, out, url, args, handler, extra))


def _sweep(cfg: Config, space: Any, out: Path, url: str, args: argparse.Namespace, handler: SignalHandler,
           extra: list[str]) -> int:
    with deferred_interrupt():
        import optuna  # noqa: F401 - loaded once here, under the deferred interrupt

        from ..data.cache import FeatureCache
        from ..experiment import walkforward as wf
        from ..run import prepare_data
        from ..sweep import report
        from ..sweep import storage as st
        from ..sweep.study import Sweep, params_text
    stream = sys.stderr
    started = time.perf_counter()
    made = not out.exists() and url == st.default_url(out)
    if made:  # the default database's folder
        out.mkdir(parents=True)
    try:
        storage = st.open_storage(url)
    except UserError:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # nothing written
        raise
    data = prepare_data(cfg, handler, FeatureCache(cfg.data.cache_dir).open(), stream,
                        "--no-progress" not in extra)
    if handler.should_stop:
        return handler.exit_code
    fingerprint = data.fingerprint
    del data  # the trials read the cache themselves
    sweep = Sweep(storage, url, args.study, space, cfg, out, args.objective, args.pruner,
                  args.pruner_startup_trials, args.sweep_seed)
    sweep.open(fingerprint)
    os.environ[st.STORAGE_ENV] = url  # for the trials' processes (not in any file: it may hold a password)
    jobs = args.jobs
    running: dict[int, tuple[Any, subprocess.Popen, contextlib.ExitStack, float]] = {}
    beats: dict[int, float] = {}
    fatal: tuple[Any, int] | None = None
    passed = False
    told: set[int] = set()
    idle_until = 0.0  # no work the last time: look again after a while, not every 50 ms
    if jobs > 1:
        print(f"Running up to {jobs} trials at a time, {cfg.train.threads} thread(s) each", file=stream,
              flush=True)
    try:
        while True:
            while not handler.shutdown_requested and fatal is None and len(running) < jobs \
                    and time.monotonic() >= idle_until:
                held = contextlib.ExitStack()
                try:
                    got = sweep.claim(held, args.trials, set(running))
                except BaseException:
                    held.close()
                    raise
                if got is None:
                    held.close()
                    idle_until = time.monotonic() + IDLE_S
                    break
                spec, how = got
                trial_file = sweep.trial_file(spec)
                print(f"[trial {spec.number}] {'continuing' if how == 'resumed' else 'starting'}: "
                      f"{params_text(spec.params)} ({spec.root})",
                      file=stream, flush=True)
                log = spec.root / "console.log" if jobs > 1 else None
                try:
                    proc = wf.start_run(spec, cfg, [*extra, "--sweep-trial", str(trial_file.absolute())], log)
                except BaseException:
                    held.close()
                    raise
                running[spec.number] = (spec, proc, held, time.perf_counter())
                sweep.heartbeat(spec.number)
                beats[spec.number] = time.monotonic()
            if not running and (not sweep.waiting or handler.shutdown_requested or fatal is not None):
                break
            if not running:  # only a dead worker's trial left, its process still saving: wait for it
                for number, holder in sweep.waiting.items():
                    if number not in told:
                        told.add(number)
                        print(f"trial {number}: waiting for the process still holding its models folder "
                              f"to end ({holder})", file=stream, flush=True)
                idle_until = time.monotonic() + 0.5
            if (handler.shutdown_requested or fatal is not None) and not passed:
                passed = True
                for _, proc, _, _ in running.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, handler.signal_received or signal.SIGINT)
            for number, (spec, proc, held, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    if time.monotonic() - beats[number] > st.HEARTBEAT_S:
                        sweep.heartbeat(number)
                        beats[number] = time.monotonic()
                    continue
                del running[number]
                idle_until = 0.0  # a slot is free: another worker's orphan, or the next trial
                try:
                    _ended(sweep, spec, code, time.perf_counter() - t0, handler, stream, jobs)
                except TrialFailed as e:
                    fatal = fatal or (spec, e.exit_code)
                    print(f"error: {e}", file=stream, flush=True)
                finally:
                    held.close()
            time.sleep(0.05)
    finally:
        for _, proc, held, _ in running.values():  # an error here: the trials save and end too
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
            held.close()
    if handler.shutdown_requested:
        print(f"Sweep stopped after {wf.elapsed(started)}: the trial(s) in progress saved their "
              f"checkpoints and stay to be continued; the same command continues them, then the "
              f"remaining trials", file=stream, flush=True)
        return handler.exit_code
    if fatal is not None:
        raise TrialFailed(f"the sweep stopped: trial {fatal[0].number} cannot go on as it is (its files "
                          f"in {fatal[0].root}); the same command continues it once that is fixed", fatal[1])
    from optuna.trial import TrialState

    elsewhere = sweep.trials((TrialState.RUNNING,))
    report.write_report(sweep, stream, plots="--no-plots" not in extra)
    if elsewhere:
        print(f"note: trial(s) {', '.join(str(t.number) for t in elsewhere)} are still running in other "
              f"workers (or were stopped): the report is of the trials finished so far", file=stream,
              flush=True)
    print(f"Sweep complete in {wf.elapsed(started)}", file=stream, flush=True)
    return 0


def _ended(sweep: Any, spec: Any, code: int, seconds: float, handler: SignalHandler, stream: Any,
           jobs: int) -> None:
    where = f"its console: {spec.root / 'console.log'}" if jobs > 1 else "its output is above"
    if code == 0:
        state = sweep.finish(spec, seconds)
        print(f"[trial {spec.number}] {state.lower()} in {seconds:.1f}s", file=stream, flush=True)
        return
    if handler.shutdown_requested:
        return  # stopped with the sweep: it stays RUNNING, with its checkpoint, to be continued
    if code == 2 or code < 0 or code >= 128:
        why = "bad input" if code == 2 else f"killed by {_signal_name(-code if code < 0 else code - 128)}"
        raise TrialFailed(f"trial {spec.number}'s run ended with exit code {code} ({why}; {where})",
                          2 if code == 2 else 1)
    sweep.fail(spec, f"its run failed with exit code {code} ({where})")
    print(f"[trial {spec.number}] failed: its run ended with exit code {code} ({where}); the sweep goes on",
          file=stream, flush=True)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def status(out: Path, url: str, study_name: str) -> int:
    """The trials from the storage and the folders (nothing is written)."""
    import optuna

    from ..folder_lock import folder_holder
    from ..sweep import report
    from ..sweep import storage as st
    from ..sweep.study import RECORD_KEY, trial_root

    if url == st.default_url(out) and not (out / "sweep.db").is_file():
        raise UserError(f"{out}: no sweep here (sweep.db is missing; give --storage if it is elsewhere)")
    storage = st.open_storage(url)
    with st.db_errors(url, "reading the study"):
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise UserError(f"no study {study_name!r} in {st.shown(url)} (give --study)") from None
        record = study.user_attrs.get(RECORD_KEY) or {}
        names = list(record.get("space", {}))
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state.name == "RUNNING"]
        complete = sum(1 for t in trials if t.state.name == "COMPLETE")
    report.report(study, out, study_name, url, record.get("objective", "val_loss"), names, None,
                  sys.stdout, write=False)
    for n in running:
        holder = folder_holder(trial_root(out, n))
        print(f"trial {n}: " + (f"running ({holder})" if holder else
                                "stopped: the next sweep command continues it from its checkpoint"))
    print(f"{complete} of {len(trials)} trial(s) complete")
    return 0
