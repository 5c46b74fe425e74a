"""``python train_indicator_transformer.py``: prepare the data, train, evaluate.

Examples::

    python train_indicator_transformer.py                       # built-in synthetic market
    python train_indicator_transformer.py --data-dir ~/ohlcv --epochs 20 --num-workers 2
    python train_indicator_transformer.py --config run.toml --lr 3e-4

Press Ctrl-C (or send SIGTERM) at any moment: the current optimizer step finishes, the checkpoint
``models/checkpoint_epoch_<E>_interrupted.pth`` is saved, workers are shut down, and the process
exits 130 (143 for SIGTERM) after printing ``Cleanup complete``. ``python resume_training.py``
continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from ..config import build_config, load_toml
from ..errors import UserError
from .common import check_folders, run_command, run_with_handler
from .options import add_common_switches, add_setting_flags, flag_values


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="train_indicator_transformer.py",
        description="Train a transformer on TA-Lib indicator features of OHLCV data. Without "
                    "--data-dir it uses a built-in synthetic market. Ctrl-C or SIGTERM saves "
                    "models/checkpoint_epoch_<E>_interrupted.pth and exits 130/143; resume with "
                    "resume_training.py.",
        epilog="Exit codes: 0 done, 130 stopped by SIGINT after saving, 143 stopped by SIGTERM after "
               "saving, 2 bad input or usage, 1 anything else. Every setting has a flag and a TOML "
               "key of the same name (--train-frac / train_frac); flags override the --config file. "
               "`indicator-transformer config --show [--config F] [flags]` prints the effective "
               "configuration as a reusable TOML file; `indicator-transformer features` lists the "
               "built-in features, the transforms and the TA-Lib functions you can declare.")
    add_setting_flags(p)
    add_common_switches(p)
    p.add_argument("--prepare-only", action="store_true",
                   help="only prepare the feature cache, then print a summary and exit")
    return p


def run(args: argparse.Namespace) -> int:
    """Build the configuration and run the pipeline under a SignalHandler."""
    if args.config is not None and not args.config.strip():
        # `--config "$UNSET_VARIABLE"` must not silently run with the defaults.
        raise UserError("--config: expected a TOML file name, got an empty string")
    cfg = build_config(load_toml(args.config) if args.config is not None else {}, flag_values(args),
                       args.config)
    check_folders(cfg, models=not args.prepare_only)
    from ..run import RunOptions, run_pipeline  # torch loads here, after the cheap checks: a typo fails fast

    opts = RunOptions(prepare_only=args.prepare_only, show_progress=not args.no_progress)
    return run_with_handler(lambda handler: run_pipeline(cfg, handler, opts))


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
