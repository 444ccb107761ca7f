"""Columns in the index: the metadata a download carries is kept by preparation, and
``tools/add_columns.py`` joins a score parquet by key (image path, URL) without touching images;
the index cache keeps them as typed, memory-mapped columns, which filters and extra_keys use."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.datasets.index.sample_index import SampleIndex
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare import datasets
from src.prepare.metadata import carried_columns
from src.prepare.recap import DownloadOptions
from src.synthetic.downloads import DEFAULT_ROOTS, make_dalle3, make_midjourney23m, make_recap
from src.synthetic.url_server import UrlServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import add_columns  # noqa: E402


@pytest.fixture
def midjourney(tmp_path, monkeypatch):
    root = tmp_path / DEFAULT_ROOTS['midjourney23m']
    make_midjourney23m(root, n=30, faults=False)
    assert datasets.prepare_midjourney23m(str(root), num_processes=1).exit_code() == 0
    monkeypatch.chdir(tmp_path)
    return root


def scores_for(images: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scored = images[::2] + images[1::4]  # some records get no value
    return pd.DataFrame({'image': scored + ['images/not-in-the-index.jpg'],
                         'aesthetic': rng.uniform(3, 8, len(scored) + 1).round(3),
                         'punsafe': rng.uniform(0, 0.2, len(scored) + 1),
                         'licence': rng.choice(['cc-by', 'cc0'], len(scored) + 1)})


def test_a_score_parquet_is_joined_by_image_path_and_filtered_as_pandas_filters(midjourney, tmp_path, tokenizer,
                                                                               prompt_template, caplog):
    records = json.loads((midjourney / 'data.json').read_text())
    images_before = sorted(p.name for p in (midjourney / 'images').iterdir())
    scores = scores_for([record['image'] for record in records])
    scores.to_parquet(tmp_path / 'scores.parquet')
    config = str(REPO / 'configs/datasets/midjourney23m.py')
    with caplog.at_level('INFO', logger='add_columns'):
        assert add_columns.main([config, str(tmp_path / 'scores.parquet'), '--key', 'image']) == 0
    summary = caplog.messages[-1]
    assert f'into {len(scores) - 1} of {len(records)} records' in summary
    assert '1 keys of the parquet match no' in summary
    assert sorted(p.name for p in (midjourney / 'images').iterdir()) == images_before  # images untouched

    index = SampleIndex.load(midjourney / 'data.json')
    assert index.cache is not None and str(index.column_type('aesthetic')) == 'double'
    assert str(index.column_type('licence')) == 'string'
    filters = dict(aspect=(0.6, 1.8), caption_words=(13, 18), where=[('aesthetic', '>=', 5.0), ('punsafe', '<', 0.1)])
    dataset = CaptionDataset(str(midjourney / 'data.json'), image_folder=str(midjourney), tokenizer=tokenizer,
                             prompt_template=prompt_template, image_size=32, filters=filters,
                             extra_keys=['aesthetic', 'licence'])
    frame = pd.DataFrame(records).merge(scores, on='image', how='left')
    words = frame.caption.str.split().str.len()
    keep = ((frame.width / frame.height).between(0.6, 1.8) & words.between(13, 18) & (frame.aesthetic >= 5.0)
            & (frame.punsafe < 0.1))
    assert [dataset.index[i]['image'] for i in range(len(dataset))] == frame.image[keep].tolist()
    assert 0 < len(dataset) < len(records)
    sample = dataset[0]
    row = scores.set_index('image').loc[sample['image_file']]
    assert sample['aesthetic'] == row.aesthetic and sample['licence'] == row.licence

    # A re-join replaces the columns: new scores, the same names.
    scores_for([record['image'] for record in records], seed=1).to_parquet(tmp_path / 'scores.parquet')
    assert add_columns.main([config, str(tmp_path / 'scores.parquet')]) == 0
    again = SampleIndex.load(midjourney / 'data.json')
    assert again.columns.count('aesthetic') == 1 and (midjourney / 'data.json.before-columns').exists()


def test_the_dalle3_table_is_joined_by_its_filename_column(tmp_path, monkeypatch):
    root = tmp_path / DEFAULT_ROOTS['dalle3']
    make_dalle3(root, n=8, faults=False)
    assert datasets.prepare_dalle3(str(root), num_processes=1).exit_code() == 0
    monkeypatch.chdir(tmp_path)
    table = pq.read_table(root / 'dalle3.parquet')
    files = table.column('filename').to_pylist()
    pq.write_table(pa.table({'image': files[:5], 'clip_score': [0.1, 0.2, 0.3, 0.4, 0.5]}), tmp_path / 's.parquet')
    assert add_columns.main([str(REPO / 'configs/datasets/dalle3.py'), str(tmp_path / 's.parquet')]) == 0
    joined = pq.read_table(root / 'dalle3.parquet')
    assert joined.column('clip_score').to_pylist() == [0.1, 0.2, 0.3, 0.4, 0.5] + [None] * (len(files) - 5)
    assert joined.column('filename').to_pylist() == files


def test_a_wrong_key_says_what_the_parquet_and_index_have(midjourney, tmp_path, caplog):
    pd.DataFrame({'path': ['x'], 'score': [1.0]}).to_parquet(tmp_path / 'bad.parquet')
    config = str(REPO / 'configs/datasets/midjourney23m.py')
    assert add_columns.main([config, str(tmp_path / 'bad.parquet')]) == 1
    assert "no 'image' column to join by" in caplog.text
    pd.DataFrame({'image': ['a', 'a'], 'score': [1.0, 2.0]}).to_parquet(tmp_path / 'twice.parquet')
    assert add_columns.main([config, str(tmp_path / 'twice.parquet')]) == 1
    assert 'repeated' in caplog.text


def test_metadata_kept_from_a_download_is_numbers_and_short_texts():
    kept = carried_columns({'url': 'http://127.0.0.1/a.jpg', 'key': '000001', 'width': 640, 'height': 480,
                            'caption': 'alt text', 're_caption': 'long', 'exif': '{...}', 'status': 'success',
                            'aesthetic': 5.5, 'nan': float('nan'), 'long': 'x' * 1000, 'tags': ['a']})
    assert kept == {'url': 'http://127.0.0.1/a.jpg', 'key': '000001', 'width': 640, 'height': 480,
                    'status': 'success', 'aesthetic': 5.5}


@pytest.mark.slow
def test_the_url_route_keeps_img2dataset_columns_and_joins_by_url(tmp_path, monkeypatch, tokenizer, prompt_template):
    root = tmp_path / DEFAULT_ROOTS['laion6m']
    with UrlServer() as server:
        make_recap('laion6m', root, server)
        report = datasets.prepare_laion6m(str(root), download=DownloadOptions(timeout=1, samples_per_shard=4,
                                                                              thread_count=4, allow_local_urls=True),
                                         num_processes=1)
        assert report.finish() == 0, report.summary()
    records = json.loads((root / 'data.json').read_text())
    assert records and all({'url', 'key', 'width', 'height'} <= set(record) for record in records)
    assert not any('caption' in key for record in records for key in record)
    monkeypatch.chdir(tmp_path)
    urls = [record['url'] for record in records]
    pq.write_table(pa.table({'url': urls[1:], 'watermark': [0.5] * (len(urls) - 1)}), tmp_path / 'w.parquet')
    assert add_columns.main([str(REPO / 'configs/datasets/laion6m_recap.py'), str(tmp_path / 'w.parquet'),
                             '--key', 'url']) == 0
    index = SampleIndex.load(root / 'data.json')
    watermark = index.numbers('watermark')
    assert watermark.tolist()[1:] == [0.5] * (len(urls) - 1) and np.isnan(watermark[0])
    dataset = CaptionDataset(str(root / 'data.json'), image_folder=str(root / 'raw'), cap_folder=str(root / 'raw'),
                             cap_source='re_caption', tokenizer=tokenizer, prompt_template=prompt_template,
                             image_size=32, filters=dict(min_side=1, where=[('watermark', '<', 0.6)]))
    assert len(dataset) == len(records) - 1


def test_keys_of_another_type_or_a_file_that_is_no_parquet_are_refused(midjourney, tmp_path, caplog):
    config = str(REPO / 'configs/datasets/midjourney23m.py')
    pd.DataFrame({'image': [[1, 2]], 'score': [1.0]}).to_parquet(tmp_path / 'lists.parquet')
    assert add_columns.main([config, str(tmp_path / 'lists.parquet')]) == 1
    assert 'cannot be matched' in caplog.text
    (tmp_path / 'not.parquet').write_text('image,score\n')
    assert add_columns.main([config, str(tmp_path / 'not.parquet')]) == 1
    assert 'not a readable parquet table' in caplog.text
