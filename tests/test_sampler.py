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


def _epoch(world: int, n: int = 1000, batch: int = 64, epoch: int = 2) -> list[list[list[int]]]:
    """[rank][step] -> indices, for every rank of a world."""
    out = []
    for rank in range(world):
        s = ResumableBatchSampler(n, batch, seed=5, rank=rank, world_size=world)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_the_ranks_slices_put_together_are_the_single_process_global_batches() -> None:
    single = _epoch(1)[0]
    for world in (2, 3, 4):
        ranks = _epoch(world)
        assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(single)
        for step, batch in enumerate(single):
            assert sum((r[step] for r in ranks), []) == batch


def test_steps_per_epoch_do_not_depend_on_the_world_size() -> None:
    counts = {ResumableBatchSampler(1000, 64, 0, rank=0, world_size=w).batches_per_epoch
              for w in (1, 2, 3, 7)}
    assert counts == {16}


def test_shard_losses_weighted_by_the_sampler_give_the_global_batch_mean_gradient() -> None:
    # A last batch of 1000 - 15 * 64 = 40 windows over 3 ranks: slices of 13, 13 and 14.
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    x, y = torch.randn(1000, 4), torch.randn(1000)
    b = 15
    single = ResumableBatchSampler(1000, 64, 1)
    idx = list(single)[b]
    ((x[idx] @ w - y[idx]) ** 2).mean().backward()
    want = w.grad.clone()
    grads = []
    for rank in range(3):
        s = ResumableBatchSampler(1000, 64, 1, rank=rank, world_size=3)
        part = list(s)[b]
        w.grad = None
        (((x[part] @ w - y[part]) ** 2).sum() * s.loss_scale(b)).backward()
        grads.append(w.grad.clone())
    sizes = [ResumableBatchSampler(1000, 64, 1, rank=r, world_size=3).shard_size(b) for r in range(3)]
    assert sizes == [13, 13, 14]
    assert torch.allclose(sum(grads) / 3, want, atol=1e-6)  # DDP divides the sum by the world size


def test_a_rank_with_an_empty_slice_gets_a_zero_weight_stand_in_and_the_same_step_count() -> None:
    # 65 windows in batches of 64: the last global batch holds 1 window, rank 0 of 2 gets none.
    ranks = _epoch(2, n=65)
    s0 = ResumableBatchSampler(65, 64, 5, rank=0, world_size=2)
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert s0.shard_size(1) == 0 and len(ranks[0][1]) == 1
    assert ranks[1][1] == _epoch(1, n=65)[0][1]


def test_resuming_a_rank_at_a_position_yields_the_rest_of_its_slices() -> None:
    full = _epoch(2)[1]
    s = ResumableBatchSampler(1000, 64, seed=5, rank=1, world_size=2)
    s.set_epoch(2, position=9)
    assert list(s) == full[9:]
