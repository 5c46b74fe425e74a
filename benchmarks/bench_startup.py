"""Start-up: process start -> first optimizer step, fresh and resumed, ours vs Lightning.

    python benchmarks/bench_startup.py --json /tmp/startup.json

Wall time from ``Popen`` to the ``PAUSED train_step <k+1>`` line of a child paused after its first
optimizer step (k = 0 fresh, k = the checkpoint's step resumed), on the small synthetic market
(common.SUB_*) with a warm feature cache: interpreter start, imports, reading the cache, building
the model and the loader, loading the checkpoint when resuming, and one step. The checkpoints come
from one untimed interrupted run of each (bench_resume.cut_*). Repeats are interleaved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import common
from bench_resume import cut_lightning, cut_ours


def time_to_step(argv: list[str], step: int, cwd: Path, ours: bool) -> float | None:
    """Popen -> ``PAUSED train_step <step>``; then SIGINT (the child saves and exits)."""
    child = common.Child(argv, common.child_env(f"train_step:{step}" if ours else None), cwd)
    t = child.wait_for(f"PAUSED train_step {step}")
    if t is not None:
        os.kill(child.proc.pid, signal.SIGINT)
    child.finish()
    return None if t is None else t - child.start


def one_round(
    cache: Path, work: Path, r: int, ours_ckpt: Path, pl_ckpt: Path, k: int
) -> dict[str, float | None]:
    """One timed child of each kind, each in a fresh folder."""
    resumed = work / f"ours_resumed_{r}"
    shutil.copytree(ours_ckpt.parent.parent, resumed)  # models/ and runs/: the run folder continues
    out = {
        "ours_fresh": time_to_step(
            common.ours_argv(cache, work / f"ours_fresh_{r}" / "models"), 1, work, True
        ),
        "lightning_fresh": time_to_step(
            common.lightning_argv(cache, work / f"pl_fresh_{r}", "--pause-at", "1"), 1, work, False
        ),
        "ours_resumed": time_to_step(
            [
                sys.executable,
                str(common.RESUME_SCRIPT),
                "--models-dir",
                str(resumed / "models"),
                "--no-progress",
                "--no-plots",
            ],
            k + 1,
            work,
            True,
        ),
        "lightning_resumed": time_to_step(
            common.lightning_argv(
                cache, work / f"pl_resumed_{r}", "--resume", str(pl_ckpt), "--pause-at", str(k + 1)
            ),
            k + 1,
            work,
            False,
        ),
    }
    print(
        f"round {r + 1}: " + ", ".join(f"{n} {'-' if v is None else f'{v:.2f} s'}" for n, v in out.items()),
        flush=True,
    )
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = common.warm_cache(work)
    spe = common.steps_per_epoch(work)
    k = spe + spe // 2
    ours_ckpt, pl_ckpt = cut_ours(cache, work / "ours_cut", k), cut_lightning(cache, work / "pl_cut", k)
    rounds = [one_round(cache, work, r, ours_ckpt, pl_ckpt, k) for r in range(args.repeats)]
    series = {name: [x[name] for x in rounds if x[name] is not None] for name in rounds[0]}
    return {
        **common.result_header(),
        "setup": {
            **common.sub_market(),
            "resume_step": k,
            "repeats": args.repeats,
        },
        "seconds": {name: common.stats(v) for name, v in series.items()},
        "ratio_fresh": common.paired_ratios(series["ours_fresh"], series["lightning_fresh"]),
        "ratio_resumed": common.paired_ratios(series["ours_resumed"], series["lightning_resumed"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="default 2 (quick 1)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return common.run_area(args, "bench_startup_", run)


if __name__ == "__main__":
    sys.exit(main())
