"""Interrupt: a real SIGINT mid-epoch to a real training process, ours vs Lightning (two ways).

    python benchmarks/bench_interrupt.py                   # --num-workers 0 and 2, 2 repeats
    python benchmarks/bench_interrupt.py --quick --json /tmp/intr.json

Each child trains the small synthetic market (common.SUB_*: 4 x 1500 bars, batch 256, default
model) from a warm cache, started with SIGINT at its default, and pauses after optimizer step P,
the middle of epoch 2 (ours: ``INDICATOR_TRANSFORMER_PAUSE_AT=train_step:P``; Lightning: the
``PauseAt`` callback of lightning_model.py). On ``PAUSED`` it gets one real SIGINT and we time
until it has exited. Then: exit code; optimizer steps lost = P minus the global step of the newest
checkpoint on disk; processes left = DataLoader workers (seen while paused) still alive after the
exit. Variants, interleaved per repeat: ours (default settings), Lightning with its default
``ModelCheckpoint`` (end of every epoch), Lightning with ``OnExceptionCheckpoint`` added.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import common

VARIANTS = ("ours", "lightning", "lightning_on_exception")


def variant_argv(variant: str, cache: Path, out: Path, workers: int, pause: int) -> list[str]:
    nw = ["--num-workers", str(workers)]
    if variant == "ours":
        return common.ours_argv(cache, out / "models", *nw, epochs=3)
    extra = ["--on-exception"] if variant == "lightning_on_exception" else []
    return common.lightning_argv(cache, out, *nw, "--pause-at", str(pause), *extra, epochs=3)


def interrupt_once(variant: str, cache: Path, out: Path, workers: int, pause: int) -> dict[str, Any]:
    """One child, paused after step ``pause``, stopped by one SIGINT."""
    out.mkdir(parents=True)
    env = common.child_env(f"train_step:{pause}" if variant == "ours" else None)
    child = common.Child(variant_argv(variant, cache, out, workers, pause), env, out)
    if child.wait_for(f"PAUSED train_step {pause}") is None:
        code = child.finish()
        return {"failure": f"never paused (exit {code}):\n{child.tail()}"}
    workers_seen = child.descendants()
    t0 = time.perf_counter()
    os.kill(child.proc.pid, signal.SIGINT)
    code = child.finish()
    exit_s = time.perf_counter() - t0
    time.sleep(0.2)  # a worker killed with its parent needs a moment to be reaped
    held = common.newest_step(out)
    return {
        "exit_s": exit_s if code is not None else None,
        "exit_code": code,
        "steps_done": pause,
        "steps_held": held,
        "steps_lost": pause - (held or 0),
        "processes_left": sum(common.alive(pid) for pid in workers_seen),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failure" not in r]
    return {
        "exit_s": common.stats([r["exit_s"] for r in ok if r["exit_s"] is not None]),
        "steps_lost": common.stats([r["steps_lost"] for r in ok]),
        "exit_codes": sorted({r["exit_code"] for r in ok}, key=str),
        "processes_left": max((r["processes_left"] for r in ok), default=None),
        "failures": [r["failure"] for r in runs if "failure" in r],
        "runs": len(runs),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = common.warm_cache(work)
    spe = common.steps_per_epoch(work)
    pause = spe + spe // 2  # mid epoch 2: Lightning's default checkpoint holds epoch 1
    result: dict[str, Any] = {
        **common.result_header(),
        "setup": {
            **common.sub_market(),
            "steps_per_epoch": spe,
            "pause_step": pause,
            "repeats": args.repeats,
        },
        "workers": {},
    }
    for workers in args.workers:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for variant in VARIANTS:
                one = interrupt_once(variant, cache, work / f"{variant}_nw{workers}_{r}", workers, pause)
                runs[variant].append(one)
                print(
                    f"nw={workers} run {r + 1} {variant}: "
                    + (
                        one["failure"]
                        if "failure" in one
                        else f"exit {one['exit_code']} after {one['exit_s']:.3f} s, lost {one['steps_lost']} "
                        f"steps, {one['processes_left']} processes left"
                    ),
                    flush=True,
                )
        summary = {v: summarise(rs) for v, rs in runs.items()}
        for v in VARIANTS[1:]:
            summary[v]["ratio_exit_s"] = common.paired_ratios(
                [r.get("exit_s") or 0 for r in runs["ours"]], [r.get("exit_s") or 0 for r in runs[v]]
            )
        result["workers"][str(workers)] = summary
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="default 2 (quick 1)")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2])
    p.add_argument("--json", default=None)
    p.add_argument("--keep-work", action="store_true")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return common.run_area(args, "bench_interrupt_", run, keep=args.keep_work)


if __name__ == "__main__":
    sys.exit(main())
