"""The resumable sampler: its whole state is (seed, epoch, position)."""

from __future__ import annotations

import torch

from indicator_transformer.training.sampler import ResumableBatchSampler


def test_resuming_at_a_position_yields_the_rest_of_the_same_epoch() -> None:
    full = ResumableBatchSampler(1000, 64, seed=3)
    full.set_epoch(4)
    batches = list(full)
    resumed = ResumableBatchSampler(1000, 64, seed=3)
    resumed.set_epoch(4, position=7)
    assert list(resumed) == batches[7:]
    assert len(resumed) == len(batches) - 7


def test_each_epoch_is_a_different_permutation_of_every_index() -> None:
    s = ResumableBatchSampler(500, 50, seed=0)
    orders = []
    for e in (1, 2):
        s.set_epoch(e)
        flat = [i for b in s for i in b]
        assert sorted(flat) == list(range(500))
        orders.append(flat)
    assert orders[0] != orders[1]


def test_sampling_does_not_touch_the_global_rng() -> None:
    before = torch.get_rng_state()
    s = ResumableBatchSampler(100, 10, seed=1)
    list(s)
    assert torch.equal(before, torch.get_rng_state())


def test_ranks_get_disjoint_shards_of_equal_length() -> None:
    shards = []
    for rank in range(3):
        s = ResumableBatchSampler(100, 8, seed=2, rank=rank, world_size=3)
        shards.append([i for b in s for i in b])
    assert len({len(x) for x in shards}) == 1
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
