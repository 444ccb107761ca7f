"""Duplicates: tools/find_duplicates.py clusters exact copies (same bytes) and re-encoded ones
(perceptual hash) into the index's dup_cluster column; filters=dict(dedup=True) keeps one of each."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.datasets.index.sample_index import SampleIndex
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare.datasets import prepare_midjourney23m
from src.prepare.duplicates import clusters_of
from src.synthetic.downloads import DEFAULT_ROOTS, make_midjourney23m

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import find_duplicates  # noqa: E402

pytest.importorskip('imagehash')


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The Midjourney miniature with an exact copy of one picture and a re-encoded (smaller, other
    quality, other format) copy of another, each a record of its own."""
    root = tmp_path / DEFAULT_ROOTS['midjourney23m']
    make_midjourney23m(root, n=16, faults=False)
    assert prepare_midjourney23m(str(root), num_processes=1).exit_code() == 0
    records = json.loads((root / 'data.json').read_text())
    exact, resized = records[2], records[9]
    (root / 'images/copy.bin.jpg').write_bytes((root / exact['image']).read_bytes())
    picture = Image.open(root / resized['image']).convert('RGB')
    picture = picture.resize((picture.width * 3 // 4, picture.height * 3 // 4))
    out = io.BytesIO()
    picture.save(out, 'WEBP', quality=70)
    (root / 'images/reencoded.webp').write_bytes(out.getvalue())
    records.insert(5, {**exact, 'image': 'images/copy.bin.jpg'})
    records.append({**resized, 'image': 'images/reencoded.webp', 'caption': 'another caption for it'})
    (root / 'data.json').write_text(json.dumps(records))
    monkeypatch.chdir(tmp_path)
    return root, exact['image'], resized['image']


def test_dedup_keeps_one_of_each_planted_pair(planted, tokenizer_path, tokenizer, prompt_template, caplog):
    root, exact, resized = planted
    with caplog.at_level('INFO', logger='find_duplicates'):
        config = str(REPO / 'configs/datasets/midjourney23m.py')
        assert find_duplicates.main([config, '--tokenizer', tokenizer_path]) == 0
    assert '1 exact and 1 near duplicates in 2 clusters' in caplog.text
    index = SampleIndex.load(root / 'data.json')
    clusters = {index[i]['image']: index[i].get('dup_cluster') for i in range(len(index))}
    assert clusters[exact] == clusters['images/copy.bin.jpg'] is not None
    assert clusters[resized] == clusters['images/reencoded.webp'] is not None
    assert sum(value is not None for value in clusters.values()) == 4
    def build(**options):
        return CaptionDataset(str(root / 'data.json'), image_folder=str(root), tokenizer=tokenizer,
                              prompt_template=prompt_template, image_size=32, **options)
    everything, deduplicated = build(), build(filters=dict(dedup=True))
    kept = {deduplicated.index[i]['image'] for i in range(len(deduplicated))}
    assert len(deduplicated) == len(everything) - 2
    assert {exact, resized} <= kept and not kept & {'images/copy.bin.jpg', 'images/reencoded.webp'}
    assert deduplicated.funnel[-1] == ['duplicates', len(everything), len(everything) - 2]


def test_clusters_join_near_hashes_through_a_chain_and_leave_unreadable_alone():
    base = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
    flips = [0, 0b111, 0b11111 << 40, 0b11 << 60 | 0b11]
    phashes = np.array([base ^ np.uint64(flip) for flip in flips] + [0], dtype=np.uint64)
    digests = [b'a', b'b', b'c', b'd', None]
    cluster, exact, near = clusters_of(digests, phashes, max_distance=4)
    # 0-1 differ by 3 bits, 0-3 by 4 (1-3 by 3): one cluster; 2 is 5 bits from 0; 4 is unreadable.
    assert cluster.tolist() == [0, 0, -1, 0, -1] and (exact, near) == (0, 2)
    cluster, exact, near = clusters_of([b'a', b'a', None], np.zeros(3, np.uint64), max_distance=4)
    assert cluster.tolist() == [0, 0, -1] and (exact, near) == (1, 0)
