"""Elastic resume, placed as ``ResumableTrainLoop`` places it (``place_sampler``), rank by rank in
one process: a checkpoint of W ranks x batch b resumed on W' x b'. The same global batch gives the
uninterrupted run's global batches (BucketSampler, a bucketed + square mix, DefaultSampler);
another global batch reads every record of the interrupted pass once across the two runs; other
mixture weights go on from where each source stood; other buckets are refused with the option."""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import replace

import pytest
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.dataset import sampler as mmengine_sampler
from torch.utils.data import ConcatDataset, DataLoader
from torch.utils.data import sampler as torch_samplers

from src.datasets.samplers import bucket_sampler, multi_source_sampler
from src.datasets.samplers.bucket_sampler import BucketSampler
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
from src.engine.data_facts import facts_of
from src.engine.positions import ResumeError, place_sampler

from epoch_run import BucketedRecords

SIZES = (30, 14, 8)


def bucketed():
    return BucketedRecords(SIZES)


def mix():
    return ConcatDataset([BucketedRecords(SIZES), list(range(20))])


SAMPLERS = {
    'bucket': (bucketed, lambda dataset, batch: BucketSampler(dataset, batch_size=batch, seed=5)),
    'mix': (mix, lambda dataset, batch: FixedBatchMultiSourceSampler([2, 1], dataset, batch_size=batch, seed=5)),
    # mmengine's DefaultSampler pads an epoch to the ranks and ends it with a short batch: the global
    # batches are the same where the global batch divides the dataset.
    'default': (lambda: list(range(48)), lambda dataset, batch: DefaultSampler(dataset, shuffle=True, seed=5)),
    'infinite': (lambda: list(range(48)), lambda dataset, batch: InfiniteSampler(dataset, shuffle=True, seed=5)),
}


def run(kind, monkeypatch, world, batch, steps, iteration=0, saved=None, make=None,
        seen=lambda draw: (int(draw), draw.position), **options):
    """``steps`` global batches from ``iteration`` on, read by ``world`` ranks of ``batch`` (each a
    list of what is ``seen`` of each draw, (index, position), rank after rank), and the facts the run saves."""
    make_dataset, make_sampler = SAMPLERS[kind]
    per_rank = []
    for rank in range(world):
        for module in (bucket_sampler, multi_source_sampler, mmengine_sampler):
            monkeypatch.setattr(module, 'get_dist_info', lambda rank=rank: (rank, world))
        dataset = make_dataset()
        inner = (make or make_sampler)(dataset, batch)
        now = facts_of(DataLoader(dataset, batch_size=batch, sampler=inner), (rank, world))
        placed, now, start = place_sampler(inner, iteration, saved, now, rank, **options)
        drawn, epoch = [], start.epoch
        while len(drawn) < steps * batch:  # epoch after epoch, as an iteration loop reads them
            drawn += [seen(draw) for draw in itertools.islice(placed, steps * batch - len(drawn))]
            epoch += 1
            inner.set_epoch(epoch)
        per_rank.append([drawn[k:k + batch] for k in range(0, steps * batch, batch)])
    return [sum((rank[step] for rank in per_rank), []) for step in range(steps)], now, start


@pytest.mark.parametrize('kind', ['bucket', 'mix', 'default', 'infinite'])
def test_the_same_global_batch_on_other_ranks_goes_on_with_the_uninterrupted_global_batches(kind, monkeypatch):
    whole, _, _ = run(kind, monkeypatch, 2, 3, 30)
    first, facts, _ = run(kind, monkeypatch, 2, 3, 7)
    second, facts, start = run(kind, monkeypatch, 3, 2, 9, iteration=7, saved=facts)
    assert 'split 3 x 2 instead of 2 x 3' in start.note
    third, _, _ = run(kind, monkeypatch, 1, 6, 14, iteration=16, saved=facts)
    resumed = first + second + third
    if kind in ('default', 'infinite'):  # mmengine deals indices to the ranks in turn: the same set a step
        whole, resumed = [sorted(b) for b in whole], [sorted(b) for b in resumed]
    assert resumed == whole


def passes_read_once(batches: list[list[tuple[int, int]]], groups: dict[int, int]) -> None:
    """Each group's stream (a bucket's, a square source's) reads each of its records once per pass."""
    streams = defaultdict(list)
    for batch in batches:
        keys = {groups[index] for index, _ in batch}
        assert len(keys) == 1  # one bucket (or one source) a batch
        streams[keys.pop()] += [index for index, _ in batch]
    for key, stream in streams.items():
        members = sorted(i for i, group in groups.items() if group == key)
        for k in range(0, len(stream) - len(members) + 1, len(members)):
            assert sorted(stream[k:k + len(members)]) == members, key


def groups_of(kind) -> dict[int, int]:
    ids = BucketedRecords(SIZES).bucket_ids
    groups = {i: int(b) for i, b in enumerate(ids)}
    if kind == 'mix':
        groups |= {len(ids) + i: 99 for i in range(20)}
    return groups


@pytest.mark.parametrize('kind', ['bucket', 'mix'])
def test_another_global_batch_reads_every_record_of_the_pass_once_across_the_runs(kind, monkeypatch):
    first, facts, _ = run(kind, monkeypatch, 2, 3, 5)
    second, facts, start = run(kind, monkeypatch, 2, 2, 20, iteration=5, saved=facts)
    assert 'global batch changed from 6 (3 x 2 ranks) to 4 (2 x 2)' in start.note
    assert facts.history[-1][:2] == [5, 4] and len(str(facts.to_dict())) < 600  # a few hundred bytes
    third, _, _ = run(kind, monkeypatch, 1, 5, 20, iteration=25, saved=facts)  # and once more
    batches = first + second + third
    passes_read_once(batches, groups_of(kind))
    positions = [position for batch in batches for _, position in batch]
    assert positions == list(range(len(positions)))  # the global stream goes on, no position twice


def test_a_resumed_run_with_another_global_batch_ends_its_epoch_where_its_pass_does(monkeypatch):
    first, facts, _ = run('bucket', monkeypatch, 2, 3, 5)
    _, _, start = run('bucket', monkeypatch, 4, 1, 1, iteration=5, saved=facts)
    sampler = SAMPLERS['bucket'][1](bucketed(), 1)
    sampler.set_history([[0, 6], [5, 4]])
    epoch, done = sampler.epoch_of_batch(5)
    assert (start.epoch, start.skip) == (epoch, done) == (0, 5)
    # What is left of each bucket's pass 0 in whole batches of 4, after its 6-batches.
    left = sum((n - consumed) // 4 for n, consumed in zip(SIZES, sampler.batches.origin.consumed))
    assert sampler.batches.epoch_length(0) == 5 + left


@pytest.mark.parametrize('kind', ['default', 'infinite'])
def test_mmengine_s_samplers_with_another_global_batch_read_the_rest_of_the_pass_once(kind, monkeypatch):
    first, facts, _ = run(kind, monkeypatch, 2, 3, 5)  # 30 of the 48 records
    rest = []
    for rank in range(2):  # 2 ranks x batch 2: the 18 left, 9 a rank, dealt in turn
        for module in (bucket_sampler, multi_source_sampler, mmengine_sampler):
            monkeypatch.setattr(module, 'get_dist_info', lambda rank=rank: (rank, 2))
        dataset = SAMPLERS[kind][0]()
        inner = SAMPLERS[kind][1](dataset, 2)
        now = facts_of(DataLoader(dataset, batch_size=2, sampler=inner), (rank, 2))
        placed, now, start = place_sampler(inner, 5, facts, now, rank)
        assert 'global batch changed from 6 (3 x 2 ranks) to 4 (2 x 2)' in start.note and start.epoch == 0
        iteration = iter(placed)
        drawn = [(int(draw), draw.position) for draw in itertools.islice(iteration, 9)]
        assert kind == 'infinite' or not list(iteration)  # the epoch ends there on every rank
        rest += drawn
    records = [index for batch in first for index, _ in batch] + [index for index, _ in rest]
    assert sorted(records) == list(range(48))  # every record of the pass once across the two runs
    assert sorted(position for _, position in rest) == list(range(30, 48))
    inner.set_epoch(1)  # and the next epoch is DefaultSampler's own, on the new ranks
    assert kind == 'infinite' or len(list(placed)) == 24


def test_other_mixture_weights_go_on_from_where_each_source_stood(monkeypatch):
    first, facts, _ = run('mix', monkeypatch, 2, 3, 7)
    other = lambda dataset, batch: FixedBatchMultiSourceSampler([1, 3], dataset, batch_size=batch, seed=5)  # noqa
    second, facts, start = run('mix', monkeypatch, 2, 3, 24, iteration=7, saved=facts, make=other)
    assert 'mixture weights changed from repeat=[2, 1] to [1, 3]' in start.note
    groups = groups_of('mix')
    square = [b for b in second if groups[b[0][0]] == 99]
    assert len(square) == 18  # 3 of every 4 batches after the change
    passes_read_once(first + second, groups)
    third, _, _ = run('mix', monkeypatch, 3, 2, 4, iteration=31, saved=facts, make=other)  # the new turns go on
    again, _, _ = run('mix', monkeypatch, 2, 3, 4, iteration=31, saved=facts, make=other)
    assert third == again


def test_other_buckets_are_refused_with_the_fingerprints_and_the_option(monkeypatch):
    _, facts, _ = run('bucket', monkeypatch, 1, 3, 2)
    other = lambda dataset, batch: BucketSampler(BucketedRecords((28, 16, 8)), batch_size=batch, seed=5)  # noqa
    with pytest.raises(ResumeError, match=r'other buckets .*bucket fingerprint \w+ then, \w+ now.*allow_data_change'):
        run('bucket', monkeypatch, 1, 3, 1, iteration=2, saved=facts, make=other)
    _, _, start = run('bucket', monkeypatch, 1, 3, 1, iteration=2, saved=facts, make=other, allow_data_change=True)
    assert 'buckets changed' in start.note


def test_another_sampler_with_another_global_batch_is_refused_with_the_numbers(monkeypatch):
    _, facts, _ = run('default', monkeypatch, 2, 3, 2)
    other = lambda dataset, batch: torch_samplers.RandomSampler(dataset)  # noqa: E731
    with pytest.raises(ResumeError, match=r'global batch of 6 \(batch size 3 x 2 ranks\), this run has 4 '
                                          r'\(2 x 2\).*BucketSampler, FixedBatchMultiSourceSampler'):
        run('default', monkeypatch, 2, 2, 1, iteration=2, saved=replace(facts, sampler='RandomSampler'), make=other)

