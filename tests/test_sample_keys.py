"""A sample's randomness (crop, flip, caption dropout, replacement) is keyed on (seed, its draw's
key: its place in a bucket's stream or an epoch's permutation, see ``draws``): the same global batch
gives the same tensors on 1 rank with a batch of 4 as on 2 ranks with 2 each, with or without
DataLoader workers, for ``BucketSampler``, ``FixedBatchMultiSourceSampler`` (a bucketed source and
a square one) and mmengine's ``DefaultSampler`` under ``ResumableTrainLoop``'s placement."""
from __future__ import annotations

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.dataset import sampler as mmengine_sampler
from torch.utils.data import ConcatDataset, DataLoader

from src.datasets.samplers import bucket_sampler, multi_source_sampler
from src.datasets.samplers.bucket_sampler import BucketSampler
from src.datasets.samplers.draws import Draw
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.engine.positions import PositionedSampler, StartPoint

from test_buckets import write_bucket_data

GLOBAL_BATCH, STEPS = 4, 5


@pytest.fixture(scope='module')
def datasets(tmp_path_factory, tokenizer, prompt_template):
    """A bucketed and a square dataset whose samples draw: random crops, half the captions dropped,
    and two broken pictures replaced."""
    root = write_bucket_data(tmp_path_factory.mktemp('keys') / 'data', sizes_in_index='all', broken={3, 17})
    options = dict(image_folder=str(root / 'images'), tokenizer=tokenizer, prompt_template=prompt_template,
                   image_size=256, unconditional=0.5, seed=0)
    return (CaptionDataset(str(root / 'data.json'), buckets=dict(table='pixart-256'), **options),
            CaptionDataset(str(root / 'data.json'), **options))


def split_batches(make_sampler, dataset, world: int, monkeypatch, workers: int = 0) -> list[list[dict]]:
    """The first STEPS global batches as ``world`` ranks read them, rank after rank concatenated."""
    per_rank = []
    for rank in range(world):
        for module in (bucket_sampler, multi_source_sampler, mmengine_sampler):
            monkeypatch.setattr(module, 'get_dist_info', lambda rank=rank: (rank, world))
        sampler = make_sampler(GLOBAL_BATCH // world, rank, world)
        loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler, num_workers=workers,
                            collate_fn=lambda samples: samples)
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == STEPS:
                break
        per_rank.append(batches)
    return [[sample for rank in per_rank for sample in rank[step]] for step in range(STEPS)]


def assert_same_tensors(one: list[list[dict]], other: list[list[dict]]) -> None:
    for step, (batch, again) in enumerate(zip(one, other)):
        assert [s['image_file'] for s in batch] == [s['image_file'] for s in again], step
        for sample, same in zip(batch, again):
            assert torch.equal(sample['pixel_values'], same['pixel_values']), step
            assert torch.equal(sample['input_ids'], same['input_ids']), step
            assert sample.get('crop_coords', torch.zeros(2)).tolist() == same.get('crop_coords', torch.zeros(2)).tolist()


def bucket_samplers(dataset):
    return lambda batch, rank, world: BucketSampler(dataset, batch_size=batch, seed=3)


def mix_samplers(dataset):
    return lambda batch, rank, world: FixedBatchMultiSourceSampler([1, 1], dataset, batch_size=batch, seed=3)


def default_samplers(dataset):
    def make(batch, rank, world):
        return PositionedSampler(DefaultSampler(dataset, shuffle=True, seed=3), StartPoint(0, 0, 0), rank, world)
    return make


@pytest.mark.parametrize('kind', ['bucket', 'mix', 'default'])
def test_the_same_global_batch_gives_the_same_tensors_on_any_number_of_ranks(datasets, monkeypatch, kind):
    bucketed, square = datasets
    if kind == 'bucket':
        dataset, make = bucketed, bucket_samplers(bucketed)
    elif kind == 'mix':
        dataset = ConcatDataset([bucketed, square])
        make = mix_samplers(dataset)
    else:
        dataset, make = square, default_samplers(square)
    one = split_batches(make, dataset, 1, monkeypatch)
    two = split_batches(make, dataset, 2, monkeypatch)
    if kind == 'default':  # mmengine deals indices to ranks in turn: a global batch is the same set
        # (a replacement may repeat a picture of its batch: the whole sample orders the set)
        def content(s):
            return s['image_file'], s['input_ids'].tolist(), float(s['pixel_values'].double().sum())
        two = [sorted(batch, key=content) for batch in two]
        one = [sorted(batch, key=content) for batch in one]
    assert_same_tensors(one, two)
    four = split_batches(make, dataset, 4, monkeypatch, workers=2) if kind == 'bucket' else None
    if four is not None:
        assert_same_tensors(one, four)


def test_the_draws_are_random_from_position_to_position(datasets, monkeypatch):
    bucketed, square = datasets
    samples = [s for batch in split_batches(bucket_samplers(bucketed), bucketed, 1, monkeypatch) for s in batch]
    assert len({len(s['input_ids']) for s in samples}) > 1  # some captions dropped (unconditional=0.5), some kept
    wide = next(i for i in range(len(square)) if square.index[i]['width'] != square.index[i]['height'])
    crops = [square[Draw(wide, position, 3)]['pixel_values'] for position in range(4)]
    assert any(not torch.equal(crops[0], crop) for crop in crops[1:])  # a square crop of a wide picture moves
    assert torch.equal(crops[0], square[Draw(wide, 0, 3)]['pixel_values'])  # and is the same at the same position
