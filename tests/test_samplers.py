"""FixedBatchMultiSourceSampler: upstream's batch composition, rank split, O(1) positioning, errors."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
from torch.utils.data import ConcatDataset

from src.datasets.samplers import multi_source_sampler
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler

from sampler_helpers import stream_from

SIZES = [10, 7, 3]


def mix():
    return ConcatDataset([list(range(size)) for size in SIZES])


def batches(sampler, count, batch_size, start=0):
    indices = list(itertools.islice(stream_from(sampler, start), count * batch_size))
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def source_of(index):
    bounds = list(itertools.accumulate(SIZES))
    return next(s for s, bound in enumerate(bounds) if index < bound)


def test_each_batch_is_from_one_source_in_repeat_proportion():
    sampler = FixedBatchMultiSourceSampler([1, 2, 1], mix(), batch_size=4, seed=0)
    drawn = batches(sampler, 40, 4)
    sources = [{source_of(i) for i in batch} for batch in drawn]
    assert all(len(s) == 1 for s in sources)
    shares = Counter(s.pop() for s in sources)
    assert shares == {0: 10, 1: 20, 2: 10}  # repeat [1, 2, 1] of 40 batches
    # Every index of a source comes once per pass through it (one rank).
    source0 = [i for batch in drawn[:10] for i in batch if source_of(i) == 0]
    assert sorted(source0[:10]) == list(range(10))


def test_same_seed_same_batches_and_shuffle_off_is_in_order():
    a = batches(FixedBatchMultiSourceSampler([1, 1, 1], mix(), 2, seed=3), 9, 2)
    b = batches(FixedBatchMultiSourceSampler([1, 1, 1], mix(), 2, seed=3), 9, 2)
    c = batches(FixedBatchMultiSourceSampler([1, 1, 1], mix(), 2, seed=4), 9, 2)
    assert a == b != c
    ordered = batches(FixedBatchMultiSourceSampler([1, 0, 0], mix(), 4, shuffle=False, seed=0), 3, 4)
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


@pytest.mark.parametrize('start', [0, 1, 5, 13, 101])
def test_resume_at_gives_the_batches_an_uninterrupted_run_would(start):
    whole = batches(FixedBatchMultiSourceSampler([1, 2, 1], mix(), 3, seed=1), start + 20, 3)
    resumed = FixedBatchMultiSourceSampler([1, 2, 1], mix(), 3, seed=1)
    assert batches(resumed, 20, 3, start) == whole[start:]


def test_ranks_take_disjoint_shares_of_each_source(monkeypatch):
    drawn = []
    for rank in range(2):
        monkeypatch.setattr(multi_source_sampler, 'get_dist_info', lambda rank=rank: (rank, 2))
        drawn.append(batches(FixedBatchMultiSourceSampler([1, 0, 0], mix(), 5, seed=0), 1, 5)[0])
    assert sorted(drawn[0] + drawn[1]) == list(range(10))


def test_a_plain_dataset_is_one_source_and_wrong_repeat_is_refused_at_build_time():
    sampler = FixedBatchMultiSourceSampler([1], list(range(5)), 5, seed=0)  # Harmon's text2image config
    assert sorted(batches(sampler, 1, 5)[0]) == list(range(5))
    with pytest.raises(TypeError, match=r'repeat=\[1, 4\] names 2 sources, but the dataset is a list'):
        FixedBatchMultiSourceSampler([1, 4], list(range(5)), 5)
    with pytest.raises(ValueError, match='2 entries for the 3 datasets'):
        FixedBatchMultiSourceSampler([1, 4], mix(), 5)
    with pytest.raises(ValueError, match='batch_size'):
        FixedBatchMultiSourceSampler([1, 1, 1], mix(), 0)
    with pytest.raises(ValueError, match='empty'):
        FixedBatchMultiSourceSampler([1, 1], ConcatDataset([[1], []]), 2)


def test_registered_for_configs_by_name():
    from mmengine.registry import DATA_SAMPLERS
    assert DATA_SAMPLERS.get('FixedBatchMultiSourceSampler') is FixedBatchMultiSourceSampler
