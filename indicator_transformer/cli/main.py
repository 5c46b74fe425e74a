"""``indicator-transformer <command>``: the tool's umbrella command.

Examples::

    indicator-transformer features                    # built-in features and the transforms
    indicator-transformer features --talib            # every TA-Lib function, by group
    indicator-transformer features --function MACD    # one function: inputs, parameters, outputs
    indicator-transformer config --show --config run.toml --lr 3e-4 > effective.toml
    indicator-transformer evaluate --checkpoint models/best.pth --data-dir ~/new_ohlcv

A subcommand is one entry of ``COMMANDS``: its help, a function adding its flags and its
``run(args)``; adding one touches nothing else. Errors exit 2 with one
``error:`` line, like every command of the project.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, build_config, load_toml, to_toml, toml_value
from ..errors import UserError
from ..shutdown import SignalHandler
from .common import print_table, run_command
from .options import add_setting_flags, flag_values


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _config_from(args: argparse.Namespace) -> Config:
    """Defaults <- --config file <- flags, as train builds it."""
    if args.config is not None and not args.config.strip():
        raise UserError("--config: expected a TOML file name, got an empty string")
    return build_config(load_toml(args.config) if args.config is not None else {}, flag_values(args),
                        args.config)


# --------------------------------------------------------------------------- features
def _configure_features(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--talib", action="store_true",
                      help="list every TA-Lib function by group, with its inputs, parameters "
                           "(default values) and outputs")
    what.add_argument("--function", metavar="NAME",
                      help="show one TA-Lib function (RSI, MACD...) and a declaration of it")
    p.add_argument("--config", metavar="FILE", help="also list the features this TOML file declares")


def _run_features(args: argparse.Namespace) -> int:
    from ..data import features as F  # TA-Lib loads here

    if args.function is not None:
        _print_function(F.describe_function(args.function))
        return 0
    if args.talib:
        for group, names in F.talib_functions().items():
            print(f"== {group}")
            rows = []
            for name in names:
                d = F.describe_function(name)
                params = ", ".join(f"{k}={v}" for k, (v, _) in d["parameters"].items()) or "-"
                rows.append([name, ", ".join(d["inputs"]), ", ".join(d["outputs"]), params])
            print_table(["function", "inputs", "outputs", "parameters (default)"], rows)
            print()
        print("Declare one in the config file (see `indicator-transformer features --function NAME`).")
        return 0
    from ..config import DEFAULT_FEATURES

    print(f"Built-in features ({len(F.FEATURES)}; the default --features, in this order):")
    print_table(["name", "family", "inputs", "formula"],
                [[n, f.family, ", ".join(f.inputs), f.doc] for n, f in F.FEATURES.items()
                 if n in DEFAULT_FEATURES])
    if args.config is not None:
        cfg = _config_from(args)
        print(f"\nDeclared in {args.config} (custom_features):")
        known = F.registry(cfg.features.custom_features)
        rows = [[d["name"], "used" if d["name"] in cfg.features.features else "not in features",
                 ", ".join(d["inputs"]), known[d["name"]].doc] for d in cfg.features.custom_features]
        print_table(["name", "", "inputs", "formula"], rows) if rows else print("(none)")
    print("\nTransforms of declared features (transform = \"...\"), each makes a TA-Lib output scale-free:")
    print_table(["transform", "value", "for"], [[n, t.doc, t.use] for n, t in F.TRANSFORMS.items()])
    print(f"\nDeclare your own in the TOML config (the window of zscore is 2 to {F.ZSCORE_MAX_WINDOW}):\n"
          "  [features]\n"
          "  custom_features = [\n"
          "      {name = \"rsi_7\", fn = \"RSI\", params = {timeperiod = 7}, inputs = [\"close\"], "
          "transform = \"osc100\"},\n"
          "      {name = \"macd_h\", fn = \"MACD\", output = \"macdhist\", transform = \"div_close\"},\n"
          "      {name = \"obv_z\", fn = \"OBV\", inputs = [\"close\", \"volume\"], transform = \"zscore\", "
          "window = 50},\n"
          "  ]\n"
          "Omitted params take TA-Lib's defaults and omitted inputs the function's own; a function with "
          "several outputs needs 'output'.\nDeclared features join the default list unless --features "
          "names exactly which to use (built-in and declared names mixed).\n"
          "`indicator-transformer features --talib` lists the TA-Lib functions, `--function RSI` shows one.")
    return 0


def _print_function(d: dict) -> None:
    from ..data import features as F

    print(f"{d['name']}: {d['display_name']} ({d['group']})")
    print(f"inputs: {', '.join(d['inputs'])}")
    if d["parameters"]:
        print("parameters:")
        print_table(["  name", "type", "default"],
                    [[f"  {k}", typ, str(v)] for k, (v, typ) in d["parameters"].items()])
    else:
        print("parameters: none")
    print(f"outputs: {', '.join(d['outputs'])}" + (" (choose one with output = \"...\")"
                                                   if len(d["outputs"]) > 1 else ""))
    example = {"name": d["name"].lower() + "_1", "fn": d["name"], "params": {k: v for k, (v, _) in
                                                                             d["parameters"].items()}}
    if any(c not in F.OHLCV_COLUMNS for c in d["inputs"]):
        example["inputs"] = ["close", "volume"][: len(d["inputs"])]
    if len(d["outputs"]) > 1:
        example["output"] = d["outputs"][-1]
    # A hint, checked: TA-Lib's own flags say which outputs are on the price scale or candlesticks.
    first = ["ratio_close"] if "Output scale same as input" in d["flags"] else \
        ["pct"] if "Output is a candlestick" in d["flags"] else []
    for transform in (*first, "div_close", "osc100", "none", "zscore"):
        candidate = {**example, "transform": transform, **({"window": 50} if transform == "zscore" else {})}
        try:
            F.declare([candidate])
        except UserError:
            continue
        print(f"a declaration that passes the checks (pick the transform that fits the output):\n"
              f"  {toml_value(candidate)}")
        return
    print("no transform makes this function scale-free on its default inputs: it cannot be declared as is")


# --------------------------------------------------------------------------- config
def _configure_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", action="store_true",
                   help="print the effective configuration (defaults, --config file and flags merged) as "
                        "TOML, which --config reads back (the default action)")
    add_setting_flags(p)


def _run_config(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    sys.stdout.write(to_toml(cfg))
    return 0


# The baselines, each in one line: the same list in README.md ("What the report says").
BASELINES_HELP = ("Baselines: zero (predicts a return of 0); train_mean (the pooled training-label mean); "
                  "symbol_mean (each symbol's own training mean: what the model outputs when it learnt "
                  "nothing under per-symbol normalisation); momentum (the last h-bar return, continued); "
                  "ridge (linear, on the flattened window, alpha chosen on validation); lightgbm (gradient-"
                  "boosted trees on window summaries, early-stopped on validation, seeded with --seed).")


# --------------------------------------------------------------------------- shared by predict / evaluate
def _add_data_location(p: argparse.ArgumentParser) -> None:
    """--data-dir | --data-file, --cache-dir and --skip-bad-files for a command on a checkpoint."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", metavar="DIR", help="folder of OHLCV files (default: the "
                                                         "checkpoint's training data)")
    where.add_argument("--data-file", metavar="FILE", help="one panel file (long format, a symbol column)")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder (default cache)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="skip invalid OHLCV files with a warning instead of stopping")


def _checkpoint_config(args: argparse.Namespace, state: dict, path: Path, **more: object) -> Config:
    """The checkpoint's configuration with this command's data location, cache folder and ``more``
    (each validated and named by its flag): the data the checkpoint recorded unless --data-dir or
    --data-file is given (the synthetic market when it used that). The cache folder is checked
    before any work."""
    from .common import check_folders, locate_data

    saved = Config.from_dict(state["config"], source=str(path))
    overrides: dict = {"cache_dir": args.cache_dir or "cache", "skip_bad_files": bool(args.skip_bad_files),
                       **more}
    if args.data_dir is not None or args.data_file is not None:
        overrides.update(data_dir=args.data_dir, data_file=args.data_file)
    else:
        locate_data(state, saved, overrides, path)
    cfg = saved.replace(source=str(path), origins={k: f"--{k.replace('_', '-')}" for k in overrides},
                        **overrides)
    check_folders(cfg, models=False)
    return cfg


# --------------------------------------------------------------------------- predict
def _configure_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="the trained model (any checkpoint; best.pth is the best validation model)")
    _add_data_location(p)
    p.add_argument("--out", metavar="FILE", help="write the CSV to FILE (atomically); default: standard "
                                                 "output")
    p.add_argument("--all", action="store_true",
                   help="predict at every bar with a full window, not only each symbol's latest; adds "
                        "the columns split (train, val, test, gap, unseen: where the bar fell in the "
                        "checkpoint's training, from the dates it recorded) and realised_return (the "
                        "forward return that followed, empty where the data ends)")
    p.add_argument("--baselines", action="store_true",
                   help="add one column per baseline (zero, train_mean, symbol_mean, momentum, ridge, "
                        "lightgbm) as fitted by the checkpoint's run (models/baselines.json beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.epilog = ("Writes symbol,time,predicted_return,rank: the forward return over the checkpoint's "
                "horizon predicted at each symbol's latest bar (rank 1 = highest among the symbols at "
                "that time). Features, window and normalisation come from the checkpoint. Ctrl-C stops "
                "it cleanly; exit codes as for training.")


def _run_predict(args: argparse.Namespace) -> int:
    from .common import run_with_handler

    return run_with_handler(lambda handler: _predict(args, handler))


def _predict(args: argparse.Namespace, handler: SignalHandler) -> int:
    from .. import predict as P
    from ..atomic import atomic_write_text
    from ..data.cache import FeatureCache
    from ..data.windows import Normalisation
    from ..errors import CheckpointError
    from ..run import prepare_data
    from ..training import checkpoint as ckpt

    if args.out is not None:  # before any work: a bad --out must not cost a whole preparation
        _check_output_file(args.out)
    path = Path(args.checkpoint)
    state = ckpt.load_checkpoint(path)
    cfg = _checkpoint_config(args, state, path)
    data = prepare_data(cfg, handler, FeatureCache(cfg.data.cache_dir).open(), sys.stderr,
                        not args.no_progress)
    if data.interrupted:
        return handler.exit_code
    if data.feature_names != list(state["feature_names"]):
        raise CheckpointError(f"{path}: trained on features {state['feature_names']}, the data gives "
                              f"{data.feature_names}")
    short = [s.symbol for s in data.symbols if len(s.time) < cfg.features.window]
    if short:
        print(f"note: no prediction for {len(short)} symbol(s) with fewer than {cfg.features.window} "
              f"bars after the indicator warm-up: {', '.join(short[:10])}", file=sys.stderr)
    from ..evaluate import pooled_symbols

    norm = Normalisation.from_dict(state["normalisation"])
    unseen = pooled_symbols(norm, data)
    if unseen:
        print(f"note: the checkpoint has no normalisation statistics for {len(unseen)} symbol(s), which "
              f"use the pooled ones (their predicted returns are on the pooled scale): "
              f"{', '.join(unseen[:10])}{' ...' if len(unseen) > 10 else ''}", file=sys.stderr)
    model = P.load_model(state, cfg, len(data.feature_names))
    fitted = None
    if args.baselines:
        from ..baseline_store import BaselinesUnusable, load_baselines

        try:
            fitted = load_baselines(path.parent, state)
        except BaselinesUnusable as e:
            raise UserError(f"--baselines: {e}") from None
    profile = state.get("data_profile") or {}
    if args.all and "split_dates" not in profile:
        print(f"note: {path} records no split dates (written before they were kept): the split column "
              f"says unknown", file=sys.stderr)
    rows = P.predict(model, data, norm, cfg.features.window,
                     every_bar=args.all, should_stop=lambda: handler.should_stop,
                     split_dates=profile.get("split_dates"), baselines=fitted)
    if rows is None:
        print("Prediction stopped: nothing written", file=sys.stderr)
        return handler.exit_code
    if not rows:
        raise UserError("no symbol has enough bars for one window: nothing to predict")
    times = sorted({r.time_ns for r in rows})
    if not args.all and len(times) > 1:
        import pandas as pd

        first, last = (pd.Timestamp(t, tz="UTC").isoformat() for t in (times[0], times[-1]))
        print(f"warning: the symbols' latest bars are not at one time (from {first} to {last}): the "
              f"ranks compare predictions made at different times", file=sys.stderr)
    text = P.to_csv(rows)
    if handler.should_stop:  # the last point to stop with nothing written; after it the write finishes
        print("Prediction stopped: nothing written", file=sys.stderr)
        return handler.exit_code
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write the predictions ({e.strerror or e})") from None
        print(f"Wrote {len(rows):,} prediction(s) of {len({r.symbol for r in rows})} symbol(s) to "
              f"{args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _check_output_file(out: str) -> None:
    target = Path(out)
    if not out.strip() or target.is_dir():
        raise UserError(f"--out {out!r}: expected a file name" + (", found a folder" if out.strip() else ""))
    parent = target.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not a writable folder")


# --------------------------------------------------------------------------- evaluate
def _configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="the checkpoint to evaluate (any checkpoint; best.pth is the best validation model)")
    _add_data_location(p)
    p.add_argument("--cost-bps", type=float, metavar="X",
                   help="trading cost in basis points for the strategy figures (default: the "
                        "checkpoint's cost_bps)")
    p.add_argument("--out", metavar="DIR",
                   help="report folder (new, empty, or an earlier evaluation's); default: "
                        "runs/<UTC time>-evaluate beside the checkpoint's models folder")
    p.add_argument("--all-windows", action="store_true",
                   help="score every window of the data, not only its test split, against the baselines "
                        "as fitted on the model's own training data (models/baselines.json, saved when "
                        "the run ended): for files the model never saw")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.epilog = ("Prepares the data (the checkpoint's own unless --data-dir/--data-file) through the cache "
                "with the checkpoint's features, splits it with the checkpoint's split policy, and scores "
                "the model and the baselines on the same test samples; with --all-windows every window "
                "instead, against the baselines the run saved. " + BASELINES_HELP + " Without "
                "--all-windows the baselines are fitted on this data's train/validation splits. The model "
                "uses the "
                "checkpoint's stored normalisation; symbols it has no statistics for use the pooled ones. "
                "Prints the report table (standard output) and writes summary.json, the plots and "
                "evaluate.log to the report folder, all at the end; the models folder and its "
                "evaluation.json are never written. Ctrl-C stops it with nothing written; exit codes "
                "0 done, 130/143 stopped, 2 bad input.")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .common import run_with_handler

    return run_with_handler(lambda handler: _evaluate(args, handler))


def _evaluate(args: argparse.Namespace, handler: SignalHandler) -> int:
    from .. import evaluate as E
    from ..training import checkpoint as ckpt

    path = Path(args.checkpoint)
    if args.out is not None and not args.out.strip():  # Path("") would be the current folder
        raise UserError("--out: expected a folder name, got an empty string")
    out = Path(args.out) if args.out is not None else None
    if out is not None:  # before any work, and before reading a large checkpoint
        E.check_out(out, path, "--out")
    state = ckpt.load_checkpoint(path)
    more = {} if args.cost_bps is None else {"cost_bps": args.cost_bps}
    cfg = _checkpoint_config(args, state, path, **more)
    return E.evaluate(state, cfg, E.EvaluateOptions(path, out, not args.no_progress, args.all_windows),
                      handler)


COMMANDS: dict[str, Command] = {
    "evaluate": Command("the run report (model vs baselines on the test split, plots, summary.json) for "
                        "any checkpoint, on its own data or new files "
                        "(evaluate --checkpoint P [--data-dir D] [--out DIR])",
                        _configure_evaluate, _run_evaluate),
    "predict": Command("predict each symbol's forward return at its latest bar with a trained "
                       "checkpoint (predict --checkpoint P [--data-dir D] [--out F] [--all])",
                       _configure_predict, _run_predict),
    "features": Command("list the built-in features, the transforms and the TA-Lib functions you can "
                        "declare as your own features", _configure_features, _run_features),
    "config": Command("print the effective configuration as TOML (config --show [--config F] [flags])",
                      _configure_config, _run_config),
    "walk-forward": Command("walk-forward evaluation over seeds: one training run per (fold, seed), "
                            "the out-of-sample report pooled over folds, mean +- std over seeds; the "
                            "same command continues a stopped experiment (walk-forward --folds K "
                            "--seeds 0,1,2 --test-bars N --out DIR)",
                            lambda p: _walkforward().configure(p), lambda a: _walkforward().run(a)),
    "sweep": Command("hyperparameter sweep on Optuna: every trial an ordinary run, continued bit-exactly "
                     "after a stop or a kill, on one machine or many (sweep --space space.toml --trials N "
                     "--out DIR)", lambda p: _sweep().configure(p), lambda a: _sweep().run(a)),
}


def _sweep():  # noqa: ANN202 - the module, imported when the command is built
    from . import sweep

    return sweep


def _walkforward():  # noqa: ANN202 - the module, imported when the command is built
    from . import walkforward

    return walkforward


def parser() -> argparse.ArgumentParser:
    """The command-line interface: one subparser per entry of COMMANDS."""
    p = argparse.ArgumentParser(
        prog="indicator-transformer",
        description="The indicator transformer's tools. Training and resuming are "
                    "train_indicator_transformer / resume_training.",
        epilog="Exit codes: 0 done, 130/143 stopped by Ctrl-C/SIGTERM (predict, evaluate), 2 bad "
               "input or usage, 1 anything else. "
               "`indicator-transformer COMMAND --help` describes each command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sp = sub.add_parser(name, help=command.help, description=command.help[0].upper() + command.help[1:]
                            + ".")
        command.configure(sp)
        sp.set_defaults(run=command.run)
    return p


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except BrokenPipeError:  # `indicator-transformer features --talib | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    # OpenMP threads that spin while waiting (the default) make LightGBM's 2-thread fit of the
    # evaluate baselines take 0.7 s per round instead of 5 ms when other processes share the cores
    # (measured: 23 s against 0.2 s for 33 rounds at load 5 on 2 cores). Waiting passively
    # changes no result. Read once, when torch / LightGBM load their OpenMP runtime: set it first.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return run_command(parser(), _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
