"""A block shuffle resumed: under the checkpoint's deal (ranks, batch, workers, block) the batches of
the uninterrupted run; under another deal (more ranks, other workers, another global batch or block,
several changes in one epoch) the rest of the interrupted epoch read once, every rank ending it on
the same step, each record keeping its randomness key, then the new deal's own epochs; the same
through ResumableTrainLoop, whose epochs end where the sampler's do."""
from __future__ import annotations

from collections import Counter

import pytest
from torch.utils.data import DataLoader

from src.datasets.samplers import block_sampler
from src.datasets.samplers.block_sampler import BlockShuffleSampler
from src.engine import ResumableTrainLoop
from src.engine.data_facts import facts_of
from src.engine.positions import place_sampler

from epoch_run import train

SIZE = 100


class Records(list):
    read_blocks = None  # as a dataset read from tar shards: blocks are dealt whole to the workers


def run(monkeypatch, deal, iteration=0, saved=None, epochs=1):
    """What each rank of ``deal`` (ranks, batch, workers, block) reads from global batch
    ``iteration`` to the end of ``epochs`` epochs, each draw as (index, position, key, epoch), and
    the facts the run saves."""
    world, batch, workers, block = deal
    per_rank, facts = [], None
    for rank in range(world):
        monkeypatch.setattr(block_sampler, 'get_dist_info', lambda rank=rank: (rank, world))
        records = Records(range(SIZE))
        inner = BlockShuffleSampler(records, block_size=block, seed=7, batch_size=batch, num_workers=workers)
        now = facts_of(DataLoader(records, batch_size=batch, sampler=inner), (rank, world))
        placed, facts, start = place_sampler(inner, iteration, saved, now, rank)
        drawn = []
        for epoch in range(start.epoch, start.epoch + epochs):
            inner.set_epoch(epoch)
            drawn.append([(int(d), d.position, d.key, d.epoch) for d in placed])
        per_rank.append(drawn)
    return per_rank, facts, start


def global_batches(per_rank, batch, epoch=0):
    """The global batches of one epoch, rank after rank in each (equal lengths asserted)."""
    lengths = {len(rank[epoch]) for rank in per_rank}
    assert len(lengths) == 1  # every rank ends the epoch on the same step
    steps = lengths.pop() // batch
    return [sum((rank[epoch][s * batch:(s + 1) * batch] for rank in per_rank), []) for s in range(steps)]


@pytest.mark.parametrize('deal', [(2, 4, 2, 8), (1, 8, 3, 16), (3, 2, 1, 4)])
def test_the_same_deal_goes_on_with_the_uninterrupted_batches(monkeypatch, deal):
    whole, facts, _ = run(monkeypatch, deal, epochs=2)
    batches = global_batches(whole, deal[1]) + global_batches(whole, deal[1], 1)
    for iteration in (3, len(batches) // 2 + 1):  # in the first epoch, in the second
        resumed, _, start = run(monkeypatch, deal, iteration, facts, epochs=2 - start_epoch(batches, iteration))
        assert 'instead of' not in start.note
        again = sum((global_batches([rank[e:e + 1] for rank in resumed], deal[1]) for e in range(len(resumed[0]))), [])
        assert again == batches[iteration:]


def start_epoch(batches, iteration) -> int:
    return batches[iteration][0][3]


CHANGES = {
    'other workers': [(1, 8, 2, 16), (1, 8, 4, 16)],
    'more ranks, the same global batch': [(2, 6, 1, 12), (3, 4, 2, 12)],
    'another global batch': [(2, 4, 2, 8), (1, 4, 1, 8)],
    'another block': [(2, 4, 2, 8), (2, 4, 2, 16)],
    'two changes in one epoch': [(2, 4, 2, 8), (3, 2, 2, 8), (1, 4, 1, 4)],
}


@pytest.mark.parametrize('change', CHANGES)
def test_another_deal_reads_the_rest_of_the_epoch_once_then_its_own_epochs(monkeypatch, change):
    deals = CHANGES[change]
    read, keys, positions, facts, iteration = [], {}, [], None, 0
    for number, deal in enumerate(deals):
        last = number == len(deals) - 1
        per_rank, facts, start = run(monkeypatch, deal, iteration, facts, epochs=2 if last else 1)
        assert start.epoch == 0 and (number == 0 or 'instead of' in start.note)
        batches = global_batches(per_rank, deal[1])
        steps = len(batches) if last else 2  # a few batches, then the next run
        for batch in batches[:steps]:
            read += [index for index, *_ in batch]
            positions += [position for _, position, *_ in batch]
            for index, _, key, epoch in batch:
                assert epoch == 0 and keys.setdefault(index, key) == key  # a record's key, whatever the deal
        iteration += steps
    counts = Counter(read)
    assert set(counts) == set(range(SIZE))  # every record of the epoch, across the runs
    padding = sum(deal[0] * deal[3] for deal in deals)  # an epoch part is padded to whole blocks on each rank
    assert len(read) - SIZE < padding
    assert positions == list(range(len(positions)))  # the global stream goes on, no position twice
    # The next epoch is the new deal's own, as a run that started under it reads it.
    fresh, _, _ = run(monkeypatch, deals[-1], epochs=2)
    assert [[d[:1] + d[2:] for d in rank[1]] for rank in per_rank] == [[d[:1] + d[2:] for d in rank[1]] for rank in fresh]
    assert facts.deals[-1][1:5] == list(deals[-1]) and len(facts.deals) == len(deals)


def test_a_fresh_run_reads_the_block_order_of_before(monkeypatch):
    from src.datasets.samplers.block_orders import block_order, rank_share, worker_lanes
    per_rank, _, _ = run(monkeypatch, (2, 4, 2, 8))
    for rank, drawn in enumerate(per_rank):
        share = rank_share(block_order(SIZE, 8, 7, 0), 8, rank, 2)
        assert [index for index, *_ in drawn[0]] == worker_lanes(share, 8, 4, 2).tolist()


def loader(batch_size):
    from epoch_run import BucketedRecords
    return dict(batch_size=batch_size, num_workers=0, persistent_workers=False, dataset=BucketedRecords(),
                sampler=dict(type='BlockShuffleSampler', block_size=4, batch_size=batch_size, seed=0),
                collate_fn=dict(type='default_collate'))


def test_resumable_train_loop_resumed_with_another_batch_reads_the_epoch_once_and_ends_on_time(tmp_path):
    cfg = dict(type=ResumableTrainLoop, max_epochs=2)
    whole = train(tmp_path / 'whole', cfg, 4, dataloader=loader(4))  # 22 records: epochs of 6 batches of 4
    assert len(whole) == 12 and [b['epoch'][0] for b in whole] == [0] * 6 + [1] * 6
    resumed = train(tmp_path / 'resumed', cfg, 2, dataloader=loader(2), resume_from=str(tmp_path / 'whole' / 'iter_3.pth'))
    first = [index for batch in whole[:3] for index in batch['index']]
    rest = [index for batch in resumed if batch['epoch'][0] == 0 for index in batch['index']]
    assert set(first + rest) == set(range(22))  # the rest of epoch 0 once (padded to whole blocks)
    assert len(rest) == 12 and len(resumed) == 6 + 12  # then epoch 1 in batches of 2, and the run ends
    assert [b['epoch'][0] for b in resumed[6:]] == [1] * 12
