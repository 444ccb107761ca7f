"""Which records a dataset keeps is decided once per index cache and options, then mapped: later
constructions make no whole-column pass, log the same drops, and spawned workers map the same file."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from src.datasets.index.sample_index import SampleIndex
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image


@pytest.fixture
def data(tmp_path):
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(12):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120, 100, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i}', 'width': 120, 'height': 100})
    records[3] = {'caption': 'no image'}
    records[5]['width'] = 40  # too small
    records[8]['image'] = '../outside.jpg'
    (tmp_path / 'data.json').write_text(json.dumps(records))
    return tmp_path


def build(data, tokenizer, prompt_template, **options):
    return CaptionDataset(str(data / 'data.json'), image_folder=str(data / 'images'), tokenizer=tokenizer,
                          prompt_template=prompt_template, **options)


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr('src.datasets.sample.records.print_log',
                        lambda msg, logger=None, level=None: lines.append(msg))
    return lines


def test_the_kept_records_are_stored_and_mapped_by_later_constructions(data, tokenizer, prompt_template, logged,
                                                                       monkeypatch):
    first = build(data, tokenizer, prompt_template)
    first_lines = list(logged)
    assert len(first) == 9 and any('(dropped: 1 without' in line for line in first_lines)
    logged.clear()
    monkeypatch.setattr(SampleIndex, 'has_value', lambda *a: pytest.fail('a whole-column pass'))
    again = build(data, tokenizer, prompt_template)
    assert logged == first_lines  # the same drops said the same way
    assert isinstance(again.index._rows, np.memmap)
    assert [again.index[i]['image'] for i in range(len(again))] == [first.index[i]['image'] for i in range(len(first))]
    # A spawned worker maps the same file rather than receiving the rows.
    restored = pickle.loads(pickle.dumps(again.index))
    assert isinstance(restored._rows, np.memmap) and restored[4]['image'] == again.index[4]['image']


def test_other_options_or_another_index_decide_again(data, tokenizer, prompt_template):
    assert len(build(data, tokenizer, prompt_template)) == 9
    assert len(build(data, tokenizer, prompt_template, min_image_size=30)) == 10
    assert len(build(data, tokenizer, prompt_template, allow_outside_paths=True)) == 10
    assert len(build(data, tokenizer, prompt_template, train_number_samples=4)) == 3
    records = json.loads((data / 'data.json').read_text())
    (data / 'data.json').write_text(json.dumps(records[:6]))
    assert len(build(data, tokenizer, prompt_template)) == 4
    assert len(list(data.glob('.data.json.sampleindex.arrow.select-*'))) >= 5


def test_a_damaged_selection_is_decided_again(data, tokenizer, prompt_template):
    first = build(data, tokenizer, prompt_template)
    folder = next(data.glob('.data.json.sampleindex.arrow.select-*[!k]'))
    (folder / 'drops.json').write_text('{broken')
    assert len(build(data, tokenizer, prompt_template)) == len(first) == 9
