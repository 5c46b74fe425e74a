"""Tune the default training settings: run candidate settings as real training runs, print one table.

    python benchmarks/tune_defaults.py --list                     # the candidates and their flags
    python benchmarks/tune_defaults.py                            # every candidate, seed 0
    python benchmarks/tune_defaults.py --only default,small --seeds 0,1,2 --markdown

Each candidate is ``train_indicator_transformer.py --no-progress`` plus its flags, started as a
subprocess on the built-in synthetic market, one at a time (the machine has 2 cores), in its own
``--models-dir`` under a temporary folder; candidates with the same features and horizon share one
``--cache-dir`` so the features are prepared once. From each run's ``models/evaluation.json`` we read:

* ``history``: the per-epoch validation loss and IC; the candidate is judged on the best epoch's
  validation loss (the trainer evaluates the test split with that epoch's checkpoint, best.pth),
* ``test`` and ``baselines``: pooled test IC and MSE ratio (MSE / MSE of the training mean) of the
  model and of ridge and LightGBM on exactly the same samples,
* ``report``: the cross-sectional IC (mean over dates of the per-date IC).

Choose on validation; the test columns are there to report, not to choose by. Wall seconds include
start-up, feature preparation (first run of a cache only), training, baselines and the report, i.e.
what a user waits for; they are inflated when other processes share the cores (printed: load average).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "train_indicator_transformer.py"

# Name -> flags added to the default command. "default" is the configuration as it is today; the
# others change one or two settings at a time (the order below is the order they were tried in).
CANDIDATES: dict[str, list[str]] = {
    "default": [],
    "lr2e-3": ["--lr", "2e-3"],
    "lr3e-3": ["--lr", "3e-3"],
    "ep10": ["--epochs", "10"],
    "w16": ["--window", "16"],
    "w64": ["--window", "64"],
    "d32": ["--d-model", "32"],
    "d32-l1": ["--d-model", "32", "--layers", "1"],
    "d64-l1": ["--layers", "1"],
    "drop0": ["--dropout", "0"],
    "drop0.2": ["--dropout", "0.2"],
    "wd0.1": ["--weight-decay", "0.1"],
    "b512-lr2e-3": ["--batch-size", "512", "--lr", "2e-3"],
    "d32-l1-lr2e-3": ["--d-model", "32", "--layers", "1", "--lr", "2e-3"],
    "d32-l1-ep10": ["--d-model", "32", "--layers", "1", "--epochs", "10"],
    "d32-l1-w16-ep10": ["--d-model", "32", "--layers", "1", "--window", "16", "--epochs", "10"],
    "d32-l1-ep10-lr2e-3": ["--d-model", "32", "--layers", "1", "--epochs", "10", "--lr", "2e-3"],
    "d32-l1-ep12": ["--d-model", "32", "--layers", "1", "--epochs", "12"],
    "d32-l2-w16-ep10": ["--d-model", "32", "--window", "16", "--epochs", "10"],
    "d32-l1-w64": ["--d-model", "32", "--layers", "1", "--window", "64"],
    "d32-l1-drop0.2": ["--d-model", "32", "--layers", "1", "--dropout", "0.2"],
    "d32-l1-wd0.1": ["--d-model", "32", "--layers", "1", "--weight-decay", "0.1"],
    "d32-l1-b512-lr2e-3": ["--d-model", "32", "--layers", "1", "--batch-size", "512", "--lr", "2e-3"],
    "d32-l1-drop0": ["--d-model", "32", "--layers", "1", "--dropout", "0"],
    "returns-only": ["--features", "ret_1,ret_5,ret_10,ret_20,hl_range,body,rsi_14,macd_hist,volume_z"],
}


@dataclass
class Result:
    """One finished (or failed) run."""

    candidate: str
    seed: int
    seconds: float
    exit_code: int
    best_epoch: int | None = None
    epochs: int | None = None
    val_loss: float = math.nan
    val_ic: float = math.nan
    test: dict[str, float] | None = None        # model: ic, mse_ratio, cs_ic
    baselines: dict[str, dict[str, float]] | None = None  # name -> the same figures
    error: str = ""


def cache_key(flags: list[str]) -> str:
    """Runs with the same features and horizon prepare the same cache: share it."""
    relevant = [f"{flags[i]}={flags[i + 1]}" for i in range(len(flags) - 1)
                if flags[i] in ("--features", "--horizon", "--custom-features")]
    return hashlib.sha256("|".join(relevant).encode()).hexdigest()[:10]


def figures(evaluation: dict[str, Any], name: str) -> dict[str, float]:
    """Pooled test IC, MSE ratio and cross-sectional IC of one predictor (NaN when undefined)."""
    predictor = evaluation["report"]["predictors"].get(name, {})
    pooled = predictor.get("pooled") or {}
    cross = predictor.get("cross_section") or {}

    def num(value: Any) -> float:
        return math.nan if value is None else float(value)

    return {"ic": num(pooled.get("ic")), "mse_ratio": num(pooled.get("mse_ratio")),
            "cs_ic": num(cross.get("ic_mean"))}


def read_result(candidate: str, seed: int, seconds: float, models: Path) -> Result:
    """Parse ``models/evaluation.json`` of a finished run."""
    evaluation = json.loads((models / "evaluation.json").read_text())
    history = [h for h in evaluation["history"] if h.get("val_loss") is not None]
    best = min(history, key=lambda h: h["val_loss"])
    return Result(candidate, seed, seconds, 0, best_epoch=best["epoch"], epochs=len(evaluation["history"]),
                  val_loss=best["val_loss"], val_ic=best.get("val_ic") or math.nan,
                  test=figures(evaluation, "model"),
                  baselines={b: figures(evaluation, b) for b in ("ridge", "lightgbm")})


def run_one(candidate: str, flags: list[str], seed: int, work: Path, timeout: float,
            threads: int | None) -> Result:
    """One training run as a subprocess in its own models folder; the cache is shared by key.
    ``threads`` sets OMP_NUM_THREADS of the child (torch and LightGBM follow it); None: inherited."""
    models = work / f"{candidate}-seed{seed}" / "models"
    cache = work / "cache" / cache_key(flags)
    command = [sys.executable, str(TRAIN_SCRIPT), "--no-progress", "--seed", str(seed),
               "--models-dir", str(models), "--cache-dir", str(cache), *flags]
    log = models.parent / "console.txt"
    models.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=models.parent,
                                  env=env, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills the child before raising
            code = -1
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return Result(candidate, seed, seconds, code, error=f"exit {code}: {tail[0]}")
    return read_result(candidate, seed, seconds, models)


def f(x: float, fmt: str) -> str:
    return "-" if x is None or math.isnan(x) else format(x, fmt)


HEADER = ("candidate", "seed", "wall s", "best ep", "val loss", "val IC", "test IC", "MSE ratio", "CS IC",
          "lgbm IC", "lgbm MSE r", "lgbm CS IC", "ridge IC", "ridge MSE r", "ridge CS IC")


def row(r: Result) -> list[str]:
    """A result as table cells."""
    if r.test is None or r.baselines is None:
        return [r.candidate, str(r.seed), f(r.seconds, ".0f"), r.error] + [""] * (len(HEADER) - 4)
    cells = [r.candidate, str(r.seed), f(r.seconds, ".0f"), f"{r.best_epoch}/{r.epochs}",
             f(r.val_loss, ".4f"), f(r.val_ic, "+.4f")]
    for figs in (r.test, r.baselines["lightgbm"], r.baselines["ridge"]):
        cells += [f(figs["ic"], "+.4f"), f(figs["mse_ratio"], ".4f"), f(figs["cs_ic"], "+.4f")]
    return cells


def table(results: list[Result], markdown: bool) -> str:
    """The results as aligned text or a Markdown table."""
    rows = [list(HEADER)] + [row(r) for r in results]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the runs (default: inherited, i.e. what a user gets); on a "
                        "loaded machine 1 can be several times faster than 2 spinning threads")
    p.add_argument("--work-dir", default=None, help="where runs go (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder afterwards")
    p.add_argument("--markdown", action="store_true", help="print the final table as Markdown")
    p.add_argument("--list", action="store_true", help="list the candidates and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen candidates for each seed, printing each row as it finishes, then the table."""
    args = parse_args(argv)
    if args.list:
        for name, flags in CANDIDATES.items():
            print(f"{name:22s} {' '.join(flags) or '(the defaults)'}")
        return 0
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"error: unknown candidate(s) {', '.join(unknown)}; --list shows them", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tune-defaults-"))
    print(f"work folder {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: list[Result] = []
    try:
        for seed in seeds:
            for name in names:
                result = run_one(name, CANDIDATES[name], seed, work, args.timeout, args.threads)
                results.append(result)
                print("  " + "  ".join(row(result)).rstrip()
                      + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        if results:
            print()
            print(table(results, args.markdown), flush=True)
        if not args.keep_work and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
