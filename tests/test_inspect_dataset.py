"""tools/inspect_dataset.py: its numbers equal those computed here independently, and the page holds
its plots and preview."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PIL import Image

from src.prepare.datasets import prepare_blip3o60k
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS

REPO = Path(__file__).resolve().parents[1]


def test_report_numbers_equal_an_independent_count(tmp_path, monkeypatch, tokenizer_path, tokenizer, prompt_template):
    expected = MAKERS['blip3o60k'](tmp_path / DEFAULT_ROOTS['blip3o60k'], n=12)  # with dropped faults
    assert prepare_blip3o60k(str(expected.root), num_processes=1).finish() == 0
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(REPO / 'tools'))
    import inspect_dataset
    code = inspect_dataset.main([str(REPO / 'configs/datasets/blip3o60k.py'), '--out', 'report', '--cfg-options',
                                 f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}',
                                 'dataset.max_length=30', 'dataset.image_size=64'])
    assert code == 0
    (stats,) = json.loads(Path('report/report.json').read_text())

    lengths = []
    for image, caption in expected.samples.items():
        prompt = prompt_template['INSTRUCTION'].format(input=prompt_template['GENERATION'].format(input=caption))
        lengths.append(len(tokenizer.encode(prompt + prompt_template['IMG_START_TOKEN'])))
    assert sorted(stats['prompt_tokens']) == sorted(lengths)
    assert stats['cut'] == stats['lose_image_start'] == sum(n > 30 for n in lengths)
    assert stats['records'] == stats['usable'] == len(expected.samples) == stats['sampled']
    sizes = sorted(Image.open(expected.root / 'raw' / image).size for image in expected.samples)
    assert sorted(zip(stats['widths'], stats['heights'])) == sizes and stats['sizes_from'] == 'image headers'
    assert stats['prepare_drops'] == {'no-caption': 1, 'unreadable caption': 1}
    assert stats['duplicate_captions'] == 0 and sorted(stats['caption_chars']) == sorted(map(len, expected.samples.values()))
    page = Path('report/report.html').read_text()
    assert page.count('data:image/png;base64') >= 3 + 8  # plots and the preview grid
    assert 'lose IMG_START_TOKEN' in page and os.path.getsize('report/report.html') > 10_000
