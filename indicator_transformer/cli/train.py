"""``python train_indicator_transformer.py``: prepare the data, train, evaluate.

Examples::

    python train_indicator_transformer.py                       # built-in synthetic market
    python train_indicator_transformer.py --data-dir ~/ohlcv --epochs 20 --num-workers 2
    python train_indicator_transformer.py --config run.toml --lr 3e-4

Press Ctrl-C (or send SIGTERM) at any moment: the current optimizer step finishes, the checkpoint
``models/checkpoint_epoch_<E>_interrupted.pth`` is saved, workers are shut down, and the process
exits 130 (143 for SIGTERM, 129 for SIGHUP, 138 for SIGUSR1) after printing ``Cleanup complete``.
``python resume_training.py`` continues exactly where it stopped.

The same command runs under torchrun (DistributedDataParallel, gloo on CPU and nccl on CUDA):

    torchrun --standalone --nproc_per_node=2 train_indicator_transformer.py --epochs 20

``--resume auto`` continues from the newest valid checkpoint of the line in the models folder
instead of moving it aside and starting from zero (and starts fresh when there is none): the flag
for a job that a scheduler may start again (SLURM ``--requeue``). A torchrun restart
(``TORCHELASTIC_RESTART_COUNT`` > 0, with ``--max-restarts``) does the same by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..config import Config, build_config, load_toml, setting_text
from ..errors import CheckpointError, UserError
from ..shutdown import SignalHandler
from ..startup import deferred_interrupt
from .common import SAVE_PREDICTIONS_HELP, check_folders, run_command, run_with_handler
from .options import FIXED_ON_RESUME, add_common_switches, add_setting_flags, flag_values


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="train_indicator_transformer.py",
        description="Train a transformer on TA-Lib indicator features of OHLCV data. Without "
                    "--data-dir it uses a built-in synthetic market. Ctrl-C or SIGTERM saves "
                    "models/checkpoint_epoch_<E>_interrupted.pth and exits 130/143; resume with "
                    "resume_training.py.",
        epilog="Exit codes: 0 done, 130 stopped by SIGINT after saving, 143 stopped by SIGTERM after "
               "saving (129 SIGHUP, 138 SIGUSR1: SLURM's warning signal), 2 bad input or usage, 1 "
               "anything else. Under torchrun (`torchrun --standalone --nproc_per_node=2 "
               "train_indicator_transformer.py ...`) --batch-size is the global batch, rank 0 "
               "writes every file, and a stop is agreed by all ranks at one step. Every setting has "
               "a flag and a TOML key of the same name (--train-frac / train_frac); flags override "
               "the --config file. "
               "`indicator-transformer config --show [--config F] [flags]` prints the effective "
               "configuration as a reusable TOML file; `indicator-transformer features` lists the "
               "built-in features, the transforms and the TA-Lib functions you can declare.")
    add_setting_flags(p)
    add_common_switches(p)
    p.add_argument("--save-predictions", action="store_true", help=SAVE_PREDICTIONS_HELP)
    p.add_argument("--prepare-only", action="store_true",
                   help="only prepare the feature cache, then print a summary and exit")
    p.add_argument("--resume", choices=["auto"], default=None,
                   help="auto: continue from the newest valid checkpoint of the line in the models "
                        "folder (the settings must be the checkpoint's), or start fresh when there is "
                        "none, instead of moving earlier checkpoints aside. For jobs a scheduler may "
                        "start again; torchrun restarts (TORCHELASTIC_RESTART_COUNT > 0) do it by "
                        "themselves. A switch, not a saved setting")
    # Internal: the run is a trial of `indicator-transformer sweep` (sweep/hook.py), started by it.
    p.add_argument("--sweep-trial", default=None, help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the configuration and run the pipeline under a SignalHandler."""
    if args.config is not None and not args.config.strip():
        # `--config "$UNSET_VARIABLE"` must not silently run with the defaults.
        raise UserError("--config: expected a TOML file name, got an empty string")
    cfg = build_config(load_toml(args.config) if args.config is not None else {}, flag_values(args),
                       args.config)
    check_folders(cfg, models=not args.prepare_only)
    with deferred_interrupt():  # torch loads here, after the cheap checks (see startup.py)
        from ..run import RunOptions, in_job, run_pipeline
    from ..training import distributed

    opts = RunOptions(prepare_only=args.prepare_only, show_progress=not args.no_progress,
                      plots=not args.no_plots, save_predictions=args.save_predictions)
    if args.sweep_trial is not None:
        if distributed.under_torchrun():
            raise UserError("--sweep-trial: a sweep's trials run as one process each, not under torchrun")
        from ..sweep.hook import load_hook

        opts = dataclasses.replace(opts, epoch_hook=load_hook(Path(args.sweep_trial)))
    auto = not args.prepare_only and (args.resume == "auto" or distributed.restart_count() > 0)
    if not auto:
        return run_with_handler(lambda handler: run_pipeline(cfg, handler, opts))

    def body(handler: SignalHandler) -> int:
        return in_job(cfg.train.device, handler, lambda: _resume_auto(cfg, handler, opts))

    return run_with_handler(body)


def _resume_auto(cfg: Config, handler: SignalHandler, opts: Any) -> int:
    """``--resume auto`` (or a torchrun restart): continue the newest valid checkpoint of the line
    in the models folder, or start fresh when there is none. Rank 0 chooses; every rank loads the
    file it chose."""
    from ..run import EVALUATION_FILE, evaluation_belongs, run_pipeline
    from ..training import checkpoint as ckpt
    from ..training import distributed

    chosen = None
    if distributed.current().is_main:
        info, corrupt = ckpt.select_for_resume(cfg.train.models_dir)
        for c in corrupt:
            print(f"warning: skipping corrupt checkpoint {c.path}: {c.error}", file=sys.stderr)
        chosen = str(info.path) if info is not None else None
        del info, corrupt  # the listing mapped every file: let the maps go before training
    chosen = distributed.broadcast_text(chosen)
    if chosen is None:
        if distributed.current().is_main:
            print(f"--resume auto: no checkpoint in {cfg.train.models_dir}; starting a new run",
                  file=sys.stderr, flush=True)
        # The attempt that died before its first checkpoint (a torchrun restart, or a requeued
        # job) opened a run folder: continue it rather than leave it orphaned beside a new one.
        return run_pipeline(cfg, handler, dataclasses.replace(opts, adopt_unfinished_run=True,
                                                              recheck_choice=True))
    path = Path(chosen)
    state = ckpt.load_checkpoint(path)
    _check_same_settings(cfg, Config.from_dict(state["config"], source=str(path)), path)
    completed = int(state["epoch"]) if state.get("epoch_complete") else int(state["epoch"]) - 1
    if completed >= cfg.train.epochs and evaluation_belongs(cfg.train.models_dir, state):
        if distributed.current().is_main:
            print(f"Nothing to do: {path} has completed {completed} epoch(s) of {cfg.train.epochs} and "
                  f"{Path(cfg.train.models_dir) / EVALUATION_FILE} is its report", file=sys.stderr)
        return 0
    if distributed.current().is_main:
        print(f"--resume auto: continuing from {path}", file=sys.stderr, flush=True)
    opts = dataclasses.replace(opts, resume_state=state, resume_path=path,
                               target_epochs=max(cfg.train.epochs, completed), recheck_choice=True)
    return run_pipeline(cfg, handler, opts)


def _check_same_settings(cfg: Config, saved: Config, path: Path) -> None:
    """The command's architecture, feature and optimisation settings must be the checkpoint's
    (they cannot change in the middle of a line); name every one that differs."""
    mine = {k: v for section in cfg.to_dict().values() for k, v in section.items()}
    theirs = {k: v for section in saved.to_dict().values() for k, v in section.items()}
    differ = []
    for flag in FIXED_ON_RESUME:
        key = flag[2:].replace("-", "_")
        a, b = mine.get(key), theirs.get(key)
        if key == "custom_features":  # declarations are looked up by name: order means nothing
            a, b = (sorted(v or [], key=lambda d: str(d.get("name"))) for v in (a, b))
        if a != b:
            differ.append(f"{flag} {setting_text(a)} (checkpoint: {setting_text(b)})")
    if differ:
        raise CheckpointError(f"{path}: --resume auto: this command's settings differ from the "
                              f"checkpoint's: {'; '.join(differ)}. Use the command that started the "
                              f"run, or start a new run without --resume auto")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
