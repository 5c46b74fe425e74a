"""Flags shared by train_indicator_transformer.py, resume_training.py and ``indicator-transformer config``.

One naming rule: every configuration key has a flag of the same name, ``foo_bar`` / ``--foo-bar``
(``tests/test_cli_main.py`` checks every field of every section). Every flag defaults to None so
that a TOML file (``--config``) and the built-in defaults fill what was not given; each help text
ends with the default, taken from the dataclasses so that it cannot drift. The values are checked by
config.py (its docstring lists every bound); an error names the flag it came from.

Switches that are not saved settings (``--no-progress``, ``--prepare-only``) are refused in a TOML
file with the reason (``config.SWITCHES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from typing import Any

from ..config import DEFAULT_FEATURES, Config, ConfigError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _declarations(text: str) -> list[Any]:
    """``--custom-features``: a TOML array of inline tables (or one inline table)."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"expected a TOML array of inline tables such as '[{{name = \"rsi_7\", fn = \"RSI\", params = "
            f"{{timeperiod = 7}}, inputs = [\"close\"], transform = \"osc100\"}}]' ({e})") from None
    value = [value] if isinstance(value, dict) else value
    from ..data.features import declare

    try:
        # The canonical form, so that resume compares it with the checkpoint's as equal settings.
        return declare(value) if isinstance(value, list) else value
    except ConfigError:
        return value  # checked again with the rest, where the error names this flag


# (flag, type, help). Grouped by what resume may change. ``bool`` flags come in pairs
# (--use-adj-close / --no-use-adj-close) so that a command line can undo a config file.
# The first DATA_LOCATION entries say where the data is: a resume may point them elsewhere.
DATA_LOCATION = 2
DATA_FLAGS = [
    ("--data-dir", str, "folder of OHLCV files, one per symbol (CSV or Parquet) (default: not set, the "
                        "built-in synthetic market)"),
    ("--data-file", str, "one panel file (CSV or Parquet) holding many symbols in long format: a "
                         "symbol column (symbol, ticker, instrument, asset or code) beside date/time "
                         "and OHLCV (default: not set)"),
    ("--symbols", int, "synthetic market: number of symbols"),
    ("--bars", int, "synthetic market: bars per symbol"),
    ("--data-seed", int, "synthetic market: generator seed, 0 <= seed < 2**63"),
    ("--use-adj-close", bool, "use an 'Adj Close' column as the close price when a file has one"),
]
FEATURE_FLAGS = [
    ("--features", _csv, "comma-separated feature names: built-in ones (`indicator-transformer "
                         "features` lists them) and names declared in custom_features (default: all of "
                         + ", ".join(DEFAULT_FEATURES) + ", plus every declared feature)"),
    ("--custom-features", _declarations,
     "your own TA-Lib features, a TOML array of inline tables, usually written in the --config file: "
     "'[{name = \"rsi_7\", fn = \"RSI\", params = {timeperiod = 7}, inputs = [\"close\"], transform = "
     "\"osc100\"}]'; transforms: ratio_close, div_close, osc100, pct, log_change, zscore (with window "
     "= N), none (default: none declared)"),
    ("--window", int, "bars per input window, L, at most 8192"),
    ("--horizon", int, "label horizon in bars: predict the return from t to t+h"),
    ("--train-frac", float, "fraction of the sample end times, oldest first, used for training "
                            "(per symbol under --split per-symbol)"),
    ("--val-frac", float, "the next fraction, for validation (the rest is the test split); "
                          "train_frac + val_frac < 1"),
    ("--split", str, "how train/val/test are cut in time: global (one pair of cut-offs for every "
                     "symbol: a panel sharing one calendar), per-symbol (each symbol's own history: "
                     "files covering different years), auto (global unless it leaves a symbol without "
                     "enough windows in a split; the choice and its reason are printed)"),
    ("--val-start", str, "date cut: validation starts at the first bar at or after this UTC date or time "
                         "(2016-01-01, 2016-01-01T09:30), or per symbol GOOG=2012-06-01,SPX=2017-01-01 "
                         "with *=DATE for the others; needs --test-start. With date cuts the fractions and "
                         "--split do not apply; the purge gaps of --horizon bars stay (default: not set)"),
    ("--test-start", str, "date cut: the test split starts at the first bar at or after this date (same "
                          "forms as --val-start); alone, validation is the last val_frac / (train_frac + "
                          "val_frac) of each symbol's windows before it (default: not set)"),
    ("--train-start", str, "date cut: training windows end at or after this date (same forms as "
                           "--val-start; a rolling training window); needs --test-start (default: not "
                           "set: from the first full window)"),
    ("--test-end", str, "date cut: the test split's windows end before this date (same forms; the next "
                        "walk-forward fold's test period); needs --test-start (default: not set: to the "
                        "last bar with a label)"),
    ("--normalise", str, "feature and label statistics, fitted on training rows only: per-symbol "
                         "(assets of different price, volatility and bar frequency train together) "
                         "or global (pooled over all symbols)"),
]
MODEL_FLAGS = [
    ("--d-model", int, "transformer width"),
    ("--heads", int, "attention heads; must divide --d-model"),
    ("--layers", int, "encoder layers"),
    ("--dropout", float, "dropout rate, in [0, 1)"),
    ("--ff-mult", int, "feed-forward width as a multiple of --d-model, 1 to 64"),
]
OPTIM_FLAGS = [
    ("--batch-size", int, "samples per optimizer step, at most 65536"),
    ("--lr", float, "peak learning rate of AdamW after warm-up, in (0, 1]"),
    ("--weight-decay", float, "AdamW weight decay, in [0, 1]"),
    ("--warmup-steps", int, "optimizer steps of linear learning-rate warm-up"),
    ("--grad-clip", float, "clip the gradient norm to this value, > 0"),
    ("--seed", int, "seed of model init, dropout and data order, 0 <= seed < 2**63"),
]
RUNTIME_FLAGS = [
    ("--num-workers", int, "DataLoader worker processes; 0 loads in the main process"),
    ("--device", str, "auto (cuda when available), cpu, cuda or cuda:N"),
    ("--models-dir", str, "where checkpoints go"),
    ("--cache-dir", str, "feature cache folder"),
    ("--prep-workers", int, "parallel workers preparing features (processes on Linux from 32 "
                            "symbols, otherwise threads)"),
    ("--checkpoint-every", int, "also checkpoint every N optimizer steps; 0 = only at epoch end"),
    ("--keep", int, "how many periodic checkpoints to keep, at least 2; interrupted ones and "
                    "best.pth are never deleted"),
    ("--skip-bad-files", bool, "skip invalid OHLCV files with a warning instead of stopping"),
    ("--runs-dir", str, "where run folders (train.log, metrics.csv, summary.json, plots) go (default: "
                        "runs, beside --models-dir)"),
    ("--cost-bps", float, "trading cost in basis points per unit traded, charged in the report's "
                          "strategy figures (printed with them)"),
    # A runtime setting like --device: a resume may change it (the trainer then says that the
    # continuation is no longer bit for bit the uninterrupted run); stored in every checkpoint.
    ("--precision", str, "arithmetic of the training steps: fp32, or bf16 (autocast: matrix products "
                         "in bfloat16, weights, loss and optimizer in fp32; validation and test always "
                         "fp32). bf16 pays only on hardware with native bfloat16 (AVX512-BF16/AMX CPUs, "
                         "recent GPUs); elsewhere it is slower"),
    ("--threads", int, "intra-op threads of training, 0 = torch's default (the cores, or "
                       "OMP_NUM_THREADS); 1 is much faster on a machine busy with other work. A resume "
                       "with another thread count is not bit for bit the uninterrupted run"),
]
# train's --epochs (resume has its own, which counts more epochs from the checkpoint).
EPOCHS_FLAG = ("--epochs", int, "training epochs")
# What a resumed run takes from the checkpoint; a different value on the command line is an error.
FIXED_ON_RESUME = [f for f, _, _ in DATA_FLAGS[DATA_LOCATION:] + FEATURE_FLAGS + MODEL_FLAGS + OPTIM_FLAGS]


def default_text(key: str) -> str:
    """How help shows the default of configuration key ``key``."""
    section = Config.field_sections()[key]
    value = getattr(getattr(Config(), section), key)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _help(flag: str, text: str, note: str | None) -> str:
    key = flag[2:].replace("-", "_")
    if note is not None:
        text = f"{text} (default: {note}; a new run's: {default_text(key)})"
    elif "default" not in text:
        text = f"{text} (default {default_text(key)})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_flags(p: argparse.ArgumentParser, groups: list[tuple]) -> None:
    """Add flag groups ``(title, flags)`` or ``(title, flags, note)``; every value defaults to None
    ("not given"). ``note`` replaces the default in the help (resume: "the checkpoint's")."""
    for title, flags, *note in groups:
        g = p.add_argument_group(title)
        for flag, typ, help_ in flags:
            text = _help(flag, help_, note[0] if note else None)
            if typ is bool:
                g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                g.add_argument(flag, type=typ, default=None, help=text)


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """``--config`` and a flag for every setting: what train and ``config --show`` accept."""
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings, keys named like the flags (d_model = 64), flat or in "
                        "sections [data] [features] [model] [train]; flags override it")
    add_flags(p, [("data", DATA_FLAGS), ("features", FEATURE_FLAGS), ("model", MODEL_FLAGS),
                  ("optimisation", [EPOCHS_FLAG, *OPTIM_FLAGS]), ("runtime", RUNTIME_FLAGS)])


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration keys given on the command line (None = not given)."""
    keys = Config.field_sections()
    return {k: v for k, v in vars(args).items() if k in keys and v is not None}


def add_common_switches(p: argparse.ArgumentParser) -> None:
    """Switches of both commands that are not settings (settings are flags of the groups)."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or periodic progress lines")
    p.add_argument("--no-plots", action="store_true",
                   help="write no PNG plots into the run folder (about a second less at the end of a "
                        "run; train.log, metrics.csv and summary.json are still written)")


def setting_keys() -> list[str]:
    """Every configuration key, in section order (what has a flag)."""
    return [f.name for klass in Config.section_classes().values() for f in dataclasses.fields(klass)]
