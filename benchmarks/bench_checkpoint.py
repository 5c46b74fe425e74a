"""Checkpoint: size, save and load time, ours vs a plain torch.save vs Lightning; periodic cost.

    python benchmarks/bench_checkpoint.py --json /tmp/ckpt.json

In this process, on the default market (16 x 2500, batch 256) after two training epochs:
* ours: ``Trainer._save`` of the interrupted checkpoint (the whole resumable state, temporary
  file, fsync, rename, fsync of the folder, sha256 in the archive comment) and ``load_checkpoint``
  (digest check, ``torch.load(weights_only=True)``, every field validated);
* bare: ``torch.save({"model", "optimizer"})`` straight to the final name, ``torch.load``;
* Lightning: ``Trainer.save_checkpoint`` after a one-epoch fit, ``torch.load``.
Repeats interleaved. The periodic cost is our save time as a % of the epoch's training time,
at our default interval (one checkpoint per epoch) and at ``--checkpoint-every 100``. The figures
depend on the file system of the temporary folder (fsync on tmpfs is free; ``--work-dir``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
from bench_throughput import BareLoop, LightningLoop

from indicator_transformer.training import checkpoint as ckpt


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # Two real epochs (validation, epoch checkpoints): the saved state is then one load_checkpoint
    # accepts (its counters must match the loss history); the second epoch's training time is warm.
    setup = common.build_setup(work, args.symbols, args.bars, 256, epochs=2)
    trainer = setup.trainer
    trainer.fit()
    epoch_s = trainer._train_seconds
    bare, pl_loop = BareLoop(setup, work / "bare"), LightningLoop(setup, work / "lightning")
    bare.epoch()
    pl_loop.epoch()
    pl_trainer = pl_loop.last
    paths = {"ours": None, "bare": work / "bare" / "plain.pth", "lightning": work / "lightning" / "pl.ckpt"}
    savers = {
        "ours": lambda i: trainer._save(ckpt.interrupted_checkpoint_name(trainer.epoch), interrupted=True),
        "bare": lambda i: torch.save(
            {"model": bare.model.state_dict(), "optimizer": bare.opt.state_dict()}, paths["bare"]
        ),
        "lightning": lambda i: pl_trainer.save_checkpoint(paths["lightning"]),
    }
    save: dict[str, list[float]] = {k: [] for k in savers}
    load: dict[str, list[float]] = {k: [] for k in savers}
    for i in range(args.repeats):
        for name, saver in savers.items():
            t0 = time.perf_counter()
            written = saver(i + 1)
            save[name].append(time.perf_counter() - t0)
            if name == "ours":
                paths["ours"] = written
                load[name].append(timed(lambda p=written: ckpt.load_checkpoint(p)))
            else:
                load[name].append(
                    timed(lambda p=paths[name]: torch.load(p, map_location="cpu", weights_only=True))
                )
    sizes = {
        "ours": paths["ours"].stat().st_size,
        "bare": paths["bare"].stat().st_size,
        "lightning": paths["lightning"].stat().st_size,
    }
    save_med = common.stats(save["ours"])["median"]
    spe = trainer.steps_per_epoch
    return {
        **common.result_header(),
        "setup": {
            "symbols": args.symbols,
            "bars": args.bars,
            "batch_size": 256,
            "steps_per_epoch": spe,
            "epoch_s": epoch_s,
            "repeats": args.repeats,
        },
        "size_bytes": sizes,
        "save_s": {k: common.stats(v) for k, v in save.items()},
        "load_s": {k: common.stats(v) for k, v in load.items()},
        "save_ratio_vs_bare": common.paired_ratios(save["ours"], save["bare"]),
        "save_ratio_vs_lightning": common.paired_ratios(save["ours"], save["lightning"]),
        "load_ratio_vs_bare": common.paired_ratios(load["ours"], load["bare"]),
        "load_ratio_vs_lightning": common.paired_ratios(load["ours"], load["lightning"]),
        "pct_of_epoch": {
            "per_epoch": 100 * save_med / epoch_s,
            "every_100_steps": 100 * save_med * (1 + spe / 100) / epoch_s,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 x 1500 market, 5 repeats")
    p.add_argument("--symbols", type=int, default=None, help="default 16 (quick 4)")
    p.add_argument("--bars", type=int, default=None, help="default 2500 (quick 1500)")
    p.add_argument("--repeats", type=int, default=None, help="default 20 (quick 5)")
    p.add_argument("--work-dir", default=None, help="parent of the temporary folder")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.symbols = args.symbols or (4 if args.quick else 16)
    args.bars = args.bars or (1500 if args.quick else 2500)
    args.repeats = args.repeats or (5 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_", dir=args.work_dir) as tmp:
        result = run(args, Path(tmp))
    print({k: result[k] for k in ("size_bytes", "pct_of_epoch")})
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
