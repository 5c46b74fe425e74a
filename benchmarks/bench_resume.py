"""Resume: is an interrupted-and-resumed run equal to the uninterrupted one, ours vs Lightning?

    python benchmarks/bench_resume.py --json /tmp/resume.json

For each side, real subprocesses on the small synthetic market (common.SUB_*), 2 epochs:
1. the uninterrupted run;
2. the same run paused after optimizer step P (mid epoch 2) and stopped by one real SIGINT
   (ours saves its interrupted checkpoint; Lightning's ``OnExceptionCheckpoint`` saves
   ``on_exception.ckpt``: without it Lightning keeps only the end-of-epoch-1 checkpoint);
3. the resume from that checkpoint (``resume_training.py``; Lightning ``fit(ckpt_path=...)``).
The final weights of 3 are compared with those of 1: bit for bit (yes/no) and the largest absolute
parameter difference. The result is deterministic, so there are no repeats; as a control, a second
uninterrupted Lightning run is compared with the first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import common


def run_to_end(argv: list[str], cwd: Path) -> None:
    child = common.Child(argv, common.child_env(), cwd)
    code = child.finish()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} exited {code}:\n{child.tail()}")


def cut(argv: list[str], pause: int, cwd: Path, ours: bool) -> int | None:
    """Run ``argv`` until it pauses after step ``pause``, SIGINT it; its exit code."""
    child = common.Child(argv, common.child_env(f"train_step:{pause}" if ours else None), cwd)
    if child.wait_for(f"PAUSED train_step {pause}") is None:
        child.finish()
        raise RuntimeError(f"never paused at step {pause}:\n{child.tail()}")
    os.kill(child.proc.pid, signal.SIGINT)
    return child.finish()


def cut_ours(cache: Path, out: Path, pause: int) -> Path:
    """Our run stopped after step ``pause``; its interrupted checkpoint."""
    code = cut(common.ours_argv(cache, out / "models"), pause, out.parent, ours=True)
    found = sorted((out / "models").glob("*_interrupted.pth"))
    if code != 130 or not found:
        raise RuntimeError(f"ours: exit {code}, interrupted checkpoint {'found' if found else 'missing'}")
    return found[-1]


def cut_lightning(cache: Path, out: Path, pause: int) -> Path:
    """Lightning stopped after step ``pause`` with OnExceptionCheckpoint; its newest checkpoint."""
    cut(
        common.lightning_argv(cache, out, "--on-exception", "--pause-at", str(pause)),
        pause,
        out.parent,
        ours=False,
    )
    on_exc = out / "checkpoints" / "on_exception.ckpt"
    if on_exc.exists():
        return on_exc
    found = sorted((out / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError("lightning: no checkpoint after the SIGINT")
    return found[-1]


def compare(a: Path, b: Path, key: str | None) -> dict[str, Any]:
    """Bit-exact equality and largest absolute difference of two weight sets."""
    import torch

    wa = torch.load(a, map_location="cpu", weights_only=True)
    wb = torch.load(b, map_location="cpu", weights_only=True)
    wa, wb = (wa[key], wb[key]) if key else (wa, wb)
    diffs = [float((wa[k].double() - wb[k].double()).abs().max()) for k in wa]
    return {"bit_exact": all(torch.equal(wa[k], wb[k]) for k in wa), "max_abs_diff": max(diffs)}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = common.warm_cache(work)
    spe = common.steps_per_epoch(work)
    pause = spe + spe // 2
    result: dict[str, Any] = {
        **common.result_header(),
        "setup": {
            **common.sub_market(),
            "epochs": 2,
            "steps_per_epoch": spe,
            "pause_step": pause,
        },
    }
    full = work / "ours_full"
    run_to_end(common.ours_argv(cache, full / "models"), work)
    ckpt = cut_ours(cache, work / "ours_cut", pause)
    run_to_end(
        [
            sys.executable,
            str(common.RESUME_SCRIPT),
            "--models-dir",
            str(ckpt.parent),
            "--no-progress",
            "--no-plots",
        ],
        work,
    )
    result["ours"] = compare(
        full / "models" / "checkpoint_epoch_2.pth", ckpt.parent / "checkpoint_epoch_2.pth", "model"
    ) | {"checkpoint": ckpt.name}
    print(f"ours: {result['ours']}", flush=True)

    run_to_end(common.lightning_argv(cache, work / "pl_full"), work)
    pl_ckpt = cut_lightning(cache, work / "pl_cut", pause)
    run_to_end(common.lightning_argv(cache, work / "pl_resumed", "--resume", str(pl_ckpt)), work)
    result["lightning"] = compare(work / "pl_full" / "final.pt", work / "pl_resumed" / "final.pt", None) | {
        "checkpoint": pl_ckpt.name
    }
    # Control: a second uninterrupted Lightning run equals the first, so a difference above comes
    # from the resume, not from run-to-run noise.
    run_to_end(common.lightning_argv(cache, work / "pl_full2"), work)
    control = compare(work / "pl_full" / "final.pt", work / "pl_full2" / "final.pt", None)
    result["lightning"]["uninterrupted_runs_equal"] = control["bit_exact"]
    print(f"lightning: {result['lightning']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the same (there are no repeats to cut)")
    p.add_argument("--json", default=None)
    p.add_argument("--keep-work", action="store_true")
    args = p.parse_args(argv)
    return common.run_area(args, "bench_resume_", run, keep=args.keep_work)


if __name__ == "__main__":
    sys.exit(main())
