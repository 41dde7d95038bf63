"""Training and evaluation batches: length grouping (train.group_by_length) keeps every example once per
epoch, is seeded, lines processes up on the same chunk, and cuts padding; evaluation goes longest first."""

import random

from ailora.train.data import (
    epoch_order,
    eval_batches,
    group_by_length,
    padding_fraction,
    shard,
    train_batches,
)


def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 120) for _ in range(n)]


def test_grouped_epoch_is_a_permutation_and_seeded():
    lengths = _lengths(1003)
    a = train_batches(lengths, 16, seed=3, epoch=0, rank=0, world=1, group=True)
    assert sorted(i for b in a for i in b) == list(range(1003))
    assert a == train_batches(lengths, 16, seed=3, epoch=0, rank=0, world=1, group=True)
    assert a != train_batches(lengths, 16, seed=3, epoch=1, rank=0, world=1, group=True)
    assert a != train_batches(lengths, 16, seed=4, epoch=0, rank=0, world=1, group=True)
    # the same number of batches as ungrouped, so the schedule's step count does not change
    assert len(a) == len(train_batches(lengths, 16, 3, 0, 0, 1, group=False))


def test_grouping_cuts_padding():
    lengths = _lengths(2000)
    plain = train_batches(lengths, 32, 0, 0, 0, 1, group=False)
    grouped = train_batches(lengths, 32, 0, 0, 0, 1, group=True)
    assert padding_fraction(plain, lengths) > 0.4
    assert padding_fraction(grouped, lengths) < 0.05


def test_processes_take_their_rows_of_the_same_chunk():
    lengths = _lengths(333, seed=1)
    world, bs = 3, 8
    per_rank = [train_batches(lengths, bs, 0, 0, r, world, group=True) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for r in per_rank for b in r for i in b]
    assert set(seen) == set(range(333))
    order = group_by_length(epoch_order(333, 0, 0), lengths, bs * world, 0, 0)
    for k in range(len(per_rank[0]) - 1):  # every full step: the ranks' batches are one chunk
        chunk = order[k * bs * world:(k + 1) * bs * world]
        assert sorted(i for r in per_rank for i in r[k]) == sorted(chunk)


def test_partial_chunk_stays_last():
    lengths = list(range(1, 51))
    order = group_by_length(list(range(50)), lengths, 16, 0, 0)
    assert len(order) == 50 and sorted(order) == list(range(50))
    assert order[-2:] == [1, 0]  # 50 = 3 x 16 + 2: the two shortest, sorted longest first, end the epoch


def test_eval_batches_longest_first_and_complete():
    lengths = _lengths(101, seed=2)
    batches = eval_batches(lengths, 10, 0, 1)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(101))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    two = [eval_batches(lengths, 10, r, 2) for r in range(2)]
    assert set(i for r in two for b in r for i in b) == set(range(101))
    assert len(two[0]) == len(two[1])


def test_shard_pads_to_equal_counts():
    parts = [shard(list(range(7)), 2, r, 3) for r in range(3)]
    assert [sum(map(len, p)) for p in parts] == [3, 3, 3]
