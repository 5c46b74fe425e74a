#!/usr/bin/env python3
"""The walk-forward verdict on two markets: K=4 folds x 3 seeds with the default settings.

    python benchmarks/bench_walk_forward_report.py                       # both markets
    python benchmarks/bench_walk_forward_report.py --work-dir wf_bench    # kept: a rerun reports at once
    python benchmarks/bench_walk_forward_report.py --quick                # 2 folds x 2 seeds, small runs

* built-in  the synthetic market (16 symbols x 2,500 daily bars), --test-bars 250
* public    S&P 500, NASDAQ (1999-2018) and GOOG (2004-2013), daily, from data inside PyPI wheels
            (benchmarks/public_ohlcv.py), --test-bars 250: files covering different years, so the
            folds are placed per symbol

Each is the command a user types, ``indicator-transformer walk-forward --folds 4 --seeds 0,1,2
--test-bars 250``; the figures are read back from its summary.json (pooled out of sample, mean
+- std over seeds, per fold, the verdict). With ``--work-dir`` the experiments are kept, and the
same command continues them (done runs are not retrained). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _experiment(work: Path, name: str, data: list[str], exp: list[str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "indicator_transformer", "walk-forward", *data, *exp, "--no-progress",
            "--out", name]
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-3000:]}")
    seconds = time.perf_counter() - t
    doc = json.loads((work / name / "summary.json").read_text())
    agg = doc["over_seeds"]
    metric = agg["metric"]
    runs_s = 0.0  # every run's own time (each of its run folders: a continued run has several)
    for path in (work / name / "runs").glob("*/runs/*/summary.json"):
        runs_s += float(json.loads(path.read_text()).get("durations", {}).get("total_s") or 0.0)
    return {"command": " ".join(["indicator-transformer walk-forward", *data, *exp]),
            "seconds": round(seconds, 1), "runs_seconds": round(runs_s, 1), "headline": agg["headline"],
            "metric": metric,
            "seeds": agg["seeds"], "predictors": agg["predictors"], "model_against": agg["model_against"],
            "per_fold": doc["per_fold"], "verdict": doc["verdict"],
            "calendar": "per-symbol" if any("=" in str(f["test_start"]) for f in doc["per_fold"])
            else "common"}


def pm(s: dict[str, Any]) -> str:
    """mean +- std, or '-' where undefined (null in the JSON)."""
    if s.get("mean") is None:
        return "-"
    return f"{s['mean']:+.4f}" + (f" +- {s['std']:.4f}" if s.get("std") is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 folds x 2 seeds of small runs (a trial)")
    ap.add_argument("--work-dir", default=None, help="keep the experiments (and the cache) here")
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    exp = ["--folds", "4", "--seeds", "0,1,2", "--test-bars", "250"]
    small: list[str] = []
    if a.quick:
        exp = ["--folds", "2", "--seeds", "0,1", "--test-bars", "100"]
        small = ["--epochs", "1", "--d-model", "16", "--heads", "2", "--layers", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work_dir) if a.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(BENCH / "public_ohlcv.py"), "--out", str(work / "public_ohlcv")],
                       check=True, capture_output=True)
        result = {"benchmark": "walk_forward_report", "quick": a.quick, "markets": {
            "built-in": _experiment(work, "wf_builtin" + ("_quick" if a.quick else ""),
                                    ["--symbols", "6", "--bars", "900"] if a.quick else [], [*exp, *small]),
            "public": _experiment(work, "wf_public" + ("_quick" if a.quick else ""),
                                  ["--data-dir", "public_ohlcv"], [*exp, *small])}}
    for name, m in result["markets"].items():
        print(f"{name}: {m['command']} ({m['seconds']} s, folds on the {m['calendar']} calendar)")
        for p, v in m["predictors"].items():
            print(f"  {p:<12} {m['headline']} {pm(v[m['metric']])}   MSE/mean {pm(v['mse_ratio'])}")
        print(f"  {m['verdict']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
