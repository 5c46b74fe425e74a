"""The pipeline both commands run: prepare -> (resume) -> train -> evaluate, under one SignalHandler.

It returns an exit code; the caller prints ``Cleanup complete`` last on a stop.

Under torchrun (:mod:`.training.distributed`) every rank runs it: rank 0 prepares the cache while
the others wait, then all read the same memory-mapped cache; all train; only rank 0 writes
(checkpoints, best.pth, the run folder, evaluation.json, plots) and runs the final test evaluation
and the baselines while the others wait. The other ranks print only errors and their shutdown
lines. A rank that loses the others (:class:`~.training.distributed.PeerLost`) writes nothing more
and exits 1 (or the code of the signal it was stopped by).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from . import faults, metrics
from .atomic import atomic_write_json, atomic_write_text
from .baseline_store import BASELINES_FILE, owner_of, save_baselines
from .baselines import Baselines, baseline_predictions
from .config import Config
from .data import frequency
from .data.cache import FeatureCache
from .data.prepare import PreparedData, prepare, resolve_sources
from .data.windows import (
    Normalisation,
    SplitChoice,
    WindowDataset,
    choose_splits,
    fit_normalisation,
    require_windows,
    split_summary,
    split_table,
)
from .errors import CheckpointError, FolderMoved, OutOfMemory, StorageError, UserError, WorkerStalled
from .folder_lock import FolderInUse, check_still_held, explain_move, hold_folder, moved_to
from .integrity import IntegrityError, check_json, json_safe, seal_json
from .model import count_parameters
from .plots import plot_losses, write_plots
from .predict import test_predictions_csv
from .report import TestPredictions, build_report, report_series
from .report_table import format_table
from .runlog import LOG_NAME, RunFolder, attach_console_log, runs_dir_for, unfinished_run
from .shutdown import SignalHandler
from .training import checkpoint as ckpt
from .training import distributed
from .training.trainer import Trainer, resolve_device

PREDICTIONS_FILE = "predictions.csv"  # --save-predictions, in the run folder
EVALUATION_FILE = "evaluation.json"  # test metrics of the finished run, in the models folder


def evaluation_belongs(models_dir: str | Path, state: dict[str, Any]) -> bool:
    """Whether ``models_dir/evaluation.json`` is an intact report of exactly this checkpoint's
    model (same line of training, same global step). A stale, foreign or damaged report is not."""
    path = Path(models_dir) / EVALUATION_FILE
    try:
        report = check_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, IntegrityError):
        return False
    # "belongs_to" names the checkpoint a report belongs to; a report written before it existed
    # kept that under "checkpoint" (which now names the checkpoint that was evaluated).
    owner = report.get("belongs_to", report.get("checkpoint"))
    return isinstance(owner, dict) and owner.get("line") == ckpt.lineage_of(state)["line"] \
        and owner.get("global_step") == state["global_step"]


@dataclass
class RunOptions:
    """Switches that are not part of the saved configuration."""

    prepare_only: bool = False
    show_progress: bool = True
    resume_state: dict[str, Any] | None = None
    resume_path: Path | None = None
    target_epochs: int | None = None
    allow_data_change: bool = False
    plots: bool = True
    save_predictions: bool = False  # --save-predictions: the test split's rows in predictions.csv
    # --resume auto that found no checkpoint (a torchrun restart, a requeued job): continue the run
    # folder the failed attempt opened (the newest one without a summary), not orphan it.
    adopt_unfinished_run: bool = False
    command: str = "train"  # how the holder of models/ is named to a second process (folder_lock.py)
    # The checkpoint (resume_path, None: a fresh start) was chosen as the newest in models/ before
    # the lock was held: once held, the choice is checked again (another run may have written
    # newer checkpoints, or finished, while this one prepared its data).
    recheck_choice: bool = False
    # A sweep's trial: Trainer.epoch_hook (sweep/hook.py), reporting each epoch to the study.
    epoch_hook: Callable[[list[dict[str, Any]], bool], bool] | None = None


def prepare_data(cfg: Config, handler: SignalHandler, cache: FeatureCache, stream: TextIO,
                 show_progress: bool) -> PreparedData:
    """Resolve the sources and prepare them through the cache."""
    sources = resolve_sources(cfg.data)
    what = (cfg.data.data_file or cfg.data.data_dir
            or f"synthetic market ({cfg.data.symbols} symbols x {cfg.data.bars} bars, seed "
               f"{cfg.data.data_seed})")
    print(f"Preparing {len(sources)} symbol(s) from {what} -> cache {cfg.data.cache_dir}",
          file=stream, flush=True)
    return prepare(sources, cfg.features, cache, handler=handler, workers=cfg.data.prep_workers,
                   skip_bad_files=cfg.data.skip_bad_files, use_adj_close=cfg.data.use_adj_close,
                   stream=stream, show_progress=show_progress)


def check_fingerprint(state: dict[str, Any], data: PreparedData, path: Path, allow: bool,
                      stream: TextIO) -> None:
    """Refuse to resume on different data unless allowed; name what changed."""
    saved = state["data_fingerprint"]
    if saved.get("fingerprint") == data.fingerprint:
        return
    old = dict(saved.get("keys", {}))
    new = {s.symbol: s.key for s in data.symbols}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(s for s in set(old) & set(new) if old[s] != new[s])
    detail = "; ".join(f"{label}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                       for label, v in (("added", added), ("removed", removed), ("changed", changed)) if v)
    msg = (f"{path}: the data or feature configuration changed since this checkpoint "
           f"({detail or 'different fingerprint'})")
    if not allow:
        raise UserError(msg + ". Resume with the same data, or pass --allow-data-change to continue "
                              "anyway (normalisation is kept from the checkpoint).")
    print(f"warning: {msg}; continuing because of --allow-data-change", file=stream, flush=True)


def print_layout(data: PreparedData, choice: SplitChoice, horizon: int, stream: TextIO) -> None:
    """Bar frequencies and the split table, with warnings for what makes a result meaningless:
    mixed frequencies, symbols without training windows, splits holding different symbols."""
    groups = frequency.frequencies(data.symbols)
    print(f"Bar frequency: {frequency.describe(groups)}", file=stream, flush=True)
    mixed = frequency.mixed_warning(groups, horizon)
    if mixed:
        print(f"warning: {mixed}", file=stream, flush=True)
    lines, warnings = split_table(data.symbols, choice.splits)
    print(f"Splits: {choice.policy} ({choice.reason})", file=stream, flush=True)
    print("\n".join(lines), file=stream, flush=True)
    for w in warnings:
        print(f"warning: {w}", file=stream, flush=True)


_job_depth = 0


def in_job(device: str, handler: SignalHandler, body: Callable[[], int]) -> int:
    """Run ``body`` inside this process's part of a torchrun job (in one process: just call it).

    Joins the process group on entry (nested calls share it) and leaves it on the way out (only
    forgets it when the command ends with ``os._exit``); a lost peer ends this rank
    with one ``error:`` line and exit code 1 (rank 0's code when rank 0 failed), or the code of the
    signal that stopped it (the launcher's teardown), without writing anything more."""
    global _job_depth
    resolve_device(device)  # a bad --device is a usage error before any work is done
    d = distributed.init(device)
    _job_depth += 1
    try:
        return body()
    except distributed.PeerLost as e:
        print(f"error: rank {d.rank} of {d.world_size}: {e}; this rank wrote nothing more (the "
              f"checkpoints already written are intact)", file=sys.stderr, flush=True)
        return handler.exit_code if handler.shutdown_requested else e.exit_code
    finally:
        _job_depth -= 1
        if _job_depth == 0:
            distributed.destroy(process_exits=_exits_hard())


def run_pipeline(cfg: Config, handler: SignalHandler, opts: RunOptions, stream: TextIO | None = None) -> int:
    """Prepare, train (or resume) and evaluate. Returns the exit code."""
    return in_job(cfg.train.device, handler, lambda: _pipeline(cfg, handler, opts, stream))


def _exits_hard() -> bool:
    """Whether this process is a command that ends with ``os._exit`` once a group ran (see
    :func:`..cli.common.run_command`)."""
    from .cli import common

    return common.is_program()


def _pipeline(cfg: Config, handler: SignalHandler, opts: RunOptions, stream: TextIO | None) -> int:
    # Rank 0 holds models/ from before the preparation to the end, so that a second run into the
    # same folder is refused at once, not after its preparation (or let in while the first one
    # prepares). A folder made for the lock and left empty (bad data, a stop in the preparation)
    # is removed again. A resume's checkpoint was chosen in an existing folder: it is not made.
    with contextlib.ExitStack() as held:
        def claim() -> None:
            faults.point("claim", 0)
            held.enter_context(hold_folder(cfg.train.models_dir, opts.command,
                                           create=not _chosen_inside(opts.resume_path, cfg.train.models_dir)))
            if opts.recheck_choice:
                _check_choice_unchanged(Path(cfg.train.models_dir), opts.resume_path, opts.resume_state)
        return _pipeline_held(cfg, handler, opts, stream, None if opts.prepare_only else claim)


def _chosen_inside(checkpoint: Path | None, models_dir: str) -> bool:
    """Whether a resume's checkpoint lies in its models folder (or in an archive inside it): the
    folder was there when the command chose it, so a missing one was moved away meanwhile, and is
    not made again (the resume would write its files at the old name)."""
    if checkpoint is None:
        return False
    here = os.path.normpath(os.path.abspath(models_dir))
    return os.path.normpath(os.path.abspath(checkpoint)).startswith(here + os.sep)


def _check_choice_unchanged(models_dir: Path, chosen: Path | None, state: dict[str, Any] | None) -> None:
    """Refuse to go on from a choice of checkpoint that another run made stale before this one
    held models/ (it held the folder then, and has written newer files since): continuing would fork an
    older state and move that run's results aside. The same name may hold a newer state (a second
    stop in one epoch rewrites its interrupted checkpoint): the line and step are compared too."""
    info, _ = ckpt.select_for_resume(models_dir)
    now = info.path if info is not None else None
    same = (now is None) == (chosen is None) and (now is None
                                                   or Path(now).resolve() == Path(chosen).resolve())
    if same and info is not None and state is not None:
        same = (info.global_step == int(state.get("global_step", -1))
                and info.line == ckpt.lineage_of(state)["line"]
                and (info.state or {}).get("timestamp") == state.get("timestamp"))
    now_text = f"{now} at global step {info.global_step}" if info is not None else "none"
    del info  # the listing mapped every file
    if same:
        return
    then = f"{chosen} at global step {int(state.get('global_step', -1))}" if chosen and state else "none"
    raise FolderInUse(f"{models_dir}/ changed after this command chose its checkpoint (another run "
                      f"wrote there meanwhile): the newest checkpoint is now {now_text}, not {then}; "
                      f"run the command again to continue from it")


def _pipeline_held(cfg: Config, handler: SignalHandler, opts: RunOptions, stream: TextIO | None,
                   claim: Callable[[], None] | None) -> int:
    d = distributed.current()
    if d.is_main:
        stream = stream or sys.stderr
    else:  # one console for the job: the other ranks print errors and shutdown lines only
        stream = _quiet()
        opts = dataclasses.replace(opts, show_progress=False)
        warnings.filterwarnings("ignore")  # rank 0 reads the same data and warns once for the job
    started = time.perf_counter()
    if not opts.prepare_only:
        _claim_once(claim, handler)
    data = _prepare_once(cfg, handler, stream, opts)
    if data is None:
        return handler.exit_code
    if opts.prepare_only:
        return 0
    if not data.symbols:
        raise UserError("no usable symbols to train on")

    choice = choose_splits(data.symbols, cfg.features)
    splits = choice.splits
    print_layout(data, choice, cfg.features.horizon, stream)
    require_windows(splits, cfg.features)  # no training or no test windows: nothing to report on
    state = opts.resume_state
    if state is not None:
        check_fingerprint(state, data, opts.resume_path or Path("?"), opts.allow_data_change, stream)
        names = list(state.get("feature_names", data.feature_names))
        if names != data.feature_names:
            raise CheckpointError(f"{opts.resume_path}: trained on features {names}, data has "
                                  f"{data.feature_names}")
        norm = Normalisation.from_dict(state["normalisation"])
    else:
        norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window,
                                 per_symbol=cfg.features.normalise == "per-symbol")

    if d.is_main:
        check_still_held(cfg.train.models_dir)  # moved while this run prepared: nothing goes there
    trainer = Trainer(cfg, data, splits, norm, handler=handler, stream=stream,
                      show_progress=opts.show_progress, dist=d)
    trainer.epoch_hook = opts.epoch_hook
    models_dir = Path(trainer.cfg.train.models_dir)
    if state is not None:
        path = opts.resume_path or Path("checkpoint")
        trainer.load_state_dict(state, path)
        if opts.target_epochs is not None:
            trainer.set_total_epochs(opts.target_epochs)
        if d.is_main:
            _start_line(trainer, state, path, models_dir, stream)
        saved_world = int(state.get("world_size", 1))
        print(f"Resuming from {path}: epoch {trainer.epoch}, step "
              f"{trainer.step_in_epoch}/{trainer.steps_per_epoch}, global step {trainer.global_step}"
              + (f" (written by {saved_world} process(es), continuing with {d.world_size}: the same "
                 f"global batches; results equal up to floating-point reduction order)"
                 if saved_world != d.world_size else ""), file=stream, flush=True)
    elif d.is_main:
        archived = ckpt.archive_previous_run(models_dir, (EVALUATION_FILE, BASELINES_FILE))
        if archived is not None:
            print(f"note: moved the previous run's checkpoints to {archived} (resume one with "
                  f"resume_training.py --checkpoint PATH)", file=stream, flush=True)
    sizes = {k: len(v) for k, v in trainer.datasets.items()}
    print(f"Training {count_parameters(trainer.model):,} parameters on {trainer.device}: windows "
          f"train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,}, "
          f"{trainer.steps_per_epoch} steps per epoch, {trainer.cfg.train.epochs} epochs"
          + (f", {d.world_size} processes ({d.backend}), global batch {trainer.cfg.train.batch_size}"
             if d.enabled else ""), file=stream, flush=True)
    if not d.is_main:
        return _follow(trainer, handler)
    run = open_run_folder(trainer, state, models_dir, stream, opts.adopt_unfinished_run)
    try:
        return _run_in_folder(trainer, data, choice, run, handler, opts, models_dir, stream, started)
    finally:
        run.close()


def _run_in_folder(trainer: Trainer, data: PreparedData, choice: SplitChoice, run: RunFolder,
                   handler: SignalHandler, opts: RunOptions, models_dir: Path, stream: TextIO,
                   started: float) -> int:
    d = trainer.dist
    summary = RunSummary(run, trainer, data, choice, prepared_s=time.perf_counter() - started)
    summary.plots_enabled = opts.plots
    summary.save_predictions = opts.save_predictions
    with _tells_the_ranks("evaluation"):
        code = _train_and_report(trainer, data, summary, handler, models_dir, stream)
    if d.enabled and trainer.epoch > trainer.cfg.train.epochs:  # trained to the end, as the others
        handler.agree(distributed.agree_stop(handler.pending_signal))  # one exit code for all ranks
    return handler.exit_code if handler.shutdown_requested else code


def _train_and_report(trainer: Trainer, data: PreparedData, summary: RunSummary, handler: SignalHandler,
                      models_dir: Path, stream: TextIO) -> int:
    """Rank 0 (or the only process): train, then the final evaluation and every report file.

    A write the storage refuses while stopping (the interrupted checkpoint on a folder turned
    read-only) still ends as a stop: one ``error:`` line, the summary naming the last good
    checkpoint, the signal's exit code. Outside a stop it, or memory running out in a step, ends
    the run as failed: the summary says why, then the one-line error."""
    try:
        result = trainer.fit()
    except (StorageError, WorkerStalled) as e:
        e = explain_move(e, models_dir)
        summary.mark("training")
        if handler.shutdown_requested:
            if isinstance(e, FolderMoved) and e.saved is not None:
                # The stop's checkpoint was written where the folder went: an ordinary stop, whose
                # resume needs the folder's new name (the warning gives the command).
                print(f"warning: {e}\nCheckpoint saved: {e.saved}", file=stream, flush=True)
                _report_interrupted(summary, "training", e.saved, stream, handler.exit_code)
                return handler.exit_code
            print(f"error: {e}", file=stream, flush=True)
            _report_interrupted(summary, "training", None, stream, handler.exit_code, unsaved=str(e))
            return handler.exit_code
        _report_failed(summary, str(e), stream)
        raise e from None
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError and the CPU allocator's
        if not is_out_of_memory(e):            # failure are RuntimeErrors
            raise
        summary.mark("training")
        reason = out_of_memory(e, trainer)
        _report_failed(summary, reason, stream)
        raise OutOfMemory(reason) from None
    summary.mark("training")
    if result.stopped_in == "pruned":
        _report_pruned(summary, stream)
        return 0
    if not result.completed:
        _report_interrupted(summary, result.stopped_in, result.checkpoint, stream, handler.exit_code)
        return handler.exit_code
    # The other ranks wait from here on: a stop only they received reaches this rank too.
    with distributed.relay_stops(lambda signum: _relayed_stop(handler, signum, stream)):
        try:
            return _evaluate_and_report(trainer, data, summary, handler, models_dir, stream)
        except StorageError as e:  # a report file refused: the training is saved, the run failed
            e = explain_move(e, models_dir)
            summary.mark("evaluation")
            if handler.shutdown_requested:
                print(f"error: {e}", file=stream, flush=True)
                _report_interrupted(summary, "evaluation", None, stream, handler.exit_code)
                return handler.exit_code
            _report_failed(summary, str(e), stream)
            raise e from None


def _relayed_stop(handler: SignalHandler, signum: int, stream: TextIO) -> None:
    """A stop request that only another rank received becomes this rank's own, as the very same
    signal sent to this process (called from the relay thread; the handler runs as for any signal,
    and a copy torchrun forwards as well is recognised as a duplicate)."""
    if not handler.shutdown_requested:
        print(f"\nAnother rank received {signal.Signals(signum).name}: passing it on to rank 0",
              file=stream, flush=True)
        os.kill(os.getpid(), signum)


def _evaluate_and_report(trainer: Trainer, data: PreparedData, summary: RunSummary, handler: SignalHandler,
                         models_dir: Path, stream: TextIO) -> int:
    """Rank 0 (or the only process), after the last epoch: the test evaluation and every report."""
    run = summary.run
    check_still_held(models_dir)  # its reports go where its checkpoints are
    which, evaluated = _load_best(trainer, data, models_dir / ckpt.BEST_NAME, stream)
    scored = score_test(trainer, data, handler)
    summary.mark("evaluation")
    if scored is None:
        print("Evaluation stopped: no report written; training is saved and resume_training.py "
              "runs the evaluation", file=stream, flush=True)
        _report_interrupted(summary, "evaluation", None, stream, handler.exit_code)
        return handler.exit_code
    tp, base = scored
    details = base.details
    rep = build_report(tp, details)
    pooled = {name: p["pooled"] for name, p in rep["predictors"].items()}
    evaluation = {"evaluated": which, "test": pooled.pop("model"), "baselines": pooled,
                  "verdict": rep["verdict"], "report": rep, "baseline_settings": details,
                  "history": trainer.epoch_history,
                  "global_step": trainer.global_step, "data_fingerprint": data.fingerprint,
                  "run": run.name,
                  # The checkpoint whose model was scored (best.pth, or the final model).
                  "checkpoint": evaluated,
                  # The checkpoint this report belongs to: resume trusts it only for that one.
                  "belongs_to": {"line": trainer.lineage["line"], "global_step": trainer.global_step,
                                 "epoch": trainer.epoch - 1}}
    print(format_table(rep, f"Test split ({which})"), file=stream, flush=True)
    # The run folder first, evaluation.json last: a resume trusts evaluation.json as the sign that
    # the report is complete, so a kill -9 before it makes the resume write everything again.
    out = models_dir / EVALUATION_FILE
    check_still_held(models_dir)  # the test evaluation may take long: moved meanwhile?
    if base.fitted is not None:  # for evaluate --all-windows and predict --baselines on other files
        save_baselines(models_dir, base.fitted, owner_of(trainer.cfg.to_dict(), data.fingerprint,
                                                         trainer.lineage["line"], trainer.global_step))
    run.check()
    plots, skipped = write_plots(run.root, report_series(tp), trainer.epoch_history, trainer.step_losses,
                                 trainer.steps_per_epoch, run.resume_steps()) \
        if summary.plots_enabled else ([], {})
    for name, why in skipped.items():
        print(f"note: {name} not drawn: {why}", file=stream, flush=True)
    if summary.save_predictions:
        text = test_predictions_csv(tp.symbols, tp.times, tp.target, tp.preds)
        saved = atomic_write_text(run.root / PREDICTIONS_FILE, text)
        # Its digest in evaluation.json: a reader of the file (walk-forward) knows it is this report's.
        evaluation["predictions"] = {"file": PREDICTIONS_FILE, "rows": len(tp.target),
                                     "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        print(f"Wrote the test split's {len(tp.target):,} predictions to {saved}", file=stream, flush=True)
    summary.finish(evaluated=which, report=rep, baseline_settings=details, plots=plots, evaluation=out,
                   plots_skipped=skipped)
    check_still_held(models_dir)
    atomic_write_json(out, seal_json(json_safe(evaluation)))
    print(f"Report: {out}; run folder {run.root} (train.log, metrics.csv, summary.json, "
          f"{len(plots)} plots)", file=stream, flush=True)
    return 0


def _follow(trainer: Trainer, handler: SignalHandler) -> int:
    """A rank other than 0: train with the others, then wait while rank 0 evaluates and writes
    the report; then agree once more, so that every rank exits with the same code."""
    result = trainer.fit()
    if not result.completed:
        print(f"rank {trainer.dist.rank}: stopped with the other ranks after global step "
              f"{trainer.global_step} (rank 0 saved the checkpoint); exit code {handler.exit_code}",
              file=sys.stderr, flush=True)
        return handler.exit_code
    distributed.wait_for_main("evaluation", lambda: handler.pending_signal)
    handler.agree(distributed.agree_stop(handler.pending_signal))
    return handler.exit_code if handler.shutdown_requested else 0


@contextlib.contextmanager
def _tells_the_ranks(name: str) -> Any:
    """Rank 0's part ``name`` that the other ranks wait for (:func:`distributed.wait_for_main`):
    on the way out they learn that it is done, or its exit code - also on an error, so that they
    never wait for ever. Any other exception counts as exit code 1."""
    failed = 1
    try:
        yield
        failed = 0
    except UserError as e:
        failed = e.exit_code
        raise
    finally:
        distributed.main_done(name, failed)


def _claim_once(claim: Callable[[], None] | None, handler: SignalHandler) -> None:
    """Rank 0 takes the models folder (``claim``) while the other ranks wait; a refusal ends every
    rank with its exit code, as a preparation error does."""
    d = distributed.current()
    if not d.is_main:
        distributed.wait_for_main("claimed", lambda: handler.pending_signal)
        return
    with _tells_the_ranks("claimed"):
        if claim is not None:
            claim()


def _prepare_once(cfg: Config, handler: SignalHandler, stream: TextIO, opts: RunOptions
                  ) -> PreparedData | None:
    """Prepare the data through the cache: rank 0 first (it computes and commits what is
    missing) while the other ranks wait, then the others read the same cache. None when a stop
    was requested (on any rank: the ranks agree)."""
    d = distributed.current()
    if not d.is_main:
        distributed.wait_for_main("prepared", lambda: handler.pending_signal)
    with _tells_the_ranks("prepared"):
        with distributed.relay_stops(lambda signum: _relayed_stop(handler, signum, stream)):
            cache = FeatureCache(cfg.data.cache_dir).open()
            data = prepare_data(cfg, handler, cache, stream, opts.show_progress)
        print(data.summary(), file=stream, flush=True)
    stop = handler.agree(distributed.agree_stop(handler.pending_signal))
    if data.interrupted:
        print(f"Preparation stopped: {len(data.symbols)} completed symbol(s) committed to "
              f"{Path(cfg.data.cache_dir) / 'manifest.json'}", file=stream, flush=True)
    return None if stop else data


def _quiet() -> TextIO:
    """A sink for the console output of ranks other than 0."""
    return open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process


def open_run_folder(trainer: Trainer, state: dict[str, Any] | None, models_dir: Path,
                    stream: TextIO, adopt_unfinished: bool = False) -> RunFolder:
    """The run folder: the checkpoint's (a resume appends to it), the unfinished one of the attempt
    a restart without a checkpoint replaces (``adopt_unfinished``), or a new one; from here on the console is
    also logged to its train.log."""
    runs = runs_dir_for(trainer.cfg.train.runs_dir, models_dir)
    record = state.get("run") if state is not None else None
    if record is None and adopt_unfinished:
        name = unfinished_run(runs, models_dir)
        record = {"name": name, "segments": []} if name is not None else None
    run = RunFolder.start(runs, record, trainer.global_step, models_dir)
    if run.displaced is not None:
        print(f"note: the run folder {runs / run.displaced} is held by another live run; this one "
              f"writes to a new run folder instead", file=stream, flush=True)
    trainer.run = run
    attach_console_log(run.root / LOG_NAME)
    what = "new run" if run.segment == 0 else f"resume {run.segment} of this run"
    if record is not None and state is None:
        what = "new run, in the folder of the unfinished previous attempt"
    print(f"Run folder: {run.root} ({what})", file=stream, flush=True)
    if run.segment > 0 and not run.existed:
        print(f"note: the run folder {run.root} did not exist, so its train.log starts here; if the run "
              f"was started with --runs-dir DIR, pass it again to continue that folder", file=stream,
              flush=True)
    # metrics.csv follows this checkpoint's history from the start: a resume from an older
    # checkpoint must not show the epochs of the line it left until its next epoch ends.
    run.write_metrics(trainer.epoch_history)
    return run


class RunSummary:
    """summary.json of the run folder, written at the end of every segment (also a stopped one)."""

    def __init__(self, run: RunFolder, trainer: Trainer, data: PreparedData, choice: SplitChoice,
                 prepared_s: float) -> None:
        self.run, self.trainer, self.data, self.choice = run, trainer, data, choice
        self.plots_enabled = True  # --no-plots: none written
        self.save_predictions = False
        self.durations = {"preparation_s": round(prepared_s, 3)}
        self._tick = time.perf_counter()
        self._start = self._tick - prepared_s

    def mark(self, phase: str) -> None:
        """Record the seconds spent in ``phase`` since the previous mark."""
        now = time.perf_counter()
        self.durations[f"{phase}_s"] = round(now - self._tick, 3)
        self._tick = now

    def write(self, status: str, **extra: Any) -> Path:
        t = self.trainer
        models = _own_folder(Path(t.cfg.train.models_dir)) or Path(t.cfg.train.models_dir)
        best = models / ckpt.BEST_NAME
        owned = _own_folder(Path(t.cfg.train.models_dir)) is not None
        self.durations["total_s"] = round(time.perf_counter() - self._start, 3)
        groups = t.data_profile["bar_frequency"]  # computed once, also kept in every checkpoint
        doc = {
            "run": self.run.name, "status": status, "segment": self.run.segment,
            "segments": [{"global_step": s[0], "started": s[1]} for s in self.run.segments],
            "config": t.cfg.to_dict(),
            "data": {"fingerprint": self.data.fingerprint, "symbols": len(self.data.symbols),
                     "bars": self.data.bars, "features": list(self.data.feature_names),
                     "bar_frequency": groups, "mixed_frequency": len(groups) > 1},
            "splits": {"policy": self.choice.policy, "reason": self.choice.reason,
                       **split_summary(self.data.symbols, self.choice.splits),
                       # Each symbol's periods: where an own backtest of the test split starts.
                       "by_symbol": t.data_profile["split_dates"]},
            "normalise": t.cfg.features.normalise,
            "model": {"parameters": count_parameters(t.model)},
            "progress": {"epoch": t.epoch, "step_in_epoch": t.step_in_epoch, "global_step": t.global_step,
                         "steps_per_epoch": t.steps_per_epoch, "epochs": t.cfg.train.epochs,
                         "best_val": t.best_val},
            "history": t.epoch_history,
            # Where this run's checkpoints are now (the folder may have been moved under it);
            # never another run's files in a folder made anew at the old name.
            "checkpoints": {"models_dir": str(models.absolute()),
                            "best": str(best.absolute()) if owned and best.exists() else None,
                            "newest": _newest_checkpoint(models) if owned else None},
            "durations": dict(self.durations),
            **extra,
        }
        return self.run.write_summary(doc)

    def finish(self, **extra: Any) -> Path:
        extra["plots"] = [p.name for p in extra.get("plots", [])]
        extra["evaluation"] = str(extra["evaluation"])
        return self.write("completed", interrupted=None, **extra)


def _own_folder(models: Path) -> Path | None:
    """The models folder this run holds, where it is now: ``models`` itself, the folder it was
    moved to, or None when it was removed (or another folder took its name and its own is gone)."""
    try:
        check_still_held(models)
        return models
    except StorageError:
        return moved_to(models)


def _newest_checkpoint(models: Path) -> str | None:
    files = ckpt.checkpoint_files(models)
    return str(max(files, key=lambda p: p.stat().st_mtime_ns).absolute()) if files else None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: PyTorch raises the CPU allocator's as a RuntimeError."""
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text or "not enough memory" in text \
        or "out of memory" in text.lower()


def out_of_memory(e: BaseException, trainer: Trainer) -> str:
    """The one-line message for memory running out in training."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
    return (f"out of memory in training at epoch {trainer.epoch}, global step {trainer.global_step} "
            f"({first}); use a smaller --batch-size or model, or allow the process more memory; the "
            f"checkpoints already written are intact (resume_training.py continues from the newest)")


def _report_failed(summary: RunSummary, reason: str, stream: TextIO) -> None:
    """summary.json of a run that cannot go on, with the reason (best effort: the storage may be
    what failed)."""
    try:
        summary.write("failed", failed={"reason": reason, "epoch": summary.trainer.epoch,
                                        "global_step": summary.trainer.global_step})
    except (OSError, StorageError) as e:
        print(f"warning: could not write the run summary: {e}", file=stream, flush=True)


def _report_interrupted(summary: RunSummary, during: str, checkpoint: Path | None, stream: TextIO,
                        code: int = 0, unsaved: str | None = None) -> None:
    """What a stopped run has, where its checkpoint is and how to continue; summary.json and the
    loss plot say the same. ``unsaved``: why the interrupted checkpoint could not be written (the
    last good one is named instead)."""
    t = summary.trainer
    if during == "evaluation":  # every epoch is done: the position is "after the last one"
        lines = [f"Stopped during the final evaluation, after epoch {len(t.epoch_history)} "
                 f"(global step {t.global_step})."]
    else:
        lines = [f"Stopped during {during} at epoch {t.epoch}, step {t.step_in_epoch}/{t.steps_per_epoch} "
                 f"(global step {t.global_step})."]
    last_good = None
    if checkpoint is not None:
        lines.append(f"  checkpoint: {checkpoint}")
    elif unsaved is not None:
        own = _own_folder(Path(t.cfg.train.models_dir))  # never a file of another run's folder
        chosen = ckpt.select_for_resume(own)[0] if own is not None else None  # what a resume continues
        last_good = str(Path(chosen.path).absolute()) if chosen is not None else None
        lines.append("  the interrupted checkpoint could not be saved; last good checkpoint: "
                     + (str(last_good) if last_good else "none (resume starts again from the beginning)"))
    done = t.epoch_history
    if done:
        best = min(done, key=lambda e: e["val_loss"] if e["val_loss"] == e["val_loss"] else float("inf"))
        last = done[-1]
        best_file = Path(t.cfg.train.models_dir) / ckpt.BEST_NAME
        lines.append(f"  completed epochs: {len(done)}; last: train_loss {last['train_loss']:.4f}, "
                     f"val_loss {last['val_loss']:.4f}, val IC {last['val_ic']:+.4f}; best val_loss "
                     f"{best['val_loss']:.4f} at epoch {best['epoch']}"
                     + (f" ({ckpt.BEST_NAME})" if best_file.exists() else ""))
    else:
        lines.append("  no epoch completed yet: no validation figures, no test report")
    lines.append("  no test report yet: resume_training.py continues the training and writes it")
    lines.append(f"  run folder: {summary.run.root}")
    d = t.dist
    if d.enabled:  # torchrun does not report the exit codes of ranks it stopped: say it here
        lines.append(f"rank 0 of {d.world_size}: every rank stopped after global step {t.global_step}; "
                     f"exit code {code}")
    print("\n".join(lines), file=stream, flush=True)
    # The loss plot of what exists, and the summary; never let a report error hide the stop.
    try:
        summary.run.check()
        if t.step_losses and summary.plots_enabled:
            plot_losses(t.epoch_history, t.step_losses, t.steps_per_epoch, summary.run.resume_steps(),
                        summary.run.root / "loss_curves.png")
        summary.write("interrupted", interrupted={
            "during": during, "checkpoint": str(checkpoint) if checkpoint else None,
            "epoch": t.epoch, "step_in_epoch": t.step_in_epoch, "global_step": t.global_step,
            **({"checkpoint_error": unsaved, "last_good_checkpoint": last_good} if unsaved else {})})
    except (OSError, StorageError) as e:
        print(f"warning: could not write the run summary: {e}", file=stream, flush=True)


def _report_pruned(summary: RunSummary, stream: TextIO) -> None:
    """A sweep's pruner ended the run after an epoch: its checkpoint is that epoch's, no test report."""
    t = summary.trainer
    last = t.epoch_history[-1]
    newest = _newest_checkpoint(Path(t.cfg.train.models_dir))
    print(f"Pruned by the sweep after epoch {last['epoch']} of {t.cfg.train.epochs} (val_loss "
          f"{last['val_loss']:.4f}, val IC {last['val_ic']:+.4f}); checkpoint kept: {newest}",
          file=stream, flush=True)
    try:
        summary.write("pruned", pruned={"epoch": last["epoch"], "global_step": t.global_step})
    except (OSError, StorageError) as e:
        print(f"warning: could not write the run summary: {e}", file=stream, flush=True)


def score_test(trainer: Trainer, data: PreparedData, handler: SignalHandler
               ) -> tuple[TestPredictions, Baselines] | None:
    """The model's and every baseline's predictions on the same test samples, in return space,
    with the baselines as fitted; None if stopped."""
    out = trainer.predict("test")
    if out is None:
        return None
    pred_std, _ = out  # standardised, as the model sees them
    test = trainer.datasets["test"]
    base = baseline_predictions(trainer.datasets, trainer.norm.label_mean, trainer.cfg.features.horizon,
                                lambda: handler.should_stop, threads=torch.get_num_threads(),
                                seed=trainer.cfg.train.seed)
    if base is None:
        return None
    tp = test_predictions(test, data, pred_std, base.predictions, trainer.norm.label_mean,
                          trainer.cfg.features.horizon, trainer.cfg.train.cost_bps)
    return tp, base


def test_predictions(test: WindowDataset, data: PreparedData, pred_std: np.ndarray,
                     baselines: dict[str, np.ndarray], train_mean: float, horizon: int, cost_bps: float
                     ) -> TestPredictions:
    """The test split's samples (symbol, end-bar time, realised return as stored) with the model's
    standardised predictions turned into returns beside the baselines' (training and evaluate)."""
    sym = test.symbol_index()
    local = np.arange(len(test)) - test.split.offsets[sym] + test.split.starts[sym]  # end bar of each
    times = np.asarray([int(data.symbols[s].time[t]) for s, t in zip(sym.tolist(), local.tolist(),
                                                                     strict=True)], np.int64)
    per_year = [metrics.periods_per_year(np.asarray(s.time)) for s in data.symbols]
    names = np.asarray([s.symbol for s in data.symbols])
    return TestPredictions(symbols=names[sym], times=times, target=test.labels(),
                           preds={"model": test.to_returns(pred_std), **baselines}, train_mean=train_mean,
                           horizon=horizon, cost_bps=cost_bps,
                           per_year=float(np.nanmedian(per_year)) if per_year else float("nan"))


def _start_line(trainer: Trainer, state: dict[str, Any], path: Path, models_dir: Path,
                stream: TextIO) -> None:
    """Continue the checkpoint's line, or fork a new one when resuming from an older checkpoint:
    first move every file that is not on the start's history out of the way."""
    extra = [] if evaluation_belongs(models_dir, state) else [models_dir / EVALUATION_FILE]
    plan = ckpt.plan_resume(models_dir, state, path, extra)
    present = [f for f in plan.move_aside if f.is_file() or f.is_symlink()]  # what there is to move
    moved = ckpt.move_aside(models_dir, present, plan.label, plan.known)
    trainer.lineage = plan.lineage
    _restore_epoch_checkpoint(state, path, models_dir, stream)
    if plan.forked:
        print(f"note: {path} is not the newest checkpoint of its line: starting line "
              f"{plan.lineage['line'][:8]} from it", file=stream, flush=True)
    if moved is not None:
        print(f"note: moved {len(present)} file(s) that are not on this checkpoint's history to "
              f"{moved} (nothing was deleted)", file=stream, flush=True)


def _restore_epoch_checkpoint(state: dict[str, Any], path: Path, models_dir: Path, stream: TextIO) -> None:
    """At the end of an epoch that set a new best, best.pth is written first and
    checkpoint_epoch_<E>.pth second, from the same bytes. A kill between the two leaves best.pth
    the newest checkpoint, and a resume continues from it: write the missing epoch checkpoint
    from it first, so the models folder holds what an uninterrupted run's does."""
    if path.name != ckpt.BEST_NAME or not state.get("epoch_complete") or path.parent.absolute() != \
            models_dir.absolute():
        return
    target = models_dir / ckpt.epoch_checkpoint_name(int(state["epoch"]))
    if target.exists() or target.is_symlink():
        return
    ckpt.save_checkpoint(target, {}, data=path.read_bytes())
    print(f"note: {target.name} was not written completely (the run was killed while writing it); "
          f"restored it from {path.name}, which holds the same end-of-epoch state", file=stream, flush=True)


def _load_best(trainer: Trainer, data: PreparedData, best: Path, stream: TextIO
               ) -> tuple[str, dict[str, Any]]:
    """Put the best validation model into ``trainer.model`` when ``best.pth`` provably belongs to
    this run (same line or an ancestor at or before the fork, same data, the very best_val this
    run recorded); otherwise say why and keep the final model. Returns what will be evaluated, as
    words and as a record of that checkpoint (file, line, epoch, global step)."""
    final = {"file": "final model", "line": trainer.lineage["line"], "epoch": trainer.epoch - 1,
             "global_step": trainer.global_step}
    if not best.exists():
        return "final model", final
    try:
        state = ckpt.load_checkpoint(best)
        info = ckpt.CheckpointInfo(best, 0, state=state)
        reason = ("it belongs to another line of training"
                  if not ckpt.on_path(info, trainer.lineage, trainer.global_step)
                  else "it was trained on other data"
                  if state["data_fingerprint"]["fingerprint"] != data.fingerprint
                  else f"its validation loss {state['best_val']} is not this run's best {trainer.best_val}"
                  if state["best_val"] != trainer.best_val else "")
        if not reason:
            trainer.load_weights(state, best)
            return f"best model (epoch {state['epoch']})", {
                "file": best.name, "line": ckpt.lineage_of(state)["line"], "epoch": state["epoch"],
                "global_step": state["global_step"], "best_val": state["best_val"]}
    except CheckpointError as e:
        reason = str(e)
    print(f"warning: not using {best}: {reason}; evaluating the final model", file=stream, flush=True)
    return "final model", final
