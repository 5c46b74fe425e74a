"""The run report for any checkpoint, on its own data or on new files.

    indicator-transformer evaluate --checkpoint models/best.pth                    # its own data
    indicator-transformer evaluate --checkpoint models/best.pth --data-dir ~/new   # new files

The data is prepared through the cache with the checkpoint's feature settings and split with its
split policy. The model sees its inputs, and its outputs become returns, through the checkpoint's
stored normalisation (a symbol it has no statistics for uses the pooled ones, and a note says so).
The baselines are fitted on the train/validation splits of the data being evaluated and every
predictor is scored on exactly the same test samples, as at the end of training, so on the
checkpoint's own data the figures are those of its ``evaluation.json``.

Nothing is written until the report is complete: then ``<out>/`` receives the plots, a sealed
``summary.json`` and ``evaluate.log`` (every console line of the command). By default ``<out>`` is
``runs/<UTC time>-evaluate/`` beside the checkpoint's models folder; the models folder itself is
never written to, and ``evaluation.json`` (which belongs to training) is never touched.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from . import faults, plots
from .atomic import atomic_write_json, is_temp_file
from .baseline_store import BASELINES_FILE, BaselinesUnusable, load_baselines
from .baselines import FitStopped, baseline_predictions, unfitted_predictions
from .config import Config
from .data import frequency
from .data.cache import FeatureCache
from .data.periods import label_digest
from .data.prepare import PreparedData
from .data.windows import (
    Normalisation,
    SplitChoice,
    SplitIndex,
    WindowDataset,
    choose_splits,
    fit_normalisation,
    require_windows,
    split_summary,
)
from .errors import CheckpointError, StorageError, UserError
from .integrity import IntegrityError, check_json, json_safe, seal_json
from .plots import write_plots
from .predict import load_model
from .report import TestPredictions, build_report, report_series
from .report_table import format_table
from .run import prepare_data, print_layout, test_predictions
from .runlog import SUMMARY_NAME, attach_console_log, new_run_name, runs_dir_for
from .shutdown import SignalHandler
from .training import checkpoint as ckpt
from .training.trainer import EVAL_BATCH

LOG_NAME = "evaluate.log"
COMMAND = "evaluate"  # summary.json's "command": marks a folder an evaluation may write into again


@dataclass(frozen=True)
class Scored:
    """Everything the report is built from."""

    tp: TestPredictions
    baseline_settings: dict[str, Any]
    pooled_symbols: list[str]   # symbols the checkpoint has no statistics of its own for
    baseline_norm: str          # where the baselines' normalisation came from


# ----------------------------------------------------------------------------- the output folder
def default_out(checkpoint: Path, started: datetime) -> Path:
    """``runs/<UTC time>-evaluate`` beside the checkpoint's models folder (not yet created).

    The folder is derived from where the checkpoint file is, never from paths recorded inside it
    (a checkpoint must not direct writes)."""
    runs = runs_dir_for(None, checkpoint.absolute().parent)
    return runs / f"{new_run_name(runs, started)}-{COMMAND}"


def check_out(out: Path, checkpoint: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot hold the report or must not: a file,
    the checkpoint's own models folder, a folder holding something other than an earlier
    evaluation, or a place that cannot be written."""
    models = checkpoint.absolute().parent
    where = f"{flag} {out}" if flag else f"the report folder {out}"
    if not str(out).strip():
        raise UserError(f"{flag}: expected a folder name, got an empty string")
    if out.exists() and not out.is_dir():
        raise UserError(f"{where}: is a file; expected a folder for the report")
    # Inside it too, when it is a models folder (it holds checkpoints): evaluate never writes there.
    # A checkpoint copied into an ordinary folder does not make every folder below it one.
    if _same(out, models) or (_inside(out, models) and _holds_checkpoints(models)):
        raise UserError(f"{where}: is the checkpoint's models folder or inside it, which evaluate never "
                        f"writes to; choose another folder")
    try:
        foreign = out.is_dir() and not _holds_evaluation(out) and not _only_report_files(out)
    except OSError as e:  # an unreadable folder
        raise UserError(f"{where}: cannot be read ({e.strerror or e})") from None
    if foreign:  # a training run's folder, say: its summary.json must not be replaced
        raise UserError(f"{where}: exists and holds files that are not an earlier evaluation report; "
                        f"choose a new or empty folder")
    from .cli.common import check_writable_folder

    try:
        check_writable_folder(out)
    except UserError as e:
        hint = "; pass --out DIR to write the report elsewhere" if "writable" in str(e) and not flag else ""
        raise UserError(f"{where}: {e}{hint}") from None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _holds_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` holds files named as training writes them (best.pth, checkpoint_epoch_*)."""
    try:
        return any(p.name == ckpt.BEST_NAME or ckpt.parse_name(p.name) is not None for p in folder.iterdir())
    except OSError:
        return True  # cannot tell: do not write there


def _inside(a: Path, folder: Path) -> bool:
    try:
        return a.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


# What an evaluation writes: a folder holding only these (and temporary files of an interrupted
# write) is an earlier evaluation that died before its summary, and may be written again.
REPORT_FILES = {SUMMARY_NAME, LOG_NAME, plots.LOSS_CURVES, plots.PREDICTED_VS_REALISED, plots.STRATEGIES,
                plots.IC_OVER_TIME}


def _only_report_files(folder: Path) -> bool:
    return all(p.is_file() and (p.name in REPORT_FILES or is_temp_file(p)) for p in folder.iterdir())


def _holds_evaluation(folder: Path) -> bool:
    """Whether ``folder`` is an earlier evaluation's report (its summary.json says so)."""
    try:
        doc = check_json(json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, IntegrityError):
        return False
    return doc.get("command") == COMMAND


# ----------------------------------------------------------------------------- data and model
def data_relation(state: dict[str, Any], data: PreparedData) -> tuple[bool, str]:
    """(own data?, one line saying which data this is): the checkpoint's own when the fingerprint
    (every symbol's cache key: input bytes and feature settings) is equal, otherwise what differs."""
    saved = state["data_fingerprint"]
    if saved.get("fingerprint") == data.fingerprint:
        return True, f"the checkpoint's own data (fingerprint {data.fingerprint[:12]})"
    old = dict(saved.get("keys", {}))
    new = {s.symbol: s.key for s in data.symbols}
    shared = set(new) & set(old)
    same = sum(old[s] == new[s] for s in shared)
    counts = ((len(set(new) - set(old)), "new"), (len(shared) - same, "changed"), (same, "unchanged"),
              (len(set(old) - set(new)), "of the checkpoint's missing"))
    parts = [f"{n} symbol(s) {label}" for n, label in counts if n]
    return False, (f"other data than the checkpoint was trained on (fingerprint {data.fingerprint[:12]}, "
                   f"checkpoint's {str(saved.get('fingerprint'))[:12]}): {', '.join(parts)}")


def pooled_symbols(norm: Normalisation, data: PreparedData) -> list[str]:
    """Symbols of ``data`` that the checkpoint's per-symbol normalisation has no row for (they use
    the pooled statistics); empty when the checkpoint normalises every symbol with pooled ones."""
    if not norm.per_symbol:
        return []
    known = set(norm.symbols)
    return [s.symbol for s in data.symbols if s.symbol not in known]


@torch.no_grad()
def model_predictions(model: torch.nn.Module, ds: WindowDataset, should_stop: Any
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Standardised predictions and targets of every sample of ``ds``, in order, in batches of the
    training's evaluation size (the same batches give the same floats); None when stopped."""
    preds, targets = [], []
    for n, a in enumerate(range(0, len(ds), EVAL_BATCH), start=1):
        x, y = ds.__getitems__(list(range(a, min(a + EVAL_BATCH, len(ds)))))
        preds.append(model(x).float().numpy())
        targets.append(y.numpy())
        faults.point("test_batch", n)
        if should_stop():
            return None
    if not preds:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(preds), np.concatenate(targets)


def every_window(data: PreparedData, window: int, horizon: int) -> SplitIndex:
    """Every window of every symbol whose forward return is known: end bars window - 1 up to the
    last bar with h bars after it (``evaluate --all-windows``)."""
    lengths = np.array([len(s.label) for s in data.symbols], np.int64)
    starts = np.full(len(lengths), window - 1, np.int64)
    return SplitIndex(starts, np.maximum(lengths - horizon, starts))


def _model_on(state: dict[str, Any], cfg: Config, data: PreparedData, index: SplitIndex,
              norm: Normalisation, handler: SignalHandler, empty: str
              ) -> tuple[WindowDataset, np.ndarray, np.ndarray] | None:
    """The windows of ``index`` (normalised with ``norm``) and the checkpoint's model's
    standardised predictions and targets on them; None when stopped. No window is a UserError
    saying ``empty``."""
    test = WindowDataset(data.symbols, index, cfg.features.window, norm)
    if len(test) == 0:
        raise UserError(empty)
    model = load_model(state, cfg, len(data.feature_names))
    out = model_predictions(model, test, lambda: handler.should_stop)
    return None if out is None else (test, *out)


def score_all_windows(state: dict[str, Any], cfg: Config, data: PreparedData, checkpoint: Path,
                      handler: SignalHandler, stream: TextIO) -> Scored | None:
    """The model and the baselines *as fitted by the checkpoint's run* (its baselines.json) on
    every window of ``data``; None when stopped. Without usable saved baselines only the
    predictors that need no fit are scored, and a warning says why."""
    f = cfg.features
    norm = Normalisation.from_dict(state["normalisation"])
    got = _model_on(state, cfg, data, every_window(data, f.window, f.horizon), norm, handler,
                    f"no windows: every symbol has fewer than {f.window + f.horizon} bars after the "
                    f"indicator warm-up (window {f.window}, horizon {f.horizon})")
    if got is None:
        return None
    test, pred_std, _ = got
    try:
        fitted = load_baselines(checkpoint.parent, state)
    except BaselinesUnusable as e:
        print(f"warning: only the model and the predictors without a fit are scored: {e}", file=stream,
              flush=True)
        preds = unfitted_predictions(test, norm.label_mean, f.horizon)
        settings: dict[str, Any] = {"source": str(e)}
        how = "none saved: only zero, train_mean and momentum"
    else:
        try:
            preds = fitted.predict(test, lambda: handler.should_stop, threads=torch.get_num_threads())
        except FitStopped:
            return None
        settings = dict(fitted.details)
        how = f"as fitted on the checkpoint's training data ({checkpoint.parent / BASELINES_FILE})"
    tp = test_predictions(test, data, pred_std, preds, norm.label_mean, f.horizon,
                          cfg.train.cost_bps)
    return Scored(tp, settings, pooled_symbols(norm, data), how)


def scope_warnings(state: dict[str, Any], data: PreparedData, all_windows: bool) -> list[str]:
    """What makes an evaluation's figures mean something else than the run's own: bar sizes the
    model never trained on, and (with --all-windows) windows it did train on."""
    out = []
    trained = (state.get("data_profile") or {}).get("bar_frequency")
    if isinstance(trained, dict) and trained:
        here = frequency.frequencies(data.symbols)
        new = {b: syms for b, syms in here.items() if b not in trained}
        if new:
            out.append(f"the model was trained on {', '.join(trained)} bars; this data has "
                       f"{frequency.describe(new)}: a {data_horizon(state)}-bar horizon spans another "
                       f"time there, and patterns learnt on one bar size need not carry over")
    if all_windows:
        out += _in_sample_warnings(state, data)
    return out


def _in_sample_warnings(state: dict[str, Any], data: PreparedData) -> list[str]:
    """With --all-windows: the symbols whose bars overlap what the model trained or was selected
    on. A symbol recorded in the checkpoint's split dates overlaps when it has bars up to the end
    of its training or validation period (an edited or extended copy of a training file does,
    though its cache key differs); a symbol whose forward returns are a training symbol's (a copy
    under another name: the cache key holds the name) overlaps; so does a file with the cache key
    of a training file (a checkpoint written before split dates and digests were kept)."""
    keys = set(((state.get("data_fingerprint") or {}).get("keys") or {}).values())
    profile = state.get("data_profile") or {}
    dates = profile.get("split_dates") or {}
    twins = {d: sym for sym, d in (profile.get("label_digests") or {}).items()}
    seen = []
    for s in data.symbols:
        ends = [p["to"] for k, p in (dates.get(s.symbol) or {}).items()
                if k in ("train", "val") and isinstance(p, dict)]
        last = max((np.datetime64(e, "ns").astype(np.int64) for e in ends), default=None)
        n = int(np.count_nonzero(s.time <= last)) if last is not None else 0
        if n:
            seen.append(f"{s.symbol} ({n:,} bars to {max(ends)[:10]})")
        elif (twin := twins.get(label_digest(s.label))) is not None:  # the cache key holds the name
            seen.append(f"{s.symbol} (the same bars as training symbol {twin})")
        elif s.key in keys:
            seen.append(f"{s.symbol} (a training file's exact data)")
    if not seen:
        return []
    return [f"{len(seen)} symbol(s) overlap the checkpoint's training and validation periods: "
            f"{', '.join(seen[:6])}{' ...' if len(seen) > 6 else ''}; --all-windows scores those "
            f"windows too, so their figures are in-sample"]


def data_horizon(state: dict[str, Any]) -> Any:
    return ((state.get("config") or {}).get("features") or {}).get("horizon", "?")


def score(state: dict[str, Any], cfg: Config, data: PreparedData, choice: SplitChoice, own: bool,
          handler: SignalHandler) -> Scored | None:
    """The model's and every baseline's predictions on the same test samples, in return space;
    None when a stop was requested.

    The model's windows and its predictions' scale use the checkpoint's normalisation. The
    baselines are fitted on this data: with the checkpoint's normalisation on its own data (exactly
    what training's report used), otherwise with one fitted on this data's training split, so that
    ``train_mean`` and the MSE ratio's constant are this data's training mean."""
    f = cfg.features
    splits = choice.splits
    try:  # the baselines, train_mean and MSE/mean's constant all need this data's training split
        require_windows(splits, f)
    except UserError as e:
        raise UserError(f"{e} (the splits of the checkpoint's settings, applied to this data). The "
                        f"baselines are fitted on this data's training split, so the report needs one; "
                        f"--all-windows scores every window against the baselines the run fitted"
                        ) from None
    norm = Normalisation.from_dict(state["normalisation"])
    got = _model_on(state, cfg, data, splits["test"], norm, handler,
                    f"no test windows: the data has too few bars for window {f.window} and horizon "
                    f"{f.horizon} after the train/validation splits")
    if got is None:
        return None
    test, pred_std, _ = got
    if own:
        base_norm, how = norm, "the checkpoint's normalisation (its own data)"
    else:
        base_norm = fit_normalisation(data.symbols, splits["train"], f.window,
                                      per_symbol=f.normalise == "per-symbol")
        how = f"fitted on this data's training split ({f.normalise})"
    datasets = {k: WindowDataset(data.symbols, splits[k], f.window, base_norm) for k in splits}
    base = baseline_predictions(datasets, base_norm.label_mean, f.horizon, lambda: handler.should_stop,
                                threads=torch.get_num_threads(), seed=cfg.train.seed)
    if base is None:
        return None
    tp = test_predictions(test, data, pred_std, base.predictions, base_norm.label_mean,
                          f.horizon, cfg.train.cost_bps)
    return Scored(tp, base.details, pooled_symbols(norm, data), how)


# ----------------------------------------------------------------------------- the whole command
@dataclass
class EvaluateOptions:
    checkpoint: Path
    out: Path | None            # None: runs/<UTC>-evaluate beside the models folder
    show_progress: bool = True
    all_windows: bool = False   # score every window, against the run's saved baselines


def describe_checkpoint(path: Path, state: dict[str, Any]) -> str:
    """``best.pth (line 1a2b3c4d, epoch 2, global step 36)``."""
    return (f"{path.name} (line {ckpt.lineage_of(state)['line'][:8]}, epoch {state['epoch']}"
            + ("" if state.get("epoch_complete") else f" step {state['step_in_epoch']}")
            + f", global step {state['global_step']})")


def evaluate(state: dict[str, Any], cfg: Config, opts: EvaluateOptions, handler: SignalHandler,
             stream: TextIO | None = None) -> int:
    """Prepare the data, score the checkpoint and every baseline on its test split, print the
    table and write the report folder. Returns the exit code (130/143 when stopped: then nothing
    but what preparation committed to the cache is written)."""
    stream = stream or sys.stderr
    started, tick = datetime.now(UTC), time.perf_counter()
    out = opts.out or default_out(opts.checkpoint, started)
    check_out(out, opts.checkpoint, "--out" if opts.out is not None else "")
    print(f"Evaluating {opts.checkpoint} ({describe_checkpoint(opts.checkpoint, state)})", file=stream,
          flush=True)
    data = prepare_data(cfg, handler, FeatureCache(cfg.data.cache_dir).open(), stream, opts.show_progress)
    print(data.summary(), file=stream, flush=True)
    if data.interrupted or handler.should_stop:
        return _stopped("preparation", stream, handler)
    if not data.symbols:
        raise UserError("no usable symbols to evaluate on")
    if data.feature_names != list(state["feature_names"]):
        raise CheckpointError(f"{opts.checkpoint}: trained on features {state['feature_names']}, the data "
                              f"gives {data.feature_names}")
    own, relation = data_relation(state, data)
    print(f"Data: {relation}", file=stream, flush=True)
    choice = choose_splits(data.symbols, cfg.features)
    if opts.all_windows:
        print(f"Scoring every window of the {len(data.symbols)} symbol(s) (--all-windows), against the "
              f"baselines fitted by the checkpoint's run", file=stream, flush=True)
    else:
        print_layout(data, choice, cfg.features.horizon, stream)
    prepared_s = time.perf_counter() - tick
    scored = (score_all_windows(state, cfg, data, opts.checkpoint, handler, stream) if opts.all_windows
              else score(state, cfg, data, choice, own, handler))
    if scored is None or handler.should_stop:
        return _stopped("scoring", stream, handler)
    if scored.pooled_symbols:
        names = scored.pooled_symbols
        print(f"note: the checkpoint has no normalisation statistics for {len(names)} symbol(s), which use "
              f"the pooled ones: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}", file=stream,
              flush=True)
    rep = build_report(scored.tp, scored.baseline_settings,
                       "every window" if opts.all_windows else "the test split")
    rep["warnings"] = scope_warnings(state, data, opts.all_windows) + rep["warnings"]
    which = "own data" if own else "other data"
    what = "Every window" if opts.all_windows else "Test split"
    # The table is the command's result: on standard output, so `> report.txt` keeps it.
    print(format_table(rep, f"{what} ({opts.checkpoint.name}, {which})"), flush=True)
    if handler.should_stop:  # once writing starts it finishes: every file is complete or absent
        print("Evaluation stopped before the report was written: the table above is not saved, no "
              "report written", file=stream, flush=True)
        return handler.exit_code
    doc = _summary(state, cfg, opts, data, choice, own, relation, scored, rep,
                   {"preparation_s": round(prepared_s, 3),
                    "scoring_s": round(time.perf_counter() - tick - prepared_s, 3)}, started)
    folder, plots = write_report(out, opts.out is None, state, scored.tp, doc)
    print(f"Report: {folder} ({SUMMARY_NAME}, {LOG_NAME}, {len(plots)} plots)", file=stream, flush=True)
    return 0


def _stopped(during: str, stream: TextIO, handler: SignalHandler) -> int:
    print(f"Evaluation stopped during {during}: no report written", file=stream, flush=True)
    return handler.exit_code


def _summary(state: dict[str, Any], cfg: Config, opts: EvaluateOptions, data: PreparedData,
             choice: SplitChoice, own: bool, relation: str, scored: Scored, rep: dict[str, Any],
             durations: dict[str, float], started: datetime) -> dict[str, Any]:
    """summary.json's content (json_safe and sealed when written)."""
    groups = frequency.frequencies(data.symbols)
    norm = state["normalisation"]
    return {
        "command": COMMAND, "status": "completed", "started": started.isoformat(timespec="seconds"),
        "checkpoint": {"path": str(opts.checkpoint.absolute()), "line": ckpt.lineage_of(state)["line"],
                       "global_step": state["global_step"], "epoch": state["epoch"],
                       "step_in_epoch": state["step_in_epoch"],
                       "epoch_complete": bool(state.get("epoch_complete")),
                       "interrupted": bool(state.get("interrupted")), "timestamp": state["timestamp"],
                       "best_val": state["best_val"]},
        "data": {"own": own, "relation": "own" if own else "other", "description": relation,
                 "fingerprint": data.fingerprint,
                 "checkpoint_fingerprint": state["data_fingerprint"].get("fingerprint"),
                 "location": cfg.data.data_file or cfg.data.data_dir or "synthetic market",
                 "symbols": len(data.symbols), "bars": data.bars, "features": list(data.feature_names),
                 "bar_frequency": groups, "mixed_frequency": len(groups) > 1},
        "scored": "every window (--all-windows)" if opts.all_windows else "the test split",
        "splits": {"policy": choice.policy, "reason": choice.reason,
                   **split_summary(data.symbols, choice.splits)},
        "warnings": rep["warnings"],
        "normalisation": {"model": "the checkpoint's, per symbol" if norm.get("symbols")
                          else "the checkpoint's, pooled",
                          "pooled_symbols": scored.pooled_symbols, "baselines": scored.baseline_norm},
        "config": cfg.to_dict(),
        "test": rep["predictors"]["model"]["pooled"],
        "verdict": rep["verdict"], "report": rep, "baseline_settings": scored.baseline_settings,
        "durations": durations,
    }


def write_report(out: Path, fresh: bool, state: dict[str, Any], tp: TestPredictions,
                 doc: dict[str, Any]) -> tuple[Path, list[Path]]:
    """The plots, summary.json (last of the report files: a folder whose summary.json is there is
    complete) and evaluate.log. Each file is written atomically; a folder this call created is
    removed again if writing fails, so a failure leaves no half report. Returns (the folder, the
    plots)."""
    if fresh:
        out = _create_unique(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
    try:
        hist = state["loss_history"]
        segments = (state.get("run") or {}).get("segments") or []
        plots, skipped = write_plots(out, report_series(tp), hist["epochs"], hist["steps"],
                                     state["steps_per_epoch"], [s[0] for s in segments[1:]])
        doc["plots"] = [p.name for p in plots]
        doc["plots_skipped"] = skipped
        for name, why in skipped.items():
            print(f"note: {name} not drawn: {why}", file=sys.stderr, flush=True)
        atomic_write_json(out / SUMMARY_NAME, seal_json(json_safe(doc)))
    except (OSError, StorageError) as e:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, StorageError):  # already names the file and the cause
            raise
        raise UserError(f"{out}: cannot write the report ({e.strerror or e})") from None
    # Every console line of this command, from its start (kept in memory until now).
    with contextlib.suppress(OSError):
        attach_console_log(out / LOG_NAME)
    return out, plots


def _create_unique(out: Path) -> Path:
    """Create ``out`` (or ``out-2``, ``out-3``... when another evaluation took the name first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    candidate, k = out, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1
            candidate = out.with_name(f"{out.name}-{k}")
