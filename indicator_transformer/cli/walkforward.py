"""``indicator-transformer walk-forward``: retrain on the past, test on the next period, roll on,
for several seeds; the out-of-sample report pooled over folds, as mean +- std over seeds.

    indicator-transformer walk-forward --folds 4 --seeds 0,1,2 --test-bars 250 --out wf
    indicator-transformer walk-forward --folds 4 --seeds 0,1,2 --test-bars 250 --out wf   # continues
    indicator-transformer walk-forward --status --out wf

Every train flag applies to every run (see experiment/walkforward.py for the folder layout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..config import Config, build_config, load_toml
from ..errors import UserError
from ..experiment import walkforward as wf
from ..experiment.folds import CALENDARS, WINDOW_KINDS, Fold, parse_period, plan
from ..shutdown import SignalHandler
from ..startup import deferred_interrupt
from .common import check_folders, print_table, run_with_handler
from .options import add_common_switches, add_setting_flags, flag_values

# Settings each run gets from the experiment: giving them is a mistake, not an override.
SET_PER_RUN = {"seed": "--seeds", "models_dir": "--out", "runs_dir": "--out", "val_start": "--folds",
               "test_start": "--folds", "train_start": "--window-kind rolling --train-bars/--train-period",
               "test_end": "--folds"}


class RunFailed(UserError):
    """A run of the experiment ended with an error: the experiment stops with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


# The experiment's own flags and their defaults; each has its key in the config file's
# [walk_forward] section (a flag given wins over the file), with the TOML types it accepts.
DEFAULTS: dict[str, Any] = {"folds": 4, "seeds": "0,1,2", "test_bars": None, "test_period": None,
                            "window_kind": "expanding", "train_bars": None, "train_period": None,
                            "jobs": 1, "out": "walk_forward", "fold_calendar": "auto", "nproc_per_node": 0}
TOML_TYPES: dict[str, type | tuple[type, ...]] = {
    "folds": int, "seeds": (str, list, int), "test_bars": int, "test_period": str, "window_kind": str,
    "train_bars": int, "train_period": str, "jobs": int, "out": str, "fold_calendar": str,
    "nproc_per_node": int}


def configure(p: argparse.ArgumentParser) -> None:
    """The flags: the experiment's own, then every train flag."""
    g = p.add_argument_group("the experiment (each also a key of the config file's [walk_forward] "
                             "section; a flag given wins)")
    g.add_argument("--folds", type=int, default=None, help="number of test periods, contiguous, at the "
                   "end of the calendar (default: 4)")
    g.add_argument("--seeds", default=None, help="comma-separated seeds; each seeds the model and every "
                   "stochastic baseline of its runs (default: 0,1,2)")
    g.add_argument("--test-bars", type=int, default=None, help="length of each test period in bars of the "
                   "common calendar")
    g.add_argument("--test-period", default=None, help="length of each test period in calendar time: 90d, "
                   "6w, 3m, 1q, 1y (give this or --test-bars)")
    g.add_argument("--window-kind", choices=WINDOW_KINDS, default=None,
                   help="expanding: each fold trains on everything before its test period; rolling: on a "
                        "fixed length before it (--train-bars or --train-period) (default: expanding)")
    g.add_argument("--fold-calendar", choices=CALENDARS, default=None,
                   help="where the fold boundaries go: common (every symbol's bars together: each fold "
                        "tests the same dates of every symbol), per-symbol (each symbol's own last periods, "
                        "for files covering different years), auto: common unless a symbol would have "
                        "no test window in some fold (default: auto)")
    g.add_argument("--train-bars", type=int, default=None, help="rolling: training period length in bars")
    g.add_argument("--train-period", default=None, help="rolling: training period length (90d ... 5y)")
    g.add_argument("--jobs", type=int, default=None, help="runs at once, as separate processes sharing the "
                   "feature cache; each gets --threads threads (default: the cores divided by --jobs, "
                   "kept for the experiment: give --threads to compare --jobs settings bit for bit) "
                   "(default: 1)")
    g.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="run each run under torchrun with N ranks on this machine (gloo on CPU, NCCL on "
                        "GPUs), one run at a time; its figures differ from a single process's, so N is "
                        "part of the experiment (default: each run one process)")
    g.add_argument("--out", default=None, help="the experiment's folder (default: walk_forward)")
    g.add_argument("--status", action="store_true", help="print each run's state and exit")
    g.add_argument("--new", action="store_true", help="move an earlier experiment in --out aside "
                   "(previous_experiments/<time>/, untouched) instead of refusing different settings")
    add_setting_flags(p)
    add_common_switches(p)


def _experiment_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the experiment's flags not given from the config file's [walk_forward] section, then
    from the defaults (in ``args``); the file's run settings (:func:`load_toml`, {} without one)."""
    from ..config import load_command_section

    section, raw = {}, {}
    args.origin = {}  # key -> where its value came from, for the messages
    if args.config is not None and args.config.strip():
        raw = load_toml(args.config)  # an unreadable or malformed file: its own error, naming it
        section = load_command_section(args.config, "walk_forward", TOML_TYPES)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is not None:
            args.origin[key] = "--" + key.replace("_", "-")
            continue
        value = section.get(key, default)
        args.origin[key] = (f"{args.config}: [walk_forward] {key} =" if key in section
                            else "--" + key.replace("_", "-"))
        if key == "seeds" and isinstance(value, (list, int)):
            values = value if isinstance(value, list) else [value]
            if not values:
                raise UserError(f"{args.config}: [walk_forward] seeds = []: expected one seed or more")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise UserError(f"{args.config}: [walk_forward] seeds = {value!r}: expected whole numbers")
            value = ",".join(str(v) for v in values)
        for name, allowed in (("window_kind", WINDOW_KINDS), ("fold_calendar", CALENDARS)):
            if key == name and value not in allowed:
                raise UserError(f"{args.config}: [walk_forward] {name} = {value!r}: expected one of "
                                f"{', '.join(allowed)}")
        setattr(args, key, value)
    return raw


def _seeds(text: str, origin: str = "--seeds") -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{origin} {text!r}: expected comma-separated whole numbers, such as 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**63 for s in seeds):
        raise UserError(f"{origin} {text!r}: expected distinct seeds from 0 to 2**63 - 1")
    return seeds


def run(args: argparse.Namespace) -> int:
    """Check the settings, then run (or continue) the experiment, or print its status."""
    raw = _experiment_flags(args)
    if not str(args.out).strip():
        raise UserError(f"{args.origin['out']} {args.out!r}: expected a folder name for the experiment")
    out = Path(args.out)
    if args.status:
        return status(out)
    from ..training import distributed

    if distributed.under_torchrun():
        raise UserError("walk-forward starts each run as its own process: run it without torchrun, and "
                        "give --nproc-per-node N to run each run under torchrun with N ranks")
    if args.config is not None and not args.config.strip():
        raise UserError("--config: expected a TOML file name, got an empty string")
    given = flag_values(args)
    for key, instead in SET_PER_RUN.items():
        if key in given or _in_toml(raw, key):
            where = f"--{key.replace('_', '-')}" if key in given else f"{args.config}: {key}"
            raise UserError(f"{where}: set for each run by the experiment (use {instead})")
    o = args.origin
    if not 1 <= args.jobs <= 256:
        raise UserError(f"{o['jobs']} {args.jobs}: expected 1 to 256 runs at once")
    if not 0 <= args.nproc_per_node <= 1024:
        raise UserError(f"{o['nproc_per_node']} {args.nproc_per_node}: expected 1 to 1,024 ranks per run "
                        f"(or 0: each run one process)")
    if args.folds is not None and not 1 <= args.folds <= 1000:
        raise UserError(f"{o['folds']} {args.folds}: expected 1 to 1,000")
    for key in ("test_bars", "train_bars"):
        if getattr(args, key) is not None and getattr(args, key) < (1 if key == "test_bars" else 2):
            raise UserError(f"{o[key]} {getattr(args, key)}: expected at least "
                            f"{1 if key == 'test_bars' else 2} bars")
    if args.nproc_per_node and args.jobs > 1:
        raise UserError(f"--nproc-per-node {args.nproc_per_node} with --jobs {args.jobs}: a run under "
                        f"torchrun uses every rank, so runs go one at a time (leave out --jobs)")
    if "threads" not in given and not _in_toml(raw, "threads"):
        # The runs' figures depend on their thread count: fixed for the experiment, at its first
        # start (a later start with other --jobs continues with the same).
        fresh = max(1, (os.cpu_count() or 1) // args.jobs // max(1, args.nproc_per_node))
        given["threads"] = (None if args.new else _recorded_threads(out)) or fresh
    cfg = build_config(raw, given, args.config)
    settings = wf.Settings(
        folds=args.folds, seeds=_seeds(args.seeds, o["seeds"]), window_kind=args.window_kind,
        test_bars=args.test_bars,
        test_period=parse_period(args.test_period, o["test_period"]) if args.test_period else None,
        train_bars=args.train_bars,
        train_period=parse_period(args.train_period, o["train_period"]) if args.train_period else None,
        calendar=args.fold_calendar, nproc_per_node=args.nproc_per_node)
    check_folders(cfg, models=False)
    extra = [flag for flag, on in (("--no-progress", args.no_progress), ("--no-plots", args.no_plots)) if on]
    return run_with_handler(lambda handler: _experiment(cfg, settings, out, handler, args.new, extra,
                                                        args.jobs))


def _recorded_threads(out: Path) -> int | None:
    import json

    try:
        doc = json.loads((out / wf.EXPERIMENT_FILE).read_text(encoding="utf-8"))
        return int(doc["config"]["train"]["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _in_toml(raw: dict, key: str) -> bool:
    return any(isinstance(v, dict) and key in v for v in raw.values()) or key in raw


def _experiment(cfg: Config, settings: wf.Settings, out: Path, handler: SignalHandler, new: bool,
                extra: list[str], jobs: int) -> int:
    with deferred_interrupt():
        from ..data.cache import FeatureCache
        from ..folder_lock import hold_folder
        from ..run import prepare_data
    stream = sys.stderr
    started = time.perf_counter()
    with hold_folder(out, "walk-forward", flag="--out"):
        from ..atomic import remove_stale_temp_files

        remove_stale_temp_files(out)  # report files of an experiment killed while writing them
        data = prepare_data(cfg, handler, FeatureCache(cfg.data.cache_dir).open(), stream,
                            "--no-progress" not in extra)
        if handler.should_stop:
            return handler.exit_code
        placed = plan(data.symbols, window=cfg.features.window, horizon=cfg.features.horizon,
                      folds=settings.folds, test_bars=settings.test_bars, test_period=settings.test_period,
                      kind=settings.window_kind, train_bars=settings.train_bars,
                      train_period=settings.train_period, calendar=settings.calendar)
        folds = placed.folds
        if placed.warning:
            print(f"warning: {placed.warning}", file=stream, flush=True)
        record = wf.experiment_record(cfg, settings, folds, data.fingerprint)
        _print_folds(data.symbols, cfg, folds, placed.reason, stream)
        del data  # the runs read the cache themselves
        wf.claim_experiment(out, record, new, stream)
        specs = wf.run_specs(out, folds, settings.seeds)
        todo, number, done = [], {}, {}
        for i, spec in enumerate(specs, 1):
            number[spec.name] = i
            state = wf.run_state(spec)
            foreign = wf.foreign_run(spec, cfg, state)
            if foreign is not None:
                raise UserError(f"{spec.root}: this run was trained with other settings than this "
                                f"experiment gives it ({foreign}); it belongs to another experiment. Use "
                                f"another --out, or --new to move the folder's experiment aside")
            for bad in state.unusable:
                print(f"warning: {spec.name}: {bad} (damaged, not used)", file=stream, flush=True)
            if state.status == "done":
                done[spec.name] = state
                print(f"[{i}/{len(specs)}] {spec.name}: done, not retrained", file=stream, flush=True)
            else:
                todo.append((spec, state))
        before = {spec.name: state for spec, state in todo}

        def starting(spec: wf.RunSpec) -> None:
            state = before[spec.name]
            print(f"[{number[spec.name]}/{len(specs)}] {spec.name}: "
                  f"{'continuing, ' + state.detail if state.status == 'stopped' else 'starting'} "
                  f"({spec.root})", file=stream, flush=True)

        if todo and jobs > 1:
            print(f"Running {len(todo)} run(s), {jobs} at a time, {cfg.train.threads} thread(s) each",
                  file=stream, flush=True)
        def checked(spec: wf.RunSpec) -> None:
            done[spec.name] = wf.run_state(spec)

        ended = wf.run_all([s for s, _ in todo], cfg, handler, extra, jobs, stream, starting,
                           settings.nproc_per_node, on_done=checked)
        failed = [(s, c) for s, c in ended if c != 0]
        if failed and not handler.shutdown_requested:
            spec, code = failed[0]
            where = f"its console: {spec.root / 'console.log'}" if jobs > 1 else "its output is above"
            raise RunFailed(f"run {spec.name} failed (exit code {code}; {where}; its files in {spec.root}); "
                            f"the same command continues the experiment once that is fixed",
                            code if code == 2 else 1)
        if handler.shutdown_requested:
            print(f"Experiment stopped after {wf.elapsed(started)}: the run(s) in progress saved "
                  f"their checkpoints; the same command continues it (done runs are not retrained)",
                  file=stream, flush=True)
            return handler.exit_code
        # A run done at the start is not read again, one that ended was read as the next one started.
        states = [(s, done[s.name] if s.name in done else wf.run_state(s)) for s in specs]
        missing = [s.name for s, st in states if st.status != "done"]
        if missing:
            raise UserError(f"runs {', '.join(missing)} have no report after training; run the command again")
        wf.write_report(out, states, settings.seeds, cfg.features.horizon, cfg.train.cost_bps, record, stream,
                        plots="--no-plots" not in extra, caveats=[placed.warning] if placed.warning else [])
        late = " (a stop arrived while the report was written: every file is complete)" \
            if handler.shutdown_requested else ""
        print(f"Experiment complete in {wf.elapsed(started)}{late}", file=stream, flush=True)
    return 0


def _print_folds(symbols: list, cfg: Config, folds: list[Fold], reason: str, stream: TextIO) -> None:
    from ..data.windows import choose_splits, split_summary

    rows = []
    for f in folds:
        fc = cfg.replace(**f.cuts()).features
        summary = split_summary(symbols, choose_splits(symbols, fc).splits)
        cells = [str(f.index)]
        for k in ("train", "val", "test"):
            s = summary[k]
            cells.append(f"{s['from']} .. {s['to']} ({s['windows']:,})" if s["windows"] else "-")
        rows.append(cells)
    print(f"Walk-forward: {len(folds)} fold(s), windows ending in each split (the last "
          f"{cfg.features.horizon} before each cut are purged; {reason}):", file=stream, flush=True)
    print_table(["fold", "train", "validation", "test"], rows, stream=stream)


def status(out: Path) -> int:
    """Each run's state, from the files (nothing is written, no lock is taken)."""
    import json

    from ..integrity import IntegrityError, check_json

    path = out / wf.EXPERIMENT_FILE
    try:
        record = check_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{out}: no experiment here ({wf.EXPERIMENT_FILE} is missing)") from None
    except (OSError, ValueError, IntegrityError) as e:
        raise UserError(f"{path}: not a readable experiment record ({e})") from None
    folds = [Fold(f["index"], f["train_start"], f["test_start"], f["test_end"]) for f in record["folds"]]
    specs = wf.run_specs(out, folds, record["settings"]["seeds"])
    rows = []
    for spec in specs:
        st = wf.run_state(spec)
        rows.append([spec.name, st.status, st.detail + (f"; {len(st.unusable)} damaged checkpoint(s): "
                                                        f"{st.unusable[0]}" if st.unusable else "")])
    from ..folder_lock import folder_holder

    live = folder_holder(out)
    if live:
        for row, spec in zip(rows, specs, strict=True):
            holder = folder_holder(spec.models)
            if holder and row[1] != "done":
                row[1], row[2] = "running", f"{row[2]} ({holder})"
    print_table(["run", "state", "where"], rows)
    done = sum(1 for r in rows if r[1] == "done")
    if live:
        print(f"The experiment is running: {live}")
    print(f"{done} of {len(rows)} run(s) done" + ("; summary: " + str(out / wf.SUMMARY_FILE)
                                                  if (out / wf.SUMMARY_FILE).exists() else ""))
    return 0
