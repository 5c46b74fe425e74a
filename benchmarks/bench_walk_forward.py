#!/usr/bin/env python3
"""Walk-forward: the experiment (--jobs 1, --jobs 2) against the same runs from a shell loop.

    python benchmarks/bench_walk_forward.py                 # 2 folds x 2 seeds, the built-in market
    python benchmarks/bench_walk_forward.py --folds 4 --seeds 0,1,2 --epochs 3 --json out.json

Side by side, in one invocation, on one warm feature cache (prepared once first, not timed):

* loop        the plain alternative: one ``train_indicator_transformer.py`` per (fold, seed), one
              after the other, with the fold's date cuts as flags (what a shell loop would run)
* jobs 1      ``indicator-transformer walk-forward`` running the same runs one at a time
* jobs 2      the same experiment with ``--jobs 2`` (two runs at once, each on its threads)

Every variant gives each run the same ``--threads`` (the cores divided by 2), so their runs are
the same computations. The overhead of the experiment is ``jobs 1 / loop - 1`` (its own
preparation, fold table, report and the run-state checks); the speed-up ``loop / jobs 2``. Wall
times of whole commands, interpreter start included. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "train_indicator_transformer.py")


def _timed(argv: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--test-bars", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--symbols", type=int, default=16)
    ap.add_argument("--bars", type=int, default=2500)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    threads = max(1, (os.cpu_count() or 2) // 2)
    run = ["--symbols", str(a.symbols), "--bars", str(a.bars), "--epochs", str(a.epochs), "--no-progress",
           "--no-plots", "--threads", str(threads)]
    exp = ["--folds", str(a.folds), "--seeds", a.seeds, "--test-bars", str(a.test_bars), *run]
    tool = [sys.executable, "-m", "indicator_transformer", "walk-forward"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _timed([sys.executable, TRAIN, *run, "--prepare-only"], work)  # the warm cache for all
        times = {"jobs_1": _timed([*tool, *exp, "--out", "wf1"], work)}
        record = json.loads((work / "wf1" / "experiment.json").read_text())
        loop = 0.0
        for fold in record["folds"]:
            cuts = [x for k in ("train_start", "test_start", "test_end") if fold[k] is not None
                    for x in (f"--{k.replace('_', '-')}", fold[k])]
            for seed in record["settings"]["seeds"]:
                name = f"loop/fold{fold['index']}-seed{seed}"
                loop += _timed([sys.executable, TRAIN, *run, *cuts, "--seed", str(seed), "--save-predictions",
                                "--models-dir", f"{name}/models", "--runs-dir", f"{name}/runs"], work)
        times["loop"] = loop
        times["jobs_2"] = _timed([*tool, *exp, "--jobs", "2", "--out", "wf2"], work)
    runs = a.folds * len(a.seeds.split(","))
    result = {"benchmark": "walk_forward", "runs": runs, "threads_per_run": threads, "cpus": os.cpu_count(),
              "seconds": {k: round(v, 2) for k, v in times.items()},
              "overhead_jobs_1_vs_loop": round(times["jobs_1"] / times["loop"] - 1, 4),
              "speedup_jobs_2_vs_loop": round(times["loop"] / times["jobs_2"], 3)}
    print(f"{runs} runs ({a.folds} folds x {len(a.seeds.split(','))} seeds), {threads} thread(s) each, "
          f"{os.cpu_count()} cores")
    print(f"  shell loop of train commands  {times['loop']:8.1f} s")
    print(f"  walk-forward --jobs 1         {times['jobs_1']:8.1f} s  (overhead "
          f"{100 * result['overhead_jobs_1_vs_loop']:+.1f}%)")
    print(f"  walk-forward --jobs 2         {times['jobs_2']:8.1f} s  "
          f"({result['speedup_jobs_2_vs_loop']:.2f}x the loop)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
