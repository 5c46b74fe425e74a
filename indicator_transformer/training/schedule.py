"""The learning-rate schedule: one definition, used by the trainer and by checkpoint validation."""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, total steps) of a run: the warm-up is at most a tenth of the run."""
    total = cfg.epochs * steps_per_epoch
    return min(cfg.warmup_steps, max(total // 10, 1)), total


def lr_at(cfg: TrainConfig, steps_per_epoch: int, step: int) -> float:
    """The learning rate the optimizer uses for the step after ``step`` completed steps."""
    warmup, total = schedule(cfg, steps_per_epoch)
    return cfg.lr * lr_factor(step, warmup, total)
