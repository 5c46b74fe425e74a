"""A batch sampler whose whole state is (seed, epoch, position): resumable and shardable.

The order of epoch e is a permutation drawn from a private generator seeded with (seed, e), so it
does not depend on, or disturb, any global RNG, and it is the same in every process. ``position``
is the number of batches of that epoch already consumed by the trainer (not by DataLoader
prefetching, which runs ahead): resuming at position k yields exactly the batches k, k+1, ...

The global batch. ``batch_size`` is the *global* batch: the permutation is cut into the same
batches of ``batch_size`` windows (the last one shorter) whatever the number of processes, and
under torchrun rank r of W takes the contiguous slice ``batch[len*r//W : len*(r+1)//W]`` of each
one. So the sequence of global batches, and the number of steps per epoch, do not depend on the
world size, and a checkpoint written with 2 ranks resumes with 1 (or 4) on the same batches. The
trainer weights each rank's loss so that the averaged gradient is that of the global batch's mean
(:meth:`ResumableBatchSampler.loss_scale`).

Learning rate: no scaling rule. The global batch *is* the batch the optimizer steps on, so the
same ``--lr`` and ``--batch-size`` give the same training with 1, 2 or 8 processes (more
processes only make each step faster); to train on larger batches raise ``--batch-size`` (and
tune ``--lr``) as you would in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields this rank's lists of dataset indices for one epoch, starting at batch ``position``.

    A rank whose slice of a (short, last) global batch is empty yields the batch's first index
    instead, so that every rank runs the same steps; :meth:`shard_size` is then 0 and the trainer
    gives that sample zero weight."""

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty split")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 1
        self.position = 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Select the epoch's permutation and the first batch to yield."""
        self.epoch = epoch
        self.position = position

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch, the same for every world size."""
        return (self.n + self.batch_size - 1) // self.batch_size

    def global_size(self, b: int) -> int:
        """Windows in global batch ``b`` (all ranks together)."""
        return min(self.batch_size, self.n - b * self.batch_size)

    def _bounds(self, b: int) -> tuple[int, int]:
        size = self.global_size(b)
        return size * self.rank // self.world_size, size * (self.rank + 1) // self.world_size

    def shard_size(self, b: int) -> int:
        """Windows this rank really trains on in global batch ``b`` (0: a zero-weight stand-in)."""
        lo, hi = self._bounds(b)
        return hi - lo

    def loss_scale(self, b: int) -> float:
        """The factor on this rank's *summed* squared error for global batch ``b``: W / size. DDP
        averages the ranks' gradients (divides their sum by W), which then equals the gradient of
        the global batch's mean loss, even when the shards differ in length."""
        return self.world_size / self.global_size(b)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        # Mix seed and epoch into one 63-bit seed; distinct (seed, epoch) give distinct orders.
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for b in range(self.position, self.batches_per_epoch):
            start = b * self.batch_size
            if self.world_size == 1:
                yield order[start:start + self.batch_size].tolist()
                continue
            lo, hi = self._bounds(b)
            yield order[start + lo:start + hi].tolist() if hi > lo else [int(order[start])]

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.position, 0)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce the rest of the epoch (the same for every rank: the
        rank's slice follows from the world size it resumes with)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "n": self.n,
                "batch_size": self.batch_size, "shuffle": self.shuffle}
