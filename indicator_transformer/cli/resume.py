"""``python resume_training.py``: list checkpoints, or continue training exactly where it stopped.

Examples::

    python resume_training.py --list
    python resume_training.py                       # newest valid checkpoint in models/
    python resume_training.py --checkpoint models/checkpoint_epoch_15_interrupted.pth
    python resume_training.py --epochs 30           # 30 more epochs after the last completed one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import MAX_EPOCHS, Config, DataConfig, flag_name, setting_text
from ..errors import CheckpointError, UserError
from ..folder_lock import FolderInUse, folder_holder
from ..run import EVALUATION_FILE, RunOptions, evaluation_belongs, run_pipeline
from ..shutdown import SignalHandler
from ..training import checkpoint as ckpt
from .common import (
    SAVE_PREDICTIONS_HELP,
    check_folders,
    human_bytes,
    locate_data,
    print_table,
    run_command,
    run_with_handler,
)
from .options import (
    DATA_FLAGS,
    DATA_LOCATION,
    FEATURE_FLAGS,
    FIXED_ON_RESUME,
    MODEL_FLAGS,
    OPTIM_FLAGS,
    RUNTIME_FLAGS,
    add_common_switches,
    add_flags,
    flag_values,
)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="resume_training.py",
        description="Resume training from a checkpoint in models/ (the newest valid one by "
                    "default). Model, optimizer, scheduler, RNG and data position are restored, so "
                    "the result equals an uninterrupted run. Architecture, feature and optimisation "
                    "settings come from the checkpoint; giving a different value is an error.",
        epilog="Exit codes: 0 done, 130/143 stopped again after saving, 2 bad input or usage.")
    p.add_argument("--list", action="store_true", help="list the checkpoints and exit")
    p.add_argument("--save-predictions", action="store_true", help=SAVE_PREDICTIONS_HELP)
    p.add_argument("--checkpoint", metavar="PATH", help="resume from this checkpoint file")
    p.add_argument("--epochs", type=int, default=None,
                   help="train N more epochs after the checkpoint's last completed epoch (an "
                        "interrupted epoch is finished first and counts as one); default: continue "
                        "to the originally configured epoch count")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even if the data or feature cache keys differ from the checkpoint's")
    add_flags(p, [("runtime", RUNTIME_FLAGS), ("data location", DATA_FLAGS[:DATA_LOCATION]),
                  ("must match the checkpoint", DATA_FLAGS[DATA_LOCATION:] + FEATURE_FLAGS + MODEL_FLAGS
                   + OPTIM_FLAGS)])
    add_common_switches(p)
    return p


def list_table(models_dir: str) -> int:
    """Print the checkpoints of ``models_dir``, oldest first, with the line of training of each;
    corrupt ones are listed as such, and the one a plain resume continues is named."""
    infos = ckpt.list_checkpoints(models_dir)
    if not infos:
        print(f"No checkpoints in {models_dir}")
        return 0
    rows = []
    for i in infos:
        if not i.ok:
            rows.append([str(i.path), "CORRUPT", "-", "-", "-", "-", "-", "-", human_bytes(i.size)])
            continue
        s = i.state
        hist = s["loss_history"]["epochs"]
        steps = s["loss_history"]["steps"]
        train = f"{hist[-1]['train_loss']:.4f}" if hist else (f"{sum(steps[-50:]) / len(steps[-50:]):.4f}"
                                                              if steps else "-")
        val = f"{hist[-1]['val_loss']:.4f}" if hist else "-"
        line = (i.line or "-")[:8] + ("" if i.sealed else " (unverified)")
        rows.append([str(i.path), line, str(s["epoch"]),
                     f"{s['global_step']} ({s['step_in_epoch']}/{s['steps_per_epoch']})"
                     if "steps_per_epoch" in s else str(s["global_step"]),
                     "yes" if s["interrupted"] else "no", s["timestamp"][:19], train, val,
                     human_bytes(i.size)])
    print_table(["file", "line", "epoch", "step (in epoch)", "interrupted", "written (UTC)", "train_loss",
                 "val_loss", "size"], rows)
    for i in infos:
        if not i.ok:
            print(f"corrupt: {i.path}: {i.error}")
    chosen, _ = ckpt.select_for_resume(models_dir, infos)
    if chosen is not None:
        print(f"A plain resume continues line {(chosen.line or '-')[:8]} from {chosen.path}")
    return 0


def _check_fixed(args: argparse.Namespace, saved: Config, path: Path) -> None:
    """A fixed setting given on the command line must mean what the checkpoint holds (compared in
    the stored, normalised form: declarations in any order, parameters spelt out or not)."""
    given = flag_values(args)
    saved_flat = {k: v for section in saved.to_dict().values() for k, v in section.items()}
    for flag in FIXED_ON_RESUME:
        key = flag[2:].replace("-", "_")
        if key not in given:
            continue
        changed = saved.replace(origins={key: flag}, **{key: given[key]}).to_dict()
        wanted = next(section[key] for section in changed.values() if key in section)
        if _canonical(key, wanted) != _canonical(key, saved_flat[key]):
            raise UserError(f"{flag} {setting_text(given[key])} conflicts with the checkpoint {path} "
                            f"({key} = {setting_text(saved_flat[key])}); architecture, feature and "
                            f"optimisation settings come from the checkpoint (omit the flag)")


def _canonical(key: str, value: Any) -> Any:
    # Declared features are looked up by name: their order in the declaration means nothing.
    return sorted(value, key=lambda d: str(d.get("name"))) if key == "custom_features" else value


def run(args: argparse.Namespace) -> int:
    """List, or pick a checkpoint and resume from it."""
    if args.models_dir is not None and not args.models_dir.strip():
        raise UserError("--models-dir '': expected a folder path (omit the flag for models/)")
    models_dir = args.models_dir or "models"
    if args.list:
        return list_table(models_dir)
    if args.epochs is not None and not 1 <= args.epochs <= MAX_EPOCHS:
        raise UserError(f"--epochs {args.epochs}: expected an integer from 1 to {MAX_EPOCHS:_}")
    # The handler goes in before the (possibly long) checkpoint loading, so a Ctrl-C there too
    # ends with the usual shutdown lines.
    return run_with_handler(lambda handler: _resume(args, models_dir, handler))


def _resume(args: argparse.Namespace, models_dir: str, handler: SignalHandler) -> int:
    from ..run import in_job

    # Under torchrun every rank runs this: rank 0 chooses the checkpoint, every rank loads it.
    return in_job(args.device or "auto", handler, lambda: _resume_job(args, models_dir, handler))


def _choose(models_dir: str) -> str | None:
    """The newest valid checkpoint of models_dir (rank 0 reports the corrupt ones it skipped)."""
    info, corrupt = ckpt.select_for_resume(models_dir)
    for c in corrupt:
        print(f"warning: skipping corrupt checkpoint {c.path}: {c.error}", file=sys.stderr)
    return str(info.path) if info is not None else None


def _resume_job(args: argparse.Namespace, models_dir: str, handler: SignalHandler) -> int:
    from ..training import distributed

    main = distributed.current().is_main
    if args.checkpoint:
        path = Path(args.checkpoint)
        state = ckpt.load_checkpoint(path)
    else:
        chosen = distributed.broadcast_text(_choose(models_dir) if main else None)
        if chosen is None:
            holder = folder_holder(models_dir) if main else None
            if holder is not None:  # a fresh run that has not written its first checkpoint yet
                raise FolderInUse(f"{models_dir}/ is in use by {holder}, which has written no checkpoint "
                                  f"yet; wait for it, or stop it and resume then")
            raise CheckpointError(f"{models_dir}: no valid checkpoint to resume from (train first with "
                                  f"train_indicator_transformer.py, or pass --checkpoint PATH)")
        path = Path(chosen)
        state = ckpt.load_checkpoint(path)  # verified and fully read: the listing only mapped it
    saved = Config.from_dict(state["config"], source=str(path))  # validated by load_checkpoint
    _check_fixed(args, saved, path)
    overrides: dict[str, Any] = {k: v for k, v in flag_values(args).items()
                                 if f"--{k.replace('_', '-')}" not in FIXED_ON_RESUME}
    # One data location: a flag naming one replaces whichever the checkpoint recorded.
    for key, other in (("data_dir", "data_file"), ("data_file", "data_dir")):
        if overrides.get(key) is not None:
            overrides[other] = None
    # Paths that are written come from this command line or the defaults, never from the
    # checkpoint: a copied or hand-edited file must not direct writes elsewhere.
    if args.models_dir is None:
        # A checkpoint in models/previous_runs/<run>/ continues in models/ (as a new line there),
        # never inside the archive it was moved to.
        archived = path.parent.parent.name == ckpt.ARCHIVE_DIR
        overrides["models_dir"] = str(path.parent.parent.parent if archived else path.parent)
        if archived and main:
            print(f"note: {path} was moved aside by an earlier run; training continues in "
                  f"{overrides['models_dir']} (pass --models-dir to choose)", file=sys.stderr)
    overrides.setdefault("cache_dir", DataConfig().cache_dir)
    overrides.setdefault("runs_dir", None)  # beside the models folder, unless given again
    locate_data(state, saved, overrides, path)
    cfg = saved.replace(source=str(path), origins={k: flag_name(k) for k in flag_values(args)}, **overrides)
    check_folders(cfg)
    if main and Path(cfg.data.cache_dir).resolve() != Path(saved.data.cache_dir).resolve():
        print(f"note: using the feature cache {cfg.data.cache_dir} (the checkpoint was prepared with "
              f"{saved.data.cache_dir}; pass --cache-dir to choose)", file=sys.stderr)

    completed = int(state["epoch"]) if state.get("epoch_complete") else int(state["epoch"]) - 1
    target = completed + args.epochs if args.epochs is not None else cfg.train.epochs
    if target > MAX_EPOCHS:
        raise UserError(f"--epochs {args.epochs}: {completed} completed + {args.epochs} is more than "
                        f"{MAX_EPOCHS:_} epochs")
    if completed >= target:
        if evaluation_belongs(cfg.train.models_dir, state):
            if main:
                print(f"Nothing to do: {path} has completed {completed} epoch(s) of {target} and "
                      f"{Path(cfg.train.models_dir) / EVALUATION_FILE} is its report. Use --epochs N to "
                      f"train N more.")
            return 0
        if main:
            print(f"Training is complete ({completed} epochs) but no report of this checkpoint exists; "
                  f"running the final evaluation", file=sys.stderr)
    opts = RunOptions(show_progress=not args.no_progress, plots=not args.no_plots, resume_state=state,
                      save_predictions=args.save_predictions,
                      resume_path=path,
                      target_epochs=target, allow_data_change=args.allow_data_change, command="resume",
                      recheck_choice=not args.checkpoint)
    return run_pipeline(cfg, handler, opts)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
