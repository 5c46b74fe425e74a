"""A batch sampler whose whole state is (seed, epoch, position): resumable and shardable.

The order of epoch e is a permutation drawn from a private generator seeded with (seed, e), so it
does not depend on, or disturb, any global RNG, and it is the same in every process. ``position``
is the number of batches of that epoch already consumed by the trainer (not by DataLoader
prefetching, which runs ahead): resuming at position k yields exactly the batches k, k+1, ...

For several ranks (torchrun), each rank takes the slice ``perm[rank::world_size]`` of the same
permutation, truncated to a common length so that every rank runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices for one epoch, starting at batch ``position``."""

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty split")
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
        per_rank = self.n // self.world_size
        return (per_rank + self.batch_size - 1) // self.batch_size

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            idx = torch.arange(self.n)
        else:
            g = torch.Generator()
            # Mix seed and epoch into one 63-bit seed; distinct (seed, epoch) give distinct orders.
            g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))
            idx = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world_size
        return idx[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for b in range(self.position, self.batches_per_epoch):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.position, 0)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce the rest of the epoch."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "n": self.n,
                "batch_size": self.batch_size, "shuffle": self.shuffle}
