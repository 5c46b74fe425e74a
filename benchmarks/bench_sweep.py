#!/usr/bin/env python3
"""Sweeps: the sweep's overhead per trial, the work lost per interruption, and what a sweep finds.

    python benchmarks/bench_sweep.py --section overhead    # K trials vs the same runs as train commands
    python benchmarks/bench_sweep.py --section lost        # stops at random moments, steps lost each
    python benchmarks/bench_sweep.py --section quality     # a 20-trial sweep vs the default settings
    python benchmarks/bench_sweep.py --json out.json       # all three

* overhead: ``indicator-transformer sweep --trials K --pruner none`` on a warm cache, then each of
  its trials' settings again as a plain ``train_indicator_transformer.py`` run, one after the
  other (what a shell loop over hand-picked settings would run). Overhead per trial =
  (sweep - loop) / K: the study, the parent's start-up and preparation check, the report.
* lost: a sweep stopped N times at seeded random moments (SIGINT, SIGTERM, kill -9 of the sweep,
  in turn) and started again each time. For each stop: the optimizer steps its trial had done and
  the step it continued from; lost = the difference. Optuna's own answer to an interrupted trial
  (the trial failed; RetryFailedTrialCallback enqueues a copy that starts from step 0) would lose
  every step the trial had done: that column is shown beside it.
* quality: a 20-trial TPE sweep (median pruner) over lr, d_model, layers, dropout and window on
  the built-in market, against the default settings trained once with the same threads: the best
  validation loss of each (validation only: that is what the sweep selects on).

Wall times of whole commands, interpreter start included. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "train_indicator_transformer.py")
TOOL = [sys.executable, "-m", "indicator_transformer", "sweep"]
SMALL_SPACE = 'lr = {low = 1e-4, high = 1e-2, log = true}\nd_model = {choices = [16, 32]}\n'
QUALITY_SPACE = """lr = {low = 2e-4, high = 5e-3, log = true}
d_model = {choices = [16, 32, 64]}
layers = {low = 1, high = 2}
dropout = {low = 0.0, high = 0.3}
window = {low = 16, high = 64, step = 16}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t, r.stderr


def _trials(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "summary.json").read_text())["trials"]


def overhead(work: Path, trials: int, run: list[str]) -> dict[str, Any]:
    (work / "space.toml").write_text(SMALL_SPACE)
    _timed([sys.executable, TRAIN, *run, "--prepare-only"], work)  # the warm cache for all
    sweep_s, _ = _timed([*TOOL, "--space", "space.toml", "--trials", str(trials), "--pruner", "none",
                         "--sweep-seed", "0", *run, "--out", "ov"], work)
    loop = 0.0
    for t in _trials(work / "ov"):
        flags = [x for k, v in t["params"].items() for x in (f"--{k.replace('_', '-')}", str(v))]
        s, _ = _timed([sys.executable, TRAIN, *run, *flags, "--models-dir", f"loop/{t['trial']}/models",
                       "--runs-dir", f"loop/{t['trial']}/runs"], work)
        loop += s
    return {"trials": trials, "seconds": {"sweep": round(sweep_s, 2), "loop": round(loop, 2)},
            "overhead_per_trial_s": round((sweep_s - loop) / trials, 2),
            "overhead_fraction": round(sweep_s / loop - 1, 4)}


def _start(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start ``argv``; its stderr lines collect in the list as they come."""
    p = subprocess.Popen(argv, cwd=cwd, env=_env(), stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []

    def drain() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return p, lines


def lost(work: Path, stops: int, seed: int, run: list[str]) -> dict[str, Any]:
    (work / "space.toml").write_text(SMALL_SPACE)
    common = ["--space", "space.toml", "--trials", "3", "--pruner", "none", "--sweep-seed", "0", *run]
    whole, _ = _timed([*TOOL, *common, "--out", "lost_whole"], work)
    rng = random.Random(seed)
    kinds = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "kill -9": signal.SIGKILL}
    rows: list[dict[str, Any]] = []
    for i in range(stops + 1):
        p, lines = _start([*TOOL, *common, "--out", "lost"], work)
        deadline = time.monotonic() + rng.uniform(2.0, whole * 0.8)
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        kind = list(kinds)[i % len(kinds)]
        if i < stops and p.poll() is None:
            os.kill(p.pid, kinds[kind])
        p.wait()
        time.sleep(1.5)  # kill -9: the trial's process saves on its parent's death, then ends
        text = "".join(lines)
        if rows and "resumed_at_step" not in rows[-1]:  # where this start continued the last stop
            m = re.search(r"^Resuming from .*global step (\d+)", text, re.M)
            rows[-1]["resumed_at_step"] = int(m.group(1)) if m else 0
        if i < stops:
            stopped = re.findall(r"\(global step (\d+)\)\.", text)
            rows.append({"kind": kind, "stopped_at_step": int(stopped[-1]) if stopped else None})
        if p.returncode == 0:
            break
    if p.returncode != 0:
        _timed([*TOOL, *common, "--out", "lost"], work)
    for r in rows:
        r.setdefault("resumed_at_step", None)
        done = r["stopped_at_step"] is not None and r["resumed_at_step"] is not None
        r["lost_steps"] = r["stopped_at_step"] - r["resumed_at_step"] if done else None
        r["lost_steps_optuna_retry"] = r["stopped_at_step"]

    def key(out: str) -> list[tuple]:
        return [(t["trial"], t["state"], t["objective"], sorted(t["params"].items()))
                for t in _trials(work / out)]

    same = key("lost") == key("lost_whole")
    return {"stops": rows, "seed": seed, "same_trials_as_uninterrupted": same}


def quality(work: Path, trials: int, jobs: int, run: list[str]) -> dict[str, Any]:
    (work / "space.toml").write_text(QUALITY_SPACE)
    _timed([sys.executable, TRAIN, *run, "--prepare-only"], work)
    default_s, _ = _timed([sys.executable, TRAIN, *run, "--models-dir", "default/models", "--runs-dir",
                           "default/runs"], work)
    ev = json.loads((work / "default" / "models" / "evaluation.json").read_text())
    default_val = min(e["val_loss"] for e in ev["history"])
    sweep_s, _ = _timed([*TOOL, "--space", "space.toml", "--trials", str(trials), "--sweep-seed", "0",
                         "--jobs", str(jobs), *run, "--out", "q"], work)
    summary = json.loads((work / "q" / "summary.json").read_text())
    states: dict[str, int] = {}
    for t in summary["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return {"trials": trials, "jobs": jobs, "states": states, "default_best_val_loss": default_val,
            "sweep_best_val_loss": summary["best"]["val_loss"], "best_params": summary["best"]["params"],
            "best_test": summary["best"]["test"], "default_test": ev["test"],
            "importances": summary["importances"],
            "seconds": {"default": round(default_s, 1), "sweep": round(sweep_s, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=("overhead", "lost", "quality", "all"), default="all")
    ap.add_argument("--trials", type=int, default=4, help="overhead: trials (default 4)")
    ap.add_argument("--stops", type=int, default=6, help="lost: interruptions (default 6)")
    ap.add_argument("--quality-trials", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="quality: trials at once (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    threads = max(1, (os.cpu_count() or 2) // 2)
    small = ["--symbols", "8", "--bars", "1500", "--epochs", "2", "--no-progress", "--no-plots",
             "--threads", str(threads), "--checkpoint-every", "10"]
    default = ["--no-progress", "--no-plots", "--threads", str(max(1, (os.cpu_count() or 2) // a.jobs))]
    result: dict[str, Any] = {"benchmark": "sweep", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.section in ("overhead", "all"):
            result["overhead"] = r = overhead(work, a.trials, small)
            print(f"overhead: {r['trials']} trials: sweep {r['seconds']['sweep']:.1f} s, the same runs as "
                  f"train commands {r['seconds']['loop']:.1f} s: {r['overhead_per_trial_s']:+.2f} s per "
                  f"trial "
                  f"({r['overhead_fraction']:+.1%})", flush=True)
        if a.section in ("lost", "all"):
            result["lost"] = r = lost(work, a.stops, a.seed, small)
            for s in r["stops"]:
                print(f"lost: {s['kind']:8s} stopped at step {s['stopped_at_step']}, continued from "
                      f"{s['resumed_at_step']}: {s['lost_steps']} step(s) lost (Optuna's retry: "
                      f"{s['lost_steps_optuna_retry']})", flush=True)
        if a.section in ("quality", "all"):
            result["quality"] = r = quality(work, a.quality_trials, a.jobs, default)
            print(f"quality: {r['trials']} trials ({r['states']}), best validation loss "
                  f"{r['sweep_best_val_loss']:.4f} vs the default settings' "
                  f"{r['default_best_val_loss']:.4f}; "
                  f"best {r['best_params']}; {r['seconds']}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
