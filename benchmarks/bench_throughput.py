"""Training throughput (samples/s): our Trainer vs a bare PyTorch loop vs a Lightning Trainer.

    python benchmarks/bench_throughput.py                 # 16 x 2500 market (the CLI default), 3 repeats
    python benchmarks/bench_throughput.py --quick --json /tmp/tp.json

One epoch of each, in this process, on the same model class (``IndicatorTransformer`` with the
default config and seed), the same ``WindowDataset``, batch size, AdamW settings, grad clipping,
torch thread count and ``num_workers=0``; validation excluded from all three. Each epoch ends with
one checkpoint, the interval of our default (``--checkpoint-every 0``: one per epoch): ours
``Trainer._save`` (atomic, verified format) + retention, the bare loop a plain ``torch.save`` of model
and optimizer, Lightning its ``ModelCheckpoint``. Lightning runs a fresh ``Trainer(max_epochs=1)``
per repeat with the progress bar, logger and model summary off, timed from its epoch start to its
train end (the Trainer's set-up excluded). After one warm-up epoch each, repeats are interleaved
(ours, bare, Lightning, ours, ...) and the ratios are taken per repeat, so that background load
hits all three alike.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
from torch import nn
from torch.utils.data import DataLoader

from indicator_transformer.data.windows import collate_batch
from indicator_transformer.model import IndicatorTransformer, count_parameters
from indicator_transformer.training import checkpoint as ckpt


def ours_epoch(setup: common.Setup) -> float:
    """Seconds for one ``_train_epoch()`` plus its end-of-epoch checkpoint and retention."""
    trainer = setup.trainer
    trainer.step_in_epoch = 0  # _train_epoch runs "the rest of" the epoch: make it a whole one
    gc.collect()  # before, not during: the same for every loop
    t0 = time.perf_counter()
    trainer._train_epoch()
    path = trainer._save(ckpt.epoch_checkpoint_name(trainer.epoch), interrupted=False)
    ckpt.apply_retention(trainer.models_dir, trainer.cfg.train.keep, newest=path)
    seconds = time.perf_counter() - t0
    trainer.epoch += 1  # the next epoch's permutation, as a real run draws
    return seconds


class BareLoop:
    """The hand-written alternative: same model class, data, optimizer, clipping; nothing else."""

    def __init__(self, setup: common.Setup, out: Path) -> None:
        cfg = setup.cfg
        torch.manual_seed(cfg.train.seed)
        self.model = IndicatorTransformer(
            len(setup.trainer.data.feature_names), cfg.features.window, cfg.model
        )
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.dataset, self.cfg, self.out = setup.trainer.datasets["train"], cfg, out
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        out.mkdir(parents=True, exist_ok=True)

    def epoch(self) -> float:
        loss_fn, t = nn.MSELoss(), self.cfg.train
        self.model.train()
        gc.collect()
        t0 = time.perf_counter()
        # collate_batch: the dataset's __getitems__ already returns a stacked (x, y) batch.
        for x, y in DataLoader(
            self.dataset,
            batch_size=t.batch_size,
            shuffle=True,
            num_workers=0,
            collate_fn=collate_batch,
            generator=self.generator,
        ):
            self.opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
        torch.save(
            {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()},
            self.out / "checkpoint.pth",
        )
        return time.perf_counter() - t0


class LightningLoop:
    """A fresh ``Trainer(max_epochs=1)`` per epoch on one LightningModule; times the epoch."""

    def __init__(self, setup: common.Setup, out: Path) -> None:
        import pytorch_lightning as pl
        from lightning_model import LitIndicator, make_loader

        cfg = setup.cfg
        pl.seed_everything(cfg.train.seed, verbose=False)
        self.loader = make_loader(setup.trainer.datasets["train"], cfg.train.batch_size, cfg.train.seed)
        self.module = LitIndicator(cfg, len(setup.trainer.data.feature_names), len(self.loader))
        self.cfg, self.out = cfg, out
        self.times: list[float] = []
        timer = self

        class EpochTimer(pl.Callback):  # from epoch start to train end: the checkpoint included
            def on_train_epoch_start(self, *_: Any) -> None:
                timer.t0 = time.perf_counter()

            def on_train_end(self, *_: Any) -> None:
                timer.times.append(time.perf_counter() - timer.t0)

        self.timer_cls = EpochTimer

    def epoch(self) -> float:
        from lightning_model import make_trainer

        trainer = make_trainer(self.out, 1, self.cfg.train.grad_clip, validate=False)
        trainer.callbacks.insert(0, self.timer_cls())
        gc.collect()
        trainer.fit(self.module, self.loader)
        self.last = trainer  # bench_checkpoint saves through it
        return self.times[-1]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    setup = common.build_setup(work, args.symbols, args.bars, args.batch_size)
    loops = {
        "ours": lambda: ours_epoch(setup),
        "bare": BareLoop(setup, work / "bare").epoch,
        "lightning": LightningLoop(setup, work / "lightning").epoch,
    }
    for name, epoch in loops.items():
        print(f"warm-up {name}: {epoch():.3f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        for name, epoch in loops.items():
            times[name].append(epoch())
        print(
            f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]:.3f} s" for n, v in times.items()),
            flush=True,
        )
    n = setup.train_windows
    rates = {name: [n / s for s in v] for name, v in times.items()}
    return {
        **common.result_header(),
        "setup": {
            "symbols": args.symbols,
            "bars": args.bars,
            "batch_size": args.batch_size,
            "train_windows": n,
            "steps_per_epoch": setup.trainer.steps_per_epoch,
            "parameters": count_parameters(setup.trainer.model),
            "torch_threads": torch.get_num_threads(),
            "repeats": args.repeats,
        },
        "samples_per_s": {name: common.stats(v) for name, v in rates.items()},
        "ratio_vs_bare": common.paired_ratios(rates["ours"], rates["bare"]),
        "ratio_vs_lightning": common.paired_ratios(rates["ours"], rates["lightning"]),
        "lightning_vs_bare": common.paired_ratios(rates["lightning"], rates["bare"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 x 1500 market, 1 repeat")
    p.add_argument("--symbols", type=int, default=None, help="default 16 (quick 8)")
    p.add_argument("--bars", type=int, default=None, help="default 2500 (quick 1500)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None, help="default 3 (quick 1)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    args.symbols = args.symbols or (8 if args.quick else 16)
    args.bars = args.bars or (1500 if args.quick else 2500)
    args.repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        result = run(args, Path(tmp))
    for name, s in result["samples_per_s"].items():
        print(f"{name:9s} samples/s median {s['median']:,.0f} (min {s['min']:,.0f}, max {s['max']:,.0f})")
    print(
        f"ours / bare {result['ratio_vs_bare']['median']:.3f}x, ours / lightning "
        f"{result['ratio_vs_lightning']['median']:.3f}x"
    )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
