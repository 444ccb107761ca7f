"""CaptionDataset as a composition (issue 33): square crops are the one-bucket table, a sample is
made from its arguments (no per-process side channel), upstream-style overrides still get the
draw's generator, and prefetch takes (reader, path) lists."""
from __future__ import annotations

import json
import random

import pytest
import torch

from src.datasets.samplers.draws import Draw
from src.datasets.sample.files import LOCAL_FILES
from src.datasets.storage.prefetch import prefetch
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image


@pytest.fixture
def data(tmp_path):
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(6):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120 + 20 * i, 100, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i}'})
    (tmp_path / 'data.json').write_text(json.dumps(records))
    return tmp_path


def build(data, tokenizer, prompt_template, cls=CaptionDataset, **options):
    return cls(str(data / 'data.json'), image_folder=str(data / 'images'), tokenizer=tokenizer,
               prompt_template=prompt_template, image_size=64, min_image_size=8, **options)


def test_square_crops_are_the_one_bucket_table_recorded_as_no_buckets(data, tokenizer, prompt_template, monkeypatch):
    monkeypatch.setattr('src.datasets.sample.records.header_size', lambda *a: pytest.fail('read a size'))
    dataset = build(data, tokenizer, prompt_template)
    table = dataset.bucket_table
    assert table.shapes == ((64, 64),) and not table.placed and table.record() is None and len(table) == 1
    assert table.label() == 'square64' and table.key(0) == '64x64'
    # what upstream configs, samplers, the report and checkpoints read stays "no buckets"
    assert dataset.buckets is None and dataset.bucket_ids is None
    key = dataset.record_rules.key(dataset.picture_sizes)
    assert key['buckets'] is None and 'latents' not in key
    assert [dataset.target_of(i) for i in range(len(dataset))] == [(64, 64)] * len(dataset)
    sample = dataset[0]
    assert sample['pixel_values'].shape == (3, 64, 64) and 'original_size' not in sample
    assert dataset.replacement(0, random.Random(1)) == random.Random(1).randrange(len(dataset))


def test_a_configured_table_is_placed(data, tokenizer, prompt_template):
    dataset = build(data, tokenizer, prompt_template, buckets=dict(area=64 * 64, divisor=16))
    assert dataset.bucket_table is dataset.buckets and dataset.buckets.placed
    sample = dataset[0]
    assert sample['pixel_values'].shape[1:] == dataset.target_of(0)
    assert {'original_size', 'crop_coords'} <= set(sample)


def test_a_sample_is_made_from_its_arguments(data, tokenizer, prompt_template):
    dataset = build(data, tokenizer, prompt_template, unconditional=0.5)
    first = dataset.prepare_data(2, rng=random.Random(7))
    dataset.prepare_data(3, rng=random.Random(8))  # another sample in between changes nothing
    again = dataset.prepare_data(2, rng=random.Random(7))
    assert torch.equal(first['pixel_values'], again['pixel_values'])
    assert torch.equal(first['input_ids'], again['input_ids'])
    conditional = build(data, tokenizer, prompt_template, unconditional=0)
    given = conditional.prompts.encode(conditional.caption_prompt('something else'))
    assert torch.equal(conditional.prepare_data(2, rng=random.Random(1), prompt_ids=given)['input_ids'], given)
    # the process keeps its own stream and failures, and nothing of a sample
    assert set(vars(dataset._state())) == {'pid', 'rng', 'tracker'}


class UpstreamStyle(CaptionDataset):
    """A subclass written against upstream: ``prepare_data(idx)``, no generator in its signature."""

    def prepare_data(self, idx):
        sample = super().prepare_data(idx)
        sample['seen'] = int(idx)
        return sample


class GeneratorOnly(CaptionDataset):
    """A subclass that takes the generator and not the batch's prompt ids."""

    def prepare_data(self, idx, rng=None):
        return super().prepare_data(idx, rng)


@pytest.mark.parametrize('cls', [UpstreamStyle, GeneratorOnly])
def test_an_override_gets_the_draw_s_generator_as_it_asks(data, tokenizer, prompt_template, cls):
    ours = build(data, tokenizer, prompt_template, seed=3, unconditional=0.5)
    theirs = build(data, tokenizer, prompt_template, cls, seed=3, unconditional=0.5)
    for position in range(6):
        draw = Draw(position % len(ours), position, seed=0, key=(0, position))
        mine, upstream = ours[draw], theirs[draw]
        assert upstream.get('seen', int(draw)) == int(draw)
        assert torch.equal(mine['pixel_values'], upstream['pixel_values'])
        assert torch.equal(mine['input_ids'], upstream['input_ids'])
    batch = theirs.__getitems__([0, 1, 2])  # a batch: each sample made as the override asks
    assert [sample['image_file'] for sample in batch] == ['0.jpg', '1.jpg', '2.jpg']


class Remote:
    """A reader in object storage, as prefetch sees it: ``remote`` and ``prefetch(samples)``."""
    remote = True

    def __init__(self):
        self.told = []

    def prefetch(self, samples):
        self.told.append(samples)


def test_prefetch_tells_each_remote_reader_its_paths_by_sample():
    images, captions = Remote(), Remote()
    prefetch([[(captions, 'c/0.json'), (images, 'i/0.jpg'), (images, 'i/0b.jpg')],
              [(LOCAL_FILES, 'local.jpg'), (images, 'i/1.jpg')]])
    assert images.told == [[['i/0.jpg', 'i/0b.jpg'], ['i/1.jpg']]]
    assert captions.told == [[['c/0.json']]]


def test_a_record_s_files_are_listed_only_where_a_reader_is_remote(data, tokenizer, prompt_template):
    dataset = build(data, tokenizer, prompt_template)
    assert not dataset.files.remote
    assert dataset.files.of_record(dataset.index[0], 'image', dataset.cap_keys, True) == []
