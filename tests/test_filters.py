"""Filters on the dataset (``filters=dict(...)``): exactly the records a pandas reference keeps,
decided once per index cache, each filter's drops counted in the "Loaded" line."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from src.datasets.index.sample_index import SampleIndex
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.downloads import make_midjourney23m

from test_selection import logged  # noqa: F401  (the fixture: the dataset's log lines)

FILTERS = dict(aspect=(0.5, 2.0), caption_words=(13, 19), min_side=120,
               where=[('aesthetic', '>=', 5.0), ('source', '!=', 'web')])


@pytest.fixture(scope='module')
def miniature(tmp_path_factory):
    """The Midjourney miniature, prepared, with captions of many lengths and a score and a text
    column (null for some records) in its index."""
    expected = make_midjourney23m(tmp_path_factory.mktemp('mj') / 'midjourney-23m', n=40, faults=False)
    assert prepare_midjourney23m(str(expected.root), num_processes=1).exit_code() == 0
    records = json.loads((expected.root / 'data.json').read_text())
    rng = random.Random(0)
    for i, record in enumerate(records):
        record['caption'] += ' word' * rng.randrange(0, 8)
        if i % 7:
            record['aesthetic'] = round(rng.uniform(3, 8), 2)
        if i % 5:
            record['source'] = rng.choice(['web', 'art', 'photo'])
    (expected.root / 'data.json').write_text(json.dumps(records))
    return expected.root


def build(root, tokenizer, prompt_template, **options):
    return CaptionDataset(str(root / 'data.json'), image_folder=str(root), tokenizer=tokenizer,
                          prompt_template=prompt_template, image_size=64, **options)


def pandas_reference(root) -> list[str]:
    frame = pd.read_json(root / 'data.json')
    shorter = frame[['width', 'height']].min(axis=1)
    aspect = frame.width / frame.height
    words = frame.caption.str.split().str.len()
    keep = ((shorter >= 120) & aspect.between(0.5, 2.0) & words.between(13, 19) & (frame.aesthetic >= 5.0)
            & frame.source.notna() & (frame.source != 'web'))
    return frame.image[keep].tolist()


def test_the_filters_keep_exactly_the_records_pandas_keeps(miniature, tokenizer, prompt_template, logged):
    dataset = build(miniature, tokenizer, prompt_template, filters=FILTERS)
    kept = [dataset.index[i]['image'] for i in range(len(dataset))]
    reference = pandas_reference(miniature)
    assert kept == reference and 0 < len(kept) < 40
    loaded = next(line for line in logged if line.startswith('Loaded'))
    assert f'Loaded {len(kept)} samples' in loaded and 'by aspect' in loaded and "where aesthetic >= 5.0" in loaded
    steps = [step for step, _, _ in dataset.funnel]
    assert steps == ['by min_side', 'by aspect', 'by caption_words', "where aesthetic >= 5.0", "where source != 'web'"]
    assert dataset.funnel[0][1] == 40 and dataset.funnel[-1][2] == len(kept)
    assert all(after == next_before for (_, _, after), (_, next_before, _) in zip(dataset.funnel, dataset.funnel[1:]))


def test_a_filter_is_decided_once_per_index_cache_and_options(miniature, tokenizer, prompt_template, logged,
                                                              monkeypatch):
    first = build(miniature, tokenizer, prompt_template, filters=FILTERS)
    lines = list(logged)
    logged.clear()
    monkeypatch.setattr(SampleIndex, 'numbers', lambda *a: pytest.fail('a whole-column pass'))
    again = build(miniature, tokenizer, prompt_template, filters=dict(FILTERS))
    assert logged == lines and isinstance(again.index._rows, np.memmap)
    assert again.funnel == first.funnel
    monkeypatch.undo()
    other = build(miniature, tokenizer, prompt_template, filters=dict(FILTERS, min_side=100))
    assert len(other) >= len(first)


def test_sizes_come_from_the_image_headers_where_the_index_has_none(miniature, tokenizer, prompt_template,
                                                                    tmp_path):
    records = json.loads((miniature / 'data.json').read_text())
    for record in records:
        del record['width'], record['height']
    bare = tmp_path / 'data.json'
    bare.write_text(json.dumps(records))
    dataset = CaptionDataset(str(bare), image_folder=str(miniature), tokenizer=tokenizer,
                             prompt_template=prompt_template, image_size=64, filters=FILTERS)
    assert [dataset.index[i]['image'] for i in range(len(dataset))] == pandas_reference(miniature)


def test_every_where_drops_records_without_a_value(miniature, tokenizer, prompt_template):
    high = build(miniature, tokenizer, prompt_template, filters=dict(where=[('aesthetic', '>=', 0)]))
    low = build(miniature, tokenizer, prompt_template, filters=dict(where=[('aesthetic', '!=', 1000)]))
    with_score = sum(1 for record in json.loads((miniature / 'data.json').read_text()) if 'aesthetic' in record)
    assert len(high) == len(low) == with_score < 40


@pytest.mark.parametrize('filters, message', [
    (dict(aspect=(2, 1)), 'inclusive range'),
    (dict(where=[('aesthetic', '~', 1)]), 'operator'),
    (dict(where=[('clip_score', '>', 0.3)]), "no column 'clip_score'"),
    (dict(dedup=True), 'find_duplicates'),
    (dict(min_sides=3), 'unknown'),
])
def test_a_wrong_filter_says_what_is_wrong(miniature, tokenizer, prompt_template, filters, message):
    with pytest.raises(ValueError, match=message):
        build(miniature, tokenizer, prompt_template, filters=filters)


def test_caption_words_reads_captions_held_in_annotation_files(tmp_path, tokenizer, prompt_template):
    from src.prepare.datasets import prepare_laion6m
    from src.synthetic.downloads import make_laion6m
    expected = make_laion6m(tmp_path / 'laion6m', n=16, faults=False)
    assert prepare_laion6m(str(expected.root), num_processes=1).exit_code() == 0
    build = lambda **options: CaptionDataset(  # noqa: E731
        str(expected.root / 'data.json'), image_folder=str(expected.root / 'raw'),
        cap_folder=str(expected.root / 'captions'), cap_source=['re_caption', 'caption'], tokenizer=tokenizer,
        prompt_template=prompt_template, image_size=32, **options)
    everything = build()
    words = {everything.index[i]['image']: len(everything.caption_of(everything.index[i]).split())
             for i in range(len(everything))}
    low, high = sorted(words.values())[4], sorted(words.values())[-4]
    kept = build(filters=dict(caption_words=(low, high)))
    assert [kept.index[i]['image'] for i in range(len(kept))] == [
        image for image, count in words.items() if low <= count <= high]
    assert 0 < len(kept) < len(everything)
