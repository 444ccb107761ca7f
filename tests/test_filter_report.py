"""The report's funnel and score histograms, and inspect_dataset --filters previewing a filter."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.downloads import DEFAULT_ROOTS, make_midjourney23m

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
import add_columns  # noqa: E402
import inspect_dataset  # noqa: E402

pytest.importorskip('matplotlib')


def test_inspect_dataset_previews_filters_with_the_funnel_and_score_histograms(tmp_path, monkeypatch, tokenizer_path):
    root = tmp_path / DEFAULT_ROOTS['midjourney23m']
    make_midjourney23m(root, n=24, faults=False)
    assert prepare_midjourney23m(str(root), num_processes=1).exit_code() == 0
    monkeypatch.chdir(tmp_path)
    images = [record['image'] for record in json.loads((root / 'data.json').read_text())]
    rng = np.random.default_rng(0)
    pd.DataFrame({'image': images[:-3], 'aesthetic': rng.uniform(3, 8, len(images) - 3),
                  'punsafe': rng.uniform(0, 0.3, len(images) - 3)}).to_parquet(tmp_path / 'scores.parquet')
    config = str(REPO / 'configs/datasets/midjourney23m.py')
    assert add_columns.main([config, str(tmp_path / 'scores.parquet')]) == 0
    filters = "{'aspect': (0.5, 2.0), 'where': [('aesthetic', '>=', 5.0), ('punsafe', '<', 0.2)]}"
    assert inspect_dataset.main([config, '--out', 'report', '--tokenizer', tokenizer_path, '--sample', '8',
                                 '--decode', '2', '--preview', '1', '--cfg-options', 'dataset.image_size=32',
                                 '--filters', filters]) == 0
    numbers = json.loads(Path('report/report.json').read_text())[0]['filters']
    steps = [label for label, _ in numbers['funnel']]
    assert steps == ['records in the index', "kept by the dataset's own checks (image path, size, aspect)",
                     'by aspect', "where aesthetic >= 5.0", "where punsafe < 0.2"]
    counts = [count for _, count in numbers['funnel']]
    assert counts[0] == 24 and counts == sorted(counts, reverse=True) and counts[-1] < counts[1]
    assert set(numbers['scores']) == {'aesthetic', 'punsafe'}
    assert numbers['scores']['aesthetic']['missing'] == 3 and sum(numbers['scores']['aesthetic']['counts']) == 21
    assert numbers['scores']['aesthetic']['thresholds'] == [['>=', 5.0]]
    page = Path('report/report.html').read_text()
    assert 'records after each step (the funnel)' in page or 'filters and scores' in page
    assert page.count('<img src="data:image/png') >= 4  # funnel + two histograms + the others

    assert inspect_dataset.main([config, '--out', 'bad', '--filters', "{'aspect': (2, 1)}"]) == 2
