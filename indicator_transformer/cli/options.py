"""Flags shared by train_indicator_transformer.py and resume_training.py.

Flag ``--foo-bar`` sets configuration key ``foo_bar``; every flag defaults to None so that a TOML
file (``--config``) and the built-in defaults fill what was not given. The values are checked by
config.py (its docstring lists every bound); an error names the flag it came from.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DEFAULT_FEATURES, Config

# (flag, type, help). Grouped by what resume may change.
# The first DATA_LOCATION entries say where the data is: a resume may point them elsewhere.
DATA_LOCATION = 2
DATA_FLAGS = [
    ("--data-dir", str, "folder of OHLCV files, one per symbol (CSV or Parquet); default: the "
                        "built-in synthetic market"),
    ("--data-file", str, "one panel file (CSV or Parquet) holding many symbols in long format: a "
                         "symbol column (symbol, ticker, instrument, asset or code) beside date/time "
                         "and OHLCV"),
    ("--symbols", int, "synthetic market: number of symbols (default 16)"),
    ("--bars", int, "synthetic market: bars per symbol (default 2500)"),
    ("--data-seed", int, "synthetic market: generator seed, 0 <= seed < 2**63 (default 7)"),
]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


FEATURE_FLAGS = [
    ("--features", _csv, "comma-separated indicator names (default: all of " + ", ".join(DEFAULT_FEATURES)
     + ")"),
    ("--window", int, "bars per input window, L, at most 8192 (default 32)"),
    ("--horizon", int, "label horizon in bars: predict the return from t to t+h (default 1)"),
]
MODEL_FLAGS = [
    ("--d-model", int, "transformer width (default 64)"),
    ("--heads", int, "attention heads; must divide --d-model (default 4)"),
    ("--layers", int, "encoder layers (default 2)"),
    ("--dropout", float, "dropout rate (default 0.1)"),
]
OPTIM_FLAGS = [
    ("--batch-size", int, "samples per optimizer step, at most 65536 (default 256)"),
    ("--lr", float, "peak learning rate of AdamW after warm-up, in (0, 1] (default 1e-3)"),
    ("--seed", int, "seed of model init, dropout and data order, 0 <= seed < 2**63 (default 0)"),
]
RUNTIME_FLAGS = [
    ("--num-workers", int, "DataLoader worker processes; 0 loads in the main process (default 0)"),
    ("--device", str, "auto, cpu, cuda or cuda:N (default auto: cuda when available)"),
    ("--models-dir", str, "where checkpoints go (default models)"),
    ("--cache-dir", str, "feature cache folder (default cache)"),
    ("--prep-workers", int, "threads preparing features (default 2)"),
    ("--checkpoint-every", int, "also checkpoint every N optimizer steps; 0 = only at epoch end "
                                "(default 0)"),
    ("--keep", int, "how many periodic checkpoints to keep, at least 2; interrupted ones and "
                    "best.pth are never deleted (default 3)"),
]
# What a resumed run takes from the checkpoint; a different value on the command line is an error.
FIXED_ON_RESUME = [f for f, _, _ in DATA_FLAGS[DATA_LOCATION:] + FEATURE_FLAGS + MODEL_FLAGS + OPTIM_FLAGS]


def add_flags(p: argparse.ArgumentParser, groups: list[tuple[str, list]]) -> None:
    """Add flag groups; every value defaults to None ("not given")."""
    for title, flags in groups:
        g = p.add_argument_group(title)
        for flag, typ, help_ in flags:
            g.add_argument(flag, type=typ, default=None, help=help_)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration keys given on the command line (None = not given)."""
    keys = Config.field_sections()
    return {k: v for k, v in vars(args).items() if k in keys and v is not None}


def add_common_switches(p: argparse.ArgumentParser) -> None:
    """Switches of both commands."""
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="skip invalid OHLCV files with a warning instead of stopping")
    p.add_argument("--use-adj-close", action="store_true", default=None,
                   help="use an 'Adj Close' column as the close price when a file has one")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or periodic progress lines")
