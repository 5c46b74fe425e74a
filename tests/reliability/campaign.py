"""The fault-injection campaign: random signals, kills, corruptions, hostile files, malformed inputs,
full disks, torchrun faults and several processes on one folder, each followed by every invariant
check (see README.md here).

    python tests/reliability/campaign.py --trials 300 --seed 1            # the full campaign
    python tests/reliability/campaign.py --trials 20 --seed 5 --only kill9
    python tests/reliability/campaign.py --trials 1 --seed 123 --only corrupt   # replay one trial

Trial i of a campaign has the seed ``--seed + i``; its kind and everything it injects are drawn
from that seed, so the line a trial prints (kind and seed) replays it with ``--trials 1``.
Exit code 0 when every trial passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: reliability and trainproc

from reliability import corruption, disk_full, distributed, interrupts, malformed, shared, storage  # noqa: E402
from reliability.harness import Campaign, Outcome, Trial, TrialFailure, TrialFn  # noqa: E402

KINDS: dict[str, TrialFn] = {
    "signal": interrupts.signal_trial,
    "multi_signal": interrupts.multi_signal_trial,
    "kill9": interrupts.kill9_trial,
    "corrupt": corruption.corrupt_trial,
    "hostile": corruption.hostile_trial,
    "malformed_input": malformed.malformed_trial,
    "disk_full": disk_full.disk_full_trial,
    "distributed": distributed.distributed_trial,
    "two_runs": shared.two_runs_trial,
    "cache_maintenance": shared.cache_maintenance_trial,
    "read_only": storage.read_only_trial,
    "few_descriptors": storage.few_descriptors_trial,
}
# Relative odds of a kind: torchrun trials take several times longer, so there are fewer of them.
WEIGHTS = {"signal": 3.0, "multi_signal": 1.5, "kill9": 2.5, "corrupt": 2.0, "hostile": 1.5,
           "malformed_input": 2.0, "disk_full": 1.2, "distributed": 0.6, "two_runs": 1.2,
           "cache_maintenance": 1.0}


def plan(trials: int, seed: int, only: str | None) -> list[tuple[str, int]]:
    """(kind, trial seed) of every trial: the first ones cover every kind once (in a seeded
    order), the rest are drawn by weight; ``only`` fixes the kind."""
    rng = random.Random(f"campaign:{seed}")
    kinds = list(KINDS)
    rng.shuffle(kinds)
    out = []
    for i in range(trials):
        if only:
            kind = only
        elif i < len(kinds):
            kind = kinds[i]
        else:
            kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        out.append((kind, seed + i))
    return out


def run_trial(campaign: Campaign, kind: str, seed: int) -> Outcome:
    """Run one trial; whatever it raises is its failure (a harness error says so in its text)."""
    t0 = time.monotonic()
    trial = Trial(campaign, kind, seed)
    try:
        KINDS[kind](trial)
    except TrialFailure as e:
        trial.out.failures.append(str(e))
    except Exception:  # noqa: BLE001 - a bug in a trial is reported as its failure, not a crash
        trial.out.failures.append("harness error:\n" + traceback.format_exc())
    finally:
        trial.kill_everything()
        trial.out.seconds = time.monotonic() - t0
    if trial.out.ok and not campaign.keep:
        shutil.rmtree(trial.root, ignore_errors=True)
    return trial.out


def format_line(n: int, total: int, out: Outcome) -> str:
    verdict = "PASS" if out.ok else "FAIL"
    line = (f"[{n}/{total}] {out.kind} seed={out.seed} injected: {out.injected} -> {verdict} "
            f"({out.seconds:.1f}s)")
    if out.notes:
        line += f" [{'; '.join(out.notes)}]"
    if not out.ok:
        line += (f"\n    replay: python tests/reliability/campaign.py --trials 1 --seed {out.seed} "
                 f"--only {out.kind}")
        line += f"\n    folder: {out.folder}"
        for f in out.failures:
            line += "\n    - " + f.replace("\n", "\n      ")
        line += "\n    commands:\n" + "\n".join(f"      {c}" for c in out.commands)
    return line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="campaign.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=16, help="number of trials (default 16)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first trial (trial i: seed + i)")
    p.add_argument("--only", choices=list(KINDS), help="run trials of this kind only")
    p.add_argument("--jobs", type=int, default=1, help="trials run at the same time (default 1)")
    p.add_argument("--workdir", help="folder for the trials' files (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep passing trials' folders too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.trials < 1 or args.jobs < 1:
        raise SystemExit("campaign.py: --trials and --jobs must be at least 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="reliability-"))
    workdir.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(workdir, keep=args.keep)
    todo = plan(args.trials, args.seed, args.only)
    print(f"campaign: {args.trials} trials from seed {args.seed}"
          f"{f', only {args.only}' if args.only else ''}, {args.jobs} at a time, in {workdir}", flush=True)
    t0 = time.monotonic()
    done: list[Outcome] = []
    lock = threading.Lock()

    def one(item: tuple[str, int]) -> None:
        out = run_trial(campaign, *item)
        with lock:
            done.append(out)
            print(format_line(len(done), len(todo), out), flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, todo))
    wall = time.monotonic() - t0
    failures = [o for o in done if not o.ok]
    per_kind, failed_kind = Counter(o.kind for o in done), Counter(o.kind for o in failures)
    print("per kind (trials, failures, seconds):")
    for kind in KINDS:
        if per_kind[kind]:
            secs = sum(o.seconds for o in done if o.kind == kind)
            print(f"  {kind:<16} {per_kind[kind]:>4} {failed_kind[kind]:>4} {secs:>8.0f}")
    print(f"wall time {wall:.0f}s (references {campaign.reference_seconds:.0f}s)")
    if failures:
        print("failed: " + " ".join(f"{o.kind}:{o.seed}" for o in failures))
    print(f"{len(done)} trials, {len(failures)} failures", flush=True)
    if not failures and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
