"""tools/inspect_dataset.py: its numbers equal those computed here independently, and the page holds
its plots and preview."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.datasets.index import prompt_ids
from src.prepare.datasets import prepare_blip3o60k, prepare_midjourney23m
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
    assert page.count('data:image/png;base64') >= 3 and page.count('data:image/jpeg;base64') == 8  # plots, preview
    assert stats['decoded'] == len(expected.samples) and stats['decode_failures'] == {}
    assert 'lose IMG_START_TOKEN' in page and os.path.getsize('report/report.html') > 10_000

    # Its captions are in caption files: --all-prompts has none to store, and the page says so.
    code = inspect_dataset.main([str(REPO / 'configs/datasets/blip3o60k.py'), '--out', 'all', '--all-prompts',
                                 '--preview', '0', '--cfg-options',
                                 f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}'])
    assert code == 0
    (stats,) = json.loads(Path('all/report.json').read_text())
    assert stats['all_prompts']['stored'] == 0 and stats['all_prompts']['not_stored'] == len(expected.samples)
    page = Path('all/report.html').read_text()
    assert f'{len(expected.samples)} records have their caption in an annotation file' in page


def test_all_prompts_counts_every_record_from_the_stored_ids(tmp_path, monkeypatch, tokenizer_path, tokenizer,
                                                              prompt_template):
    # Midjourney's captions are in its index, so every record's prompt ids are stored.
    expected = MAKERS['midjourney23m'](tmp_path / DEFAULT_ROOTS['midjourney23m'], n=12, faults=False)
    assert prepare_midjourney23m(str(expected.root), num_processes=1).finish() == 0
    lengths = [len(tokenizer.encode(prompt_template['INSTRUCTION'].format(
        input=prompt_template['GENERATION'].format(input=caption)) + prompt_template['IMG_START_TOKEN']))
        for caption in expected.samples.values()]
    max_length = int(np.median(lengths))  # some prompts on each side of it
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(REPO / 'tools'))
    import inspect_dataset
    options = ['--cfg-options', f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}',
               f'dataset.max_length={max_length}', 'dataset.image_size=64']
    config = str(REPO / 'configs/datasets/midjourney23m.py')
    assert inspect_dataset.main([config, '--out', 'report', '--sample', '3', '--preview', '1', '--all-prompts',
                                 *options]) == 0
    (stats,) = json.loads(Path('report/report.json').read_text())

    whole = stats['all_prompts']
    assert stats['sampled'] == len(stats['prompt_tokens']) == 3  # the sample stays a sample
    assert whole['stored'] == len(lengths) and whole['not_stored'] == 0
    assert whole['cut'] == whole['lose_image_start'] == sum(n > max_length for n in lengths) > 0
    assert whole['longest'] == max(lengths) and whole['median'] == float(np.median(lengths))
    edges, counts = whole['histogram']['edges'], whole['histogram']['counts']
    assert counts == np.histogram(lengths, bins=edges)[0].tolist() and sum(counts) == len(lengths)
    assert edges[0] == min(lengths) - 0.5 and max(lengths) < edges[-1] and len(set(np.diff(edges))) == 1
    page = Path('report/report.html').read_text()
    assert f'all {len(lengths)} stored' in page and f'{whole["cut"]} of {len(lengths)} prompts lose' in page

    # The ids are stored where a dataset with pretokenize=True finds them: nothing is tokenized again.
    monkeypatch.setattr(prompt_ids, 'tokenize_index', lambda *a, **k: pytest.fail('tokenized again'))
    assert inspect_dataset.main([config, '--out', 'again', '--sample', '3', '--preview', '0', '--all-prompts',
                                 *options]) == 0
    assert json.loads(Path('again/report.json').read_text())[0]['all_prompts'] == whole


def test_images_that_cannot_be_decoded_are_counted_not_hidden(tmp_path, monkeypatch, tokenizer_path):
    """The most common real fault, a file that is not the picture its header promised, is invisible
    to the index: the report reads records as training does and counts what fails by reason."""
    expected = MAKERS['blip3o60k'](tmp_path / DEFAULT_ROOTS['blip3o60k'], n=12, faults=False)
    assert prepare_blip3o60k(str(expected.root), num_processes=1).finish() == 0
    broken = sorted(expected.samples)[:2]
    for image in broken:
        path = expected.root / 'raw' / image
        path.write_bytes(path.read_bytes()[:200])  # the header survives, the pixels do not
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(REPO / 'tools'))
    import inspect_dataset
    options = ['--tokenizer', tokenizer_path, '--cfg-options', 'dataset.image_size=64']
    assert inspect_dataset.main([str(REPO / 'configs/datasets/blip3o60k.py'), '--out', 'verified', '--verify',
                                 *options]) == 0
    (stats,) = json.loads(Path('verified/report.json').read_text())
    assert stats['decoded'] == 12 and stats['decoded_all'] and stats['decode_failures'] == {'bad-image': 2}
    assert all(any(image in line for line in stats['decode_examples']) for image in broken)
    page = Path('verified/report.html').read_text()
    assert '2 of 12 records read failed (bad-image 2)' in page and page.count('data:image/jpeg;base64') == 8
    assert inspect_dataset.main([str(REPO / 'configs/datasets/blip3o60k.py'), '--out', 'sampled', '--decode', '6',
                                 *options]) == 0
    (stats,) = json.loads(Path('sampled/report.json').read_text())
    assert stats['decoded'] == 6 and not stats['decoded_all']


def test_the_editing_and_image_to_text_datasets_are_reported(tmp_path, monkeypatch, tokenizer_path):
    from src.prepare.datasets import prepare_megalith10m
    from src.synthetic.downloads import FAMILY_MAKERS, FAMILY_ROOTS, make_caption_layout
    FAMILY_MAKERS['megalith10m'](tmp_path / FAMILY_ROOTS['megalith10m'], n=4, faults=False)
    assert prepare_megalith10m(str(tmp_path / FAMILY_ROOTS['megalith10m']), num_processes=1).exit_code() == 0
    make_caption_layout(tmp_path, 'data/cc3m/cc3m_densecaps.json', 'data/cc3m/raw', 'caption', 'data/cc3m/raw', n=4)
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(REPO / 'tools'))
    import inspect_dataset
    for config in ('megalith10m_reconstruct', 'cc3m_image2text'):
        assert inspect_dataset.main([str(REPO / f'configs/datasets/{config}.py'), '--out', config, '--tokenizer',
                                     tokenizer_path, '--cfg-options', 'dataset.image_size=64']) == 0
        (stats,) = json.loads(Path(config, 'report.json').read_text())
        assert stats['usable'] == stats['decoded'] == 4 and stats['decode_failures'] == {}
        assert stats['cut'] == 0 and len(stats['prompt_tokens']) == 4
        assert Path(config, 'report.html').read_text().count('data:image/jpeg;base64') == 4
