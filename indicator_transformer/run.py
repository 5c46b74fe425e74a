"""The pipeline both commands run: prepare -> (resume) -> train -> evaluate, under one SignalHandler.

It returns an exit code; the caller prints ``Cleanup complete`` last on a stop.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .atomic import atomic_write_json
from .baselines import baseline_predictions
from .config import Config
from .data.cache import FeatureCache
from .data.prepare import PreparedData, prepare, resolve_sources
from .data.windows import Normalisation, fit_normalisation, make_splits
from .errors import CheckpointError, UserError
from .integrity import IntegrityError, check_json, json_safe, seal_json
from .metrics import point_metrics
from .model import count_parameters
from .shutdown import SignalHandler
from .training import checkpoint as ckpt
from .training.trainer import Trainer, resolve_device

EVALUATION_FILE = "evaluation.json"  # test metrics of the finished run, in the models folder


def evaluation_belongs(models_dir: str | Path, state: dict[str, Any]) -> bool:
    """Whether ``models_dir/evaluation.json`` is an intact report of exactly this checkpoint's
    model (same line of training, same global step). A stale, foreign or damaged report is not."""
    path = Path(models_dir) / EVALUATION_FILE
    try:
        report = check_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, IntegrityError):
        return False
    owner = report.get("checkpoint")
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


def run_pipeline(cfg: Config, handler: SignalHandler, opts: RunOptions, stream: TextIO | None = None) -> int:
    """Prepare, train (or resume) and evaluate. Returns the exit code."""
    stream = stream or sys.stderr
    resolve_device(cfg.train.device)  # a bad --device is a usage error before any work is done
    cache = FeatureCache(cfg.data.cache_dir).open()
    data = prepare_data(cfg, handler, cache, stream, opts.show_progress)
    print(data.summary(), file=stream, flush=True)
    if data.interrupted:
        print(f"Preparation stopped: {len(data.symbols)} completed symbol(s) committed to "
              f"{Path(cfg.data.cache_dir) / 'manifest.json'}", file=stream, flush=True)
        return handler.exit_code
    if opts.prepare_only:
        return 0
    if not data.symbols:
        raise UserError("no usable symbols to train on")

    splits = make_splits(data.symbols, cfg.features)
    state = opts.resume_state
    if state is not None:
        check_fingerprint(state, data, opts.resume_path or Path("?"), opts.allow_data_change, stream)
        names = list(state.get("feature_names", data.feature_names))
        if names != data.feature_names:
            raise CheckpointError(f"{opts.resume_path}: trained on features {names}, data has "
                                  f"{data.feature_names}")
        norm = Normalisation.from_dict(state["normalisation"])
    else:
        norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window)

    trainer = Trainer(cfg, data, splits, norm, handler=handler, stream=stream,
                      show_progress=opts.show_progress)
    models_dir = Path(trainer.cfg.train.models_dir)
    if state is not None:
        path = opts.resume_path or Path("checkpoint")
        trainer.load_state_dict(state, path)
        if opts.target_epochs is not None:
            trainer.set_total_epochs(opts.target_epochs)
        _start_line(trainer, state, path, models_dir, stream)
        print(f"Resuming from {path}: epoch {trainer.epoch}, step "
              f"{trainer.step_in_epoch}/{trainer.steps_per_epoch}, global step {trainer.global_step}",
              file=stream, flush=True)
    else:
        archived = ckpt.archive_previous_run(models_dir, (EVALUATION_FILE,))
        if archived is not None:
            print(f"note: moved the previous run's checkpoints to {archived} (resume one with "
                  f"resume_training.py --checkpoint PATH)", file=stream, flush=True)
    sizes = {k: len(v) for k, v in trainer.datasets.items()}
    print(f"Training {count_parameters(trainer.model):,} parameters on {trainer.device}: windows "
          f"train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,}, "
          f"{trainer.steps_per_epoch} steps per epoch, {trainer.cfg.train.epochs} epochs",
          file=stream, flush=True)

    result = trainer.fit()
    if not result.completed:
        return handler.exit_code

    which = _load_best(trainer, data, models_dir / ckpt.BEST_NAME, stream)
    scores = _score_test(trainer, handler)
    if scores is None:
        print("Evaluation stopped: no report written; training is saved and resume_training.py "
              "runs the evaluation", file=stream, flush=True)
        return handler.exit_code
    test = scores.pop("model")
    verdict = _verdict(test, scores)
    report = {"evaluated": which, "test": test, "baselines": scores, "verdict": verdict,
              "history": trainer.epoch_history,
              "global_step": trainer.global_step, "data_fingerprint": data.fingerprint,
              # The checkpoint this report belongs to: resume trusts it only for that one.
              "checkpoint": {"line": trainer.lineage["line"], "global_step": trainer.global_step,
                             "epoch": trainer.epoch - 1}}
    out = atomic_write_json(models_dir / EVALUATION_FILE, seal_json(json_safe(report)))
    _print_table(which, test, scores, verdict, stream)
    print(f"Test ({which}): IC {test['ic']:+.4f} (t {test['ic_t']:+.1f}), rank IC {test['rank_ic']:+.4f}, "
          f"hit rate {test['hit_rate']:.3f} (always long {test['always_long']:.3f}), MSE/baseline "
          f"{test['mse_ratio']:.4f} over {test['samples']:,} windows -> {out}", file=stream, flush=True)
    return 0


def _score_test(trainer: Trainer, handler: SignalHandler) -> dict[str, dict[str, Any]] | None:
    """The model and every baseline scored on the same test samples; None if stopped."""
    out = trainer.predict("test")
    if out is None:
        return None
    pred_std, target_std = out  # standardised, as the model sees them
    mean, std = trainer.norm.label_mean, trainer.norm.label_std
    target = mean + std * target_std.astype(np.float64)
    model = point_metrics(mean + std * pred_std.astype(np.float64), target, mean)
    model["loss"] = float(np.mean((pred_std - target_std) ** 2)) if len(pred_std) else float("nan")
    base = baseline_predictions(trainer.datasets, mean, std, trainer.cfg.features.horizon,
                                lambda: handler.should_stop)
    if base is None:
        return None
    return {"model": model, **{k: point_metrics(v, target, mean) for k, v in base.items()}}


def _verdict(model: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> str:
    """One plain sentence: does the model beat the strongest baseline on the test split?"""
    rivals = {k: v for k, v in baselines.items() if k in ("ridge", "momentum")}
    beaten = [k for k, v in rivals.items()
              if not (model["mse_ratio"] < v["mse_ratio"] and _gt(model["ic"], v["ic"]))]
    if not beaten:
        return "the model beats every baseline on MSE and IC"
    return (f"the model does not beat {', '.join(beaten)} on the test split (lower MSE and higher IC "
            f"both needed): a simpler predictor does as well here")


def _gt(a: float, b: float) -> bool:
    return a > b if np.isfinite(a) and np.isfinite(b) else np.isfinite(a)


def _print_table(which: str, model: dict[str, Any], baselines: dict[str, dict[str, Any]], verdict: str,
                 stream: TextIO) -> None:
    """The model and every baseline side by side; * marks the best of each column."""
    rows = {"model": model, **baselines}
    cols = [("IC", "ic", max), ("rank IC", "rank_ic", max), ("hit rate", "hit_rate", max),
            ("MSE/mean", "mse_ratio", min)]
    best = {key: pick([r[key] for r in rows.values() if np.isfinite(r[key])], default=None)
            for _, key, pick in cols}
    width = max(len(n) for n in rows)
    lines = [f"Test split ({which}): {model['samples']:,} windows, the same samples for every row "
             f"(always long hits {model['always_long']:.3f}; * = best)",
             f"  {'predictor'.ljust(width)}  " + "  ".join(f"{c:>9}" for c, _, _ in cols)]
    for name, r in rows.items():
        cells = []
        for _, key, _ in cols:
            v = r[key]
            text = "-" if not np.isfinite(v) else f"{v:+.4f}" if key != "mse_ratio" and key != "hit_rate" \
                else f"{v:.4f}"
            cells.append(f"{text + ('*' if v == best[key] else ' '):>9}")
        lines.append(f"  {name.ljust(width)}  " + "  ".join(cells))
    lines.append(f"Verdict: {verdict}")
    print("\n".join(lines), file=stream, flush=True)


def _start_line(trainer: Trainer, state: dict[str, Any], path: Path, models_dir: Path,
                stream: TextIO) -> None:
    """Continue the checkpoint's line, or fork a new one when resuming from an older checkpoint:
    first move every file that is not on the start's history out of the way."""
    extra = [] if evaluation_belongs(models_dir, state) else [models_dir / EVALUATION_FILE]
    plan = ckpt.plan_resume(models_dir, state, path, extra)
    moved = ckpt.move_aside(models_dir, plan.move_aside, plan.label, plan.known)
    trainer.lineage = plan.lineage
    if plan.forked:
        print(f"note: {path} is not the newest checkpoint of its line: starting line "
              f"{plan.lineage['line'][:8]} from it", file=stream, flush=True)
    if moved is not None:
        print(f"note: moved {len(plan.move_aside)} file(s) that are not on this checkpoint's history to "
              f"{moved} (nothing was deleted)", file=stream, flush=True)


def _load_best(trainer: Trainer, data: PreparedData, best: Path, stream: TextIO) -> str:
    """Put the best validation model into ``trainer.model`` when ``best.pth`` provably belongs to
    this run (same line or an ancestor at or before the fork, same data, the very best_val this
    run recorded); otherwise say why and keep the final model. Returns what will be evaluated."""
    if not best.exists():
        return "final model"
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
            return f"best model (epoch {state['epoch']})"
    except CheckpointError as e:
        reason = str(e)
    print(f"warning: not using {best}: {reason}; evaluating the final model", file=stream, flush=True)
    return "final model"
