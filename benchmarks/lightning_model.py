"""The PyTorch Lightning comparison: our model, data, optimizer and schedule inside a LightningModule.

    python benchmarks/lightning_model.py --symbols 4 --bars 1500 --epochs 2 --out /tmp/pl
    python benchmarks/lightning_model.py ... --on-exception --pause-at 24     # Ctrl-C test child
    python benchmarks/lightning_model.py ... --resume /tmp/pl/checkpoints/on_exception.ckpt

What a user of Lightning would write for this model: the same ``IndicatorTransformer``, MSE loss,
AdamW (lr, weight decay), the same warm-up + cosine schedule stepped per optimizer step,
``gradient_clip_val`` = our grad_clip, a shuffled ``DataLoader`` over our ``WindowDataset`` (same
windows, same batch size, a seeded generator), validation every epoch, progress bar, logger and
model summary off. Checkpoints: Lightning's default ``ModelCheckpoint`` (end of each epoch), or
``--every-n-steps``, plus ``OnExceptionCheckpoint`` with ``--on-exception``. ``--pause-at N`` prints
``PAUSED train_step N`` after optimizer step N and sleeps, so a benchmark can deliver a real SIGINT
at that step, as our pause point does (indicator_transformer/faults.py). At the end the inner
model's weights go to ``<out>/final.pt`` (for the bit-exact resume comparison).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from indicator_transformer.config import Config
from indicator_transformer.data.windows import collate_batch
from indicator_transformer.model import IndicatorTransformer
from indicator_transformer.training.schedule import lr_factor, schedule

PAUSE_LIMIT_S = 60.0  # as faults.TIMEOUT_S: a pause nobody ends does not hang the benchmark
# The tips and "GPU available" lines are not figures; warnings stay on.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


class LitIndicator(pl.LightningModule):
    """Our transformer with our loss, optimizer and learning-rate schedule."""

    def __init__(self, cfg: Config, n_features: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.model = IndicatorTransformer(n_features, cfg.features.window, cfg.model)
        self.loss_fn = nn.MSELoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        x, y = batch  # (B, L, F), (B,)
        return self.loss_fn(self.model(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self.model(x), y), prog_bar=False)

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        warmup, total = schedule(t, self.steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class PauseAt(Callback):
    """After optimizer step ``step``: print ``PAUSED train_step <step>`` and wait for a signal."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.global_step == self.step:
            print(f"PAUSED train_step {self.step}", flush=True)
            end = time.monotonic() + PAUSE_LIMIT_S
            while time.monotonic() < end:  # SIGINT raises KeyboardInterrupt here, as mid-training
                time.sleep(0.01)


def make_loader(
    dataset: Dataset, batch_size: int, seed: int, *, shuffle: bool = True, num_workers: int = 0
) -> DataLoader:
    """The loader a Lightning user writes: shuffled, seeded; our collate (batches come stacked)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def make_trainer(
    out: Path,
    epochs: int,
    grad_clip: float,
    *,
    every_n_steps: int | None = None,
    on_exception: bool = False,
    pause_at: int | None = None,
    checkpoint: bool = True,
    validate: bool = True,
) -> pl.Trainer:
    """A CPU Trainer with the progress bar, logger and model summary off."""
    callbacks: list[Callback] = []
    if checkpoint:
        callbacks.append(
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                every_n_train_steps=every_n_steps,
                save_top_k=-1 if every_n_steps else 1,
            )
        )
    if on_exception:
        callbacks.append(OnExceptionCheckpoint(dirpath=out / "checkpoints"))
    if pause_at:
        callbacks.append(PauseAt(pause_at))
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        gradient_clip_val=grad_clip,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        default_root_dir=str(out),
    )


def build_datasets(cfg: Config) -> tuple[dict[str, Dataset], int]:
    """Our windows on the prepared cache (warm: the benchmark prepared it): datasets, feature count."""
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare, resolve_sources
    from indicator_transformer.data.windows import WindowDataset, fit_normalisation, make_splits
    from indicator_transformer.shutdown import SignalHandler

    cache = FeatureCache(cfg.data.cache_dir).open()
    data = prepare(
        resolve_sources(cfg.data),
        cfg.features,
        cache,
        handler=SignalHandler(),
        workers=cfg.data.prep_workers,
        stream=io.StringIO(),
        show_progress=False,
    )
    splits = make_splits(data.symbols, cfg.features)
    norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window)
    w = cfg.features.window
    return {k: WindowDataset(data.symbols, splits[k], w, norm) for k in ("train", "val")}, len(
        data.feature_names
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--bars", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--out", required=True, help="checkpoints/ and final.pt go here")
    p.add_argument("--every-n-steps", type=int, default=None, help="ModelCheckpoint every N steps")
    p.add_argument("--on-exception", action="store_true", help="add OnExceptionCheckpoint")
    p.add_argument("--pause-at", type=int, default=None, help="pause after this optimizer step")
    p.add_argument("--resume", default=None, help="a Lightning checkpoint to continue (ckpt_path)")
    args = p.parse_args(argv)

    cfg = Config().replace(
        symbols=args.symbols,
        bars=args.bars,
        batch_size=args.batch_size,
        epochs=args.epochs,
        device="cpu",
        cache_dir=args.cache_dir,
    )
    datasets, n_features = build_datasets(cfg)
    pl.seed_everything(cfg.train.seed, verbose=False)
    train = make_loader(datasets["train"], args.batch_size, cfg.train.seed, num_workers=args.num_workers)
    val = make_loader(datasets["val"], 1024, 0, shuffle=False, num_workers=args.num_workers)
    module = LitIndicator(cfg, n_features, len(train))
    out = Path(args.out)
    trainer = make_trainer(
        out,
        args.epochs,
        cfg.train.grad_clip,
        every_n_steps=args.every_n_steps,
        on_exception=args.on_exception,
        pause_at=args.pause_at,
    )
    # weights_only: nothing loaded from disk may run code (the project's rule, kept here too)
    trainer.fit(module, train, val, ckpt_path=args.resume, weights_only=True if args.resume else None)
    torch.save(module.model.state_dict(), out / "final.pt")
    print(f"FIT DONE global_step {trainer.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
