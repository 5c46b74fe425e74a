"""A walk-forward experiment over seeds: one ordinary training run per (fold, seed), then the
out-of-sample report pooled over the folds, per seed and as mean +- std over seeds.

    DIR/experiment.json            what the experiment is (settings, base configuration, data, folds)
    DIR/runs/fold<k>-seed<s>/      one ordinary run: run.toml, models/, runs/<time>/
    DIR/summary.json               per run, per seed pooled over folds, over seeds (when all are done)
    DIR/oos_predictions.csv        every out-of-sample window once per seed, every predictor
    DIR/oos_predictions.parquet    the same table, typed (times as UTC timestamps)
    DIR/*.png                      IC per fold, out-of-sample strategies, headline over seeds

Each run is the train command as a child process (``--config run.toml --resume auto
--save-predictions``): everything that makes one run safe holds unchanged, and a run that was
stopped continues bit-exactly from its checkpoint when the experiment is started again. A run
counts as done only when its ``evaluation.json`` belongs to its newest checkpoint and its test
predictions are there; done runs are never retrained. A stop (Ctrl-C, SIGTERM) is passed to the
run in progress, which saves its checkpoint; the experiment then exits with the signal's code.

The experiment holds ``DIR`` (:func:`..folder_lock.hold_folder`) while it works, so a second
experiment in the same folder is refused; each run holds its own models folder as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..config import Config, to_toml
from ..errors import StorageError, UserError
from ..integrity import IntegrityError, check_json, json_safe, seal_json
from ..shutdown import SignalHandler
from .folds import Fold, Period
from .plots import PLOTS as PLOT_NAMES

EXPERIMENT_FILE = "experiment.json"
SUMMARY_FILE = "summary.json"
OOS_FILE = "oos_predictions.csv"
OOS_PARQUET = "oos_predictions.parquet"
RUNS = "runs"
PREVIOUS = "previous_experiments"
PREDICTIONS = "predictions.csv"  # written by each run's --save-predictions, in its run folder
RUN_CONFIG = "run.toml"


@dataclass(frozen=True)
class Settings:
    """The experiment's own settings (the runs' settings are the base configuration's)."""

    folds: int
    seeds: tuple[int, ...]
    window_kind: str = "expanding"
    test_bars: int | None = None
    test_period: Period | None = None
    train_bars: int | None = None
    train_period: Period | None = None
    calendar: str = "auto"    # --fold-calendar
    nproc_per_node: int = 0   # > 0: each run under torchrun with this many ranks, one run at a time

    def record(self) -> dict[str, Any]:
        """JSON-able, as stored in experiment.json."""
        return {"folds": self.folds, "seeds": list(self.seeds), "window_kind": self.window_kind,
                "test_bars": self.test_bars,
                "test_period": str(self.test_period) if self.test_period else None,
                "train_bars": self.train_bars,
                "train_period": str(self.train_period) if self.train_period else None,
                "fold_calendar": self.calendar,
                **({"nproc_per_node": self.nproc_per_node} if self.nproc_per_node else {})}


class RunFolders:
    """Where an experiment's ordinary run keeps its files, below its ``root``: what
    :func:`run_state` and :func:`start_run` need of a walk-forward run or a sweep's trial."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


@dataclass(frozen=True)
class RunSpec(RunFolders):
    """One (fold, seed) run and where it lives."""

    fold: Fold
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"fold{self.fold.index}-seed{self.seed}"

    def config(self, base: Config) -> Config:
        """The base configuration made this fold and seed, writing into this run's folders."""
        return base.replace(seed=self.seed, models_dir=str(self.models.absolute()),
                            runs_dir=str(self.runs.absolute()), **self.fold.cuts())


def run_specs(out: Path, folds: Sequence[Fold], seeds: Sequence[int]) -> list[RunSpec]:
    """Every run, fold by fold (the oldest first), each fold's seeds in the order given."""
    return [RunSpec(f, s, out / RUNS / f"fold{f.index}-seed{s}") for f in folds for s in seeds]


@dataclass(frozen=True)
class RunState:
    status: str            # "done", "stopped", "not started"
    detail: str            # for the status table
    report: dict[str, Any] | None = None   # evaluation.json of a done run
    predictions: Path | None = None        # its test predictions
    config: dict[str, Any] | None = None   # the settings its newest checkpoint was trained with
    unusable: tuple[str, ...] = ()         # damaged checkpoint files of the run, not used


def run_state(spec: RunFolders) -> RunState:
    """Where one run stands, from its files (nothing is written)."""
    from ..run import EVALUATION_FILE, evaluation_belongs
    from ..training import checkpoint as ckpt

    if not spec.models.is_dir():
        return RunState("not started", "-")
    info, corrupt = ckpt.select_for_resume(spec.models)
    unusable = tuple(f"{c.path}: {c.error}" for c in corrupt)
    if info is None:
        return RunState("not started", "no checkpoint yet", unusable=unusable)
    state = info.state or {}
    where = f"epoch {state.get('epoch')}, global step {info.global_step}"
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    del info
    if evaluation_belongs(spec.models, state):
        try:
            report = check_json(json.loads((spec.models / EVALUATION_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, IntegrityError):
            report = None
        preds = spec.runs / str(report.get("run")) / PREDICTIONS if report else None
        if report is not None and preds is not None and preds.is_file():
            return RunState("done", where, report, preds, config, unusable)
        return RunState("stopped", f"trained to {where}; its test predictions are missing (a rerun "
                                   f"writes them)", config=config, unusable=unusable)
    return RunState("stopped", f"stopped at {where}", config=config, unusable=unusable)


# ----------------------------------------------------------------------------- the experiment record
# Keys that say only where files go or how fast: a run continued with other values computes the same.
NOT_COMPUTED = ("models_dir", "runs_dir", "cache_dir", "num_workers", "prep_workers", "device")


def _computed(cfg: dict[str, Any]) -> dict[str, Any]:
    return {name: {k: v for k, v in section.items() if k not in NOT_COMPUTED}
            for name, section in cfg.items() if isinstance(section, dict)}


def foreign_run(spec: RunSpec, base: Config, state: RunState) -> str | None:
    """What differs between the settings a run's checkpoint was trained with and the ones this
    experiment gives it (dotted keys), or None: a run folder left by another experiment (its
    experiment.json gone) is never adopted as this one's."""
    if state.config is None:
        return None
    diff = differences(_computed(state.config), _computed(spec.config(base).to_dict()))
    return "; ".join(diff[:4]) + (" ..." if len(diff) > 4 else "") if diff else None


def experiment_record(base: Config, settings: Settings, folds: Sequence[Fold], fingerprint: str
                      ) -> dict[str, Any]:
    """What must be the same for a second start to continue this experiment."""
    cfg = base.to_dict()
    for section in cfg.values():  # set per run, or only where files go: not what the runs compute
        # threads stays: the runs' figures depend on it (float reduction order).
        for key in ("seed", *NOT_COMPUTED):
            section.pop(key, None)
    return {"settings": settings.record(), "config": cfg, "data_fingerprint": fingerprint,
            "folds": [{"index": f.index, **f.cuts()} for f in folds]}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ, for the refusal's message."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif isinstance(a, list) and isinstance(b, list) and a != b and a and b \
                and all(isinstance(x, dict) for x in a + b):  # the folds: say which fold and key
            if len(a) != len(b):
                out.append(f"{name}: {len(a)} -> {len(b)}")
            out += [d for i, (x, y) in enumerate(zip(a, b, strict=False))
                    for d in differences(x, y, f"{name}[{i}].")]
        elif a != b:
            out.append(f"{name} {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def claim_experiment(out: Path, record: dict[str, Any], new: bool, stream: TextIO) -> None:
    """Write experiment.json, or check that the one there is this experiment; with ``new`` an
    earlier experiment is moved aside (untouched) to ``previous_experiments/<time>/`` first."""
    path = out / EXPERIMENT_FILE
    old = None
    if path.exists() or path.is_symlink():
        try:
            old = check_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, IntegrityError) as e:
            if not new:
                raise UserError(f"{path}: not a readable experiment record ({e}); pass --new to move "
                                f"this folder's experiment aside and start again") from None
            old = {"unreadable": True}
    if old is not None:
        old.pop("sha256", None)
        if isinstance(old.get("settings"), dict):  # recorded before --fold-calendar existed: its folds
            old["settings"].setdefault("fold_calendar", "auto")  # were placed as auto places them
        if old == record:
            return
        if not new:
            diff = differences(old, record)
            raise UserError(f"{out}/ holds another experiment: {'; '.join(diff[:6])}"
                            f"{' ...' if len(diff) > 6 else ''}. Use another --out, the same settings to "
                            f"continue it, or --new to move it aside")
        aside = out / PREVIOUS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside.mkdir(parents=True, exist_ok=False)
        for name in (EXPERIMENT_FILE, SUMMARY_FILE, OOS_FILE, OOS_PARQUET, *PLOT_NAMES, RUNS):
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, aside / name)
        print(f"note: moved the previous experiment to {aside} (nothing was deleted)", file=stream,
              flush=True)
    atomic_write_json(path, seal_json(json_safe(record)))


# ----------------------------------------------------------------------------- running the runs
def _die_with_parent() -> None:
    """In the child: SIGTERM when the experiment process dies (kill -9), so that the run saves its
    checkpoint and ends instead of training on unwatched; and SIGINT back to its default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


TRAIN = "import sys; from indicator_transformer.startup import train; sys.exit(train())"


def run_argv(spec: RunSpec, extra: Sequence[str], nproc_per_node: int = 0) -> list[str]:
    """The command of one run: the train command, or under torchrun (``nproc_per_node`` ranks on
    this machine, a rendezvous of its own) the same command as a module."""
    flags = ["--config", str(spec.root / RUN_CONFIG), "--resume", "auto", "--save-predictions", *extra]
    if nproc_per_node:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc_per_node}", "--monitor-interval", "0.5",
                "-m", "indicator_transformer.train_main", *flags]
    return [sys.executable, "-c", TRAIN, *flags]


def start_run(spec: RunSpec, base: Config, extra: Sequence[str], log: Path | None = None,
              nproc_per_node: int = 0) -> subprocess.Popen:
    """Start (or continue) one run as a child process in its own process group, its console on
    this one's or, with ``log``, in that file."""
    spec.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.root / RUN_CONFIG, to_toml(spec.config(base)))
    argv = run_argv(spec, extra, nproc_per_node)
    out = None
    try:
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - the child's copy keeps it; ours is closed below
        from ..shutdown import EXPERIMENT_CHILD_ENV

        env = dict(os.environ, **{EXPERIMENT_CHILD_ENV: "1"})  # its repeated death signal: one stop
        return subprocess.Popen(argv, preexec_fn=_die_with_parent, process_group=0, stdout=out,
                                stderr=out, env=env)
    except OSError as e:
        raise StorageError(f"{spec.name}: could not start its training process ({e.strerror or e})") from None
    finally:
        if out is not None:
            out.close()


def run_all(specs: Sequence[RunSpec], base: Config, handler: SignalHandler, extra: Sequence[str], jobs: int,
            stream: TextIO, on_start: Any = None, nproc_per_node: int = 0, on_done: Any = None
            ) -> list[tuple[RunSpec, int]]:
    """Run ``specs``, ``jobs`` at a time (the runs are independent), until all ended, one failed
    or a stop was requested; (spec, exit code) of each run that ended, in the order they ended. A
    stop request is passed to every run in progress, once (they are in their own process groups:
    a terminal's Ctrl-C reaches them only through here); on a failure the runs still in progress
    are stopped the same way, saving their checkpoints. ``on_done(spec)`` is called for each run
    that ended with exit code 0, after the next run was started (its checks overlap that run's
    start-up instead of adding to the experiment's time)."""
    pending = list(specs)
    finished: list[RunSpec] = []
    running: dict[int, tuple[RunSpec, subprocess.Popen]] = {}
    ended: list[tuple[RunSpec, int]] = []
    passed = False
    while pending or running:
        failed = any(code != 0 for _, code in ended)
        while pending and len(running) < jobs and not handler.shutdown_requested and not failed:
            spec = pending.pop(0)
            if on_start is not None:
                on_start(spec)
            log = spec.root / "console.log" if jobs > 1 else None
            proc = start_run(spec, base, extra, log, nproc_per_node)
            running[proc.pid] = (spec, proc)
        if on_done is not None:
            for spec in finished:
                on_done(spec)
            finished.clear()
        if not running:
            break
        if (handler.shutdown_requested or failed) and not passed:
            passed = True
            for _, proc in running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, handler.signal_received or signal.SIGINT)
        for pid, (spec, proc) in list(running.items()):
            code = proc.poll()
            if code is not None:
                del running[pid]
                ended.append((spec, code))
                if code == 0:
                    finished.append(spec)
                if jobs > 1:
                    print(f"{spec.name}: {'done' if code == 0 else f'ended with exit code {code}'} "
                          f"(its console: {spec.root / 'console.log'})", file=stream, flush=True)
        time.sleep(0.05)
    return ended


# ----------------------------------------------------------------------------- the report
@dataclass
class Pooled:
    """Every done run's test predictions, tagged with fold and seed."""

    frame: pd.DataFrame
    predictors: list[str]


def read_predictions(states: Sequence[tuple[RunSpec, RunState]]) -> Pooled:
    """The out-of-sample table: symbol, time, fold, seed, realised and one column per predictor
    (the model first), sorted by seed, time, symbol. Each run's file is checked before it is used
    (:func:`_checked_predictions`): a damaged one is a UserError naming it, never figures computed
    on part of it."""
    frames = []
    names: list[str] | None = None
    for spec, st in states:
        assert st.predictions is not None
        df = _checked_predictions(spec, st)
        cols = [c for c in df.columns if c not in ("symbol", "time", "predicted_return", "rank", "split",
                                                    "realised_return")]
        if names is not None and ["model", *cols] != names:
            raise _damaged(st.predictions, f"its predictor columns {', '.join(cols)} are not the other runs' "
                                           f"({', '.join(names[1:])})")
        names = names or ["model", *cols]
        out = pd.DataFrame({"symbol": df["symbol"].astype(str), "time": df["time"],
                            "fold": spec.fold.index, "seed": spec.seed,
                            "realised": df["realised_return"], "model": df["predicted_return"]})
        for c in cols:
            out[c] = df[c]
        frames.append(out)
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.sort_values(["seed", "time", "symbol"], kind="stable").reset_index(drop=True)
    return Pooled(frame, names or ["model"])


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}. This run's test predictions are damaged: restore the file, or remove "
                     f"the run's folder ({path.parent.parent.parent}) to train it again")


def _checked_predictions(spec: RunSpec, st: RunState) -> pd.DataFrame:
    """One done run's predictions.csv, checked: the digest its evaluation.json recorded (runs of
    an older version have none), the columns, numbers, no (symbol, time) twice, every time inside
    the fold's test period of its symbol."""
    import hashlib

    from ..cutoffs import cut_for, parse_cuts

    path = st.predictions
    assert path is not None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the run's test predictions ({e.strerror or e})") from None
    recorded = (st.report or {}).get("predictions") or {}
    if recorded.get("sha256") and hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise _damaged(path, f"its contents are not the ones the run wrote (sha256 recorded in "
                             f"{spec.models / 'evaluation.json'}; {recorded.get('rows')} rows)")
    import io

    try:
        df = pd.read_csv(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(path, f"not a readable CSV ({e})") from None
    missing = [c for c in ("symbol", "time", "realised_return", "predicted_return") if c not in df.columns]
    if missing:
        raise _damaged(path, f"the column(s) {', '.join(missing)} are missing")
    if df.empty:
        raise _damaged(path, "it has no rows")
    numeric = [c for c in df.columns if c not in ("symbol", "time", "split", "rank")]
    for c in numeric:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()]
            raise _damaged(path, f"column {c} holds {str(bad.iloc[0])!r} (row {int(bad.index[0]) + 2}), "
                                 f"expected a number")
    try:
        parsed = pd.to_datetime(df["time"], utc=True, format="ISO8601")
        times = parsed.dt.as_unit("ns").astype("int64").to_numpy()
    except (ValueError, TypeError) as e:
        raise _damaged(path, f"column time holds a value that is not a time ({e})") from None
    twice = df.duplicated(["symbol", "time"])
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise _damaged(path, f"row {row + 2} repeats symbol {df['symbol'].iloc[row]} at "
                             f"{df['time'].iloc[row]}")
    cuts = spec.fold.cuts()
    start = parse_cuts(cuts["test_start"], "test_start")
    end = parse_cuts(cuts["test_end"], "test_end") if cuts["test_end"] else None
    symbols = df["symbol"].astype(str).to_numpy()
    for sym in np.unique(symbols):
        t = times[symbols == sym]
        lo = cut_for(start, sym, "test_start")
        hi = cut_for(end, sym, "test_end") if end is not None else None
        if t.min() < lo or (hi is not None and t.max() >= hi):
            raise _damaged(path, f"symbol {sym} has times outside fold {spec.fold.index}'s test period "
                                 f"({cuts['test_start']} .. {cuts['test_end'] or 'the end'})")
    if recorded.get("rows") is not None and len(df) != recorded["rows"]:
        raise _damaged(path, f"it has {len(df):,} rows, the run wrote {recorded['rows']:,}")
    return df


def pooled_predictions(pooled: Pooled, seed: int, horizon: int, cost_bps: float) -> Any:
    """One seed's out-of-sample windows over every fold as a single run's TestPredictions: each
    sample's MSE constant is its own fold's training mean."""
    from .. import metrics
    from ..report import TestPredictions

    df = pooled.frame[pooled.frame["seed"] == seed]
    times = pd.to_datetime(df["time"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    per_year = [metrics.periods_per_year(np.sort(times[df["symbol"].to_numpy() == s]))
                for s in np.unique(df["symbol"].to_numpy())]
    train_mean = df["train_mean"].to_numpy(np.float64) if "train_mean" in df else np.zeros(len(df))
    return TestPredictions(df["symbol"].to_numpy(), times, df["realised"].to_numpy(np.float64),
                           {p: df[p].to_numpy(np.float64) for p in pooled.predictors}, train_mean,
                           horizon, cost_bps, float(np.nanmedian(per_year)) if per_year else math.nan)


def pooled_report(pooled: Pooled, seed: int, horizon: int, cost_bps: float) -> dict[str, Any]:
    """The single-run report (report.build_report) of one seed's out-of-sample windows over every
    fold."""
    from ..report import build_report

    tp = pooled_predictions(pooled, seed, horizon, cost_bps)
    return build_report(tp, None, scored=f"the out-of-sample windows of every fold (seed {seed})")


def over_seeds(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per predictor: the headline metric (and MSE/mean) as mean, std and per seed; how many seeds
    the model leads each strong baseline in, and in how many by more than its standard error."""
    seeds = sorted(reports)
    first = reports[seeds[0]]
    metric = first["headline"]["metric"]
    out: dict[str, Any] = {"headline": first["headline"]["label"], "metric": metric, "seeds": seeds,
                           "predictors": {}}
    for name in first["predictors"]:
        values = [reports[s]["predictors"][name]["headline"]["ic"] for s in seeds]
        mse = [reports[s]["predictors"][name]["headline"]["mse_ratio"] for s in seeds]
        out["predictors"][name] = {metric: _spread(values), "mse_ratio": _spread(mse)}
    wins: dict[str, Any] = {}
    for name in first.get("margins", {}):
        leads = [reports[s]["margins"][name]["ic_lead"] for s in seeds]
        clear = [bool(reports[s]["margins"][name]["clear"]) for s in seeds]
        wins[name] = {"ahead_in": sum(1 for v in leads if v > 0), "clearly_ahead_in": sum(clear),
                      "of": len(seeds), "lead": _spread(leads)}
    out["model_against"] = wins
    return out


def _spread(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if len(ok) else math.nan,
            "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
            "per_seed": [float(x) for x in v]}


def verdict(agg: dict[str, Any]) -> str:
    """One paragraph a quant can act on, honest about seed noise: a lead counts only when it is
    larger than its standard error in every seed."""
    head = agg["headline"]
    metric = agg["metric"]
    m = agg["predictors"]["model"][metric]
    parts = [f"Out of sample over every fold, the model's {head} is {_pm(m)} (mean +- std over "
             f"{len(agg['seeds'])} seed(s))."]
    for name, w in agg["model_against"].items():
        other = agg["predictors"][name][metric]
        if w["clearly_ahead_in"] == w["of"]:
            word = "the model beats it in every seed"
        elif w["ahead_in"] == 0:
            word = "the model is behind it in every seed"
        else:
            word = "not distinguishable"
        parts.append(f"Against {name} ({_pm(other)}): {word} (ahead in {w['ahead_in']} of {w['of']} seeds, "
                     f"by more than the standard error in {w['clearly_ahead_in']}).")
    return " ".join(parts)


def _pm(s: dict[str, Any]) -> str:
    mean, std = s["mean"], s["std"]
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.4f}" + (f" +- {std:.4f}" if math.isfinite(std) else "")


def write_report(out: Path, specs_states: Sequence[tuple[RunSpec, RunState]], seeds: Sequence[int],
                 horizon: int, cost_bps: float, record: dict[str, Any], stream: TextIO,
                 plots: bool = True, caveats: Sequence[str] = ()) -> dict[str, Any]:
    """summary.json, oos_predictions.csv/.parquet and (``plots``) the PNGs of a finished
    experiment; the table on ``stream``. summary.json last: its presence says the rest is there."""
    pooled = read_predictions(specs_states)
    reports = {s: pooled_report(pooled, s, horizon, cost_bps) for s in seeds}
    agg = over_seeds(reports)
    per_run = []
    for spec, st in specs_states:
        rep = (st.report or {}).get("report", {})
        per_run.append({"run": spec.name, "fold": spec.fold.index, "seed": spec.seed, **spec.fold.cuts(),
                        "headline": {n: p["headline"] for n, p in rep.get("predictors", {}).items()},
                        "pooled": {n: p["pooled"] for n, p in rep.get("predictors", {}).items()}})
    by_seed = {str(s): {"headline": r["headline"], "samples": r["samples"], "dates": r["dates"],
                        "predictors": {n: {k: p[k] for k in ("headline", "pooled", "cross_section")}
                                       for n, p in r["predictors"].items()},
                        "margins": r["margins"], "verdict": r["verdict"]}
               for s, r in reports.items()}
    folds = per_fold(per_run)
    caveats = list(caveats)
    if agg["metric"] != "cs_ic" and len(folds) > 1:  # found by the second outside attack
        caveats.append(f"the headline is the {agg['headline']} (no date has 3 or more symbols): pooled over "
                       f"folds it also counts how each predictor's level moves from fold to fold, so a "
                       f"predictor constant within every fold (symbol_mean) gets a figure it has in no "
                       f"fold; per_fold gives each fold's own")
    summary = {"experiment": record, "runs": per_run, "per_fold": folds, "pooled_by_seed": by_seed,
               "over_seeds": agg, "verdict": verdict(agg), "caveats": caveats}
    frame = pooled.frame.copy()
    atomic_write_text(out / OOS_FILE, frame.to_csv(index=False, float_format="%.8g"))
    atomic_write_bytes(out / OOS_PARQUET, _parquet(frame))
    if plots:
        from ..report import report_series
        from .plots import write_experiment_plots

        series = {s: report_series(pooled_predictions(pooled, s, horizon, cost_bps)) for s in seeds}
        write_experiment_plots(out, summary, series)
    atomic_write_json(out / SUMMARY_FILE, seal_json(json_safe(summary)))
    _print_folds_table(folds, agg, stream)
    _print_table(agg, stream)
    print(f"Verdict: {summary['verdict']}", file=stream, flush=True)
    for c in caveats:
        print(f"Caveat: {c}", file=stream, flush=True)
    print(f"Report: {out / SUMMARY_FILE}; out-of-sample predictions: {out / OOS_FILE} (and "
          f"{OOS_PARQUET})" + ("; plots: " + ", ".join(PLOT_NAMES) if plots else ""), file=stream, flush=True)
    return summary


def per_fold(per_run: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fold (oldest first): its dates, and per predictor its runs' headline IC and MSE/mean
    as mean, std and per seed (each run scored on that fold's test period alone)."""
    out = []
    for fold in sorted({r["fold"] for r in per_run}):
        runs = sorted((r for r in per_run if r["fold"] == fold), key=lambda r: r["seed"])
        names = list(runs[0]["headline"])
        out.append({"fold": fold, "train_start": runs[0]["train_start"], "test_start": runs[0]["test_start"],
                    "test_end": runs[0]["test_end"], "seeds": [r["seed"] for r in runs],
                    "predictors": {n: {"ic": _spread([r["headline"][n]["ic"] for r in runs]),
                                       "mse_ratio": _spread([r["headline"][n]["mse_ratio"] for r in runs])}
                                   for n in names}})
    return out


def _print_folds_table(folds: Sequence[dict[str, Any]], agg: dict[str, Any], stream: TextIO) -> None:
    from ..report import STRONG_BASELINES

    names = [n for n in agg["predictors"] if n == "model" or n in STRONG_BASELINES]
    lines = [f"Per fold: {agg['headline']}, mean +- std over seeds (each fold's test period alone)",
             f"  {'fold':<5} {'test from':<11}" + "".join(f" {n:>18}" for n in names)]
    for f in folds:
        start = str(f["test_start"])
        start = start[:10] if "=" not in start else "per symbol"
        lines.append(f"  {f['fold']:<5} {start:<11}" + "".join(
            f" {_pm(f['predictors'][n]['ic']) if n in f['predictors'] else '-':>18}" for n in names))
    print("\n".join(lines), file=stream, flush=True)


def _parquet(frame: pd.DataFrame) -> bytes:
    """The out-of-sample table as Parquet bytes: times as UTC timestamps, the rest as in the CSV."""
    import io

    typed = frame.copy()
    typed["time"] = pd.to_datetime(typed["time"], utc=True)
    for c in typed.columns:  # every predictor and the realised return as float64 (zero reads as int)
        if c not in ("symbol", "time", "fold", "seed"):
            typed[c] = typed[c].astype("float64")
    buf = io.BytesIO()
    typed.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _print_table(agg: dict[str, Any], stream: TextIO) -> None:
    metric = agg["metric"]
    lines = [f"Pooled out of sample, {len(agg['seeds'])} seed(s): {agg['headline']} and MSE/mean, mean +- "
             f"std over seeds", f"  {'predictor':<12} {agg['headline']:>20} {'MSE/mean':>20}"]
    for name, p in agg["predictors"].items():
        lines.append(f"  {name:<12} {_pm(p[metric]):>20} {_pm(p['mse_ratio']):>20}")
    print("\n".join(lines), file=stream, flush=True)


def elapsed(start: float) -> str:
    s = int(time.perf_counter() - start)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"
