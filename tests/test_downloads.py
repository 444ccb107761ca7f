"""The miniature downloads hold what their Expected says, laid out as each guide's download."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS, make_all
from src.synthetic.downloads.parts import HOSTILE_ABSOLUTE, HOSTILE_ESCAPE, HOSTILE_LINK

# Where the guides extract each dataset's tars: (tar glob, folder, one folder per tar stem?).
EXTRACTION = {
    'midjourney23m': ('raw/images/**/*.tar', 'images', False),
    'laion6m': ('*/*.tar', None, False),  # in place: raw/ and captions/
    'dalle3': ('data/*.tar', 'data', False),
    'redcaps5m': ('raw/*.tar', 'raw', False),
    'blip3o60k': ('raw/*.tar', 'raw', True),
}


def extract_like_the_guide(name: str, root: Path) -> None:
    """Extract every tar as the guide does, with tarfile's 'data' filter refusing unsafe members
    and keeping the complete members of a truncated tar."""
    pattern, folder, per_stem = EXTRACTION[name]
    for tar_path in sorted(root.glob(pattern)):
        dest = tar_path.parent if folder is None else root / folder
        if per_stem:
            dest = dest / tar_path.stem
        with tarfile.open(tar_path, 'r|') as tar:
            try:
                for member in tar:
                    try:
                        tar.extract(member, dest, filter='data')
                    except tarfile.FilterError:
                        continue
            except tarfile.ReadError:
                (dest / member.name).unlink(missing_ok=True)  # the cut member's partial file


def caption_of(name: str, root: Path, image: str) -> str:
    """The caption the raw download holds for ``image``, read the way the config reads it."""
    stem = Path(image).with_suffix('')
    if name == 'midjourney23m':
        table = pd.concat(pd.read_parquet(p) for p in sorted(root.glob('raw/table-*.parquet')))
        return table.set_index('filename').loc[Path(image).name, 'prompt']
    if name == 'laion6m':
        record = json.loads((root / 'captions' / f'{stem}.json').read_text())
        return record.get('re_caption', record.get('caption'))
    if name == 'dalle3':
        return json.loads((root / 'data' / f'{stem}.json').read_text())['short_caption']
    if name == 'redcaps5m':
        return json.loads((root / 'raw' / f'{stem}.json').read_text())['re_caption']
    return (root / 'raw' / f'{stem}.txt').read_text().strip()


@pytest.fixture(scope='module')
def downloads(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('data')
    expected = make_all(data_dir, n=8, hostile=True, truncated_tar=True)
    for name, exp in expected.items():
        extract_like_the_guide(name, exp.root)
    return expected


def test_roots_are_the_guides_defaults(downloads):
    for name, exp in downloads.items():
        assert exp.root.name == Path(DEFAULT_ROOTS[name]).name
        assert exp.name == name


@pytest.mark.parametrize('name', list(MAKERS))
def test_every_sample_has_a_usable_image_and_its_caption(downloads, name):
    exp = downloads[name]
    # n, plus the sample salvaged from the truncated tar (and dalle3's json naming another image)
    assert len(exp.samples) == 8 + 1 + (name == 'dalle3')
    assert len(set(exp.samples.values())) == len(exp.samples)
    for image, caption in exp.samples.items():
        with Image.open(exp.root / exp.image_folder / image) as img:
            img.load()
            w, h = img.size
        assert w > 80 and h > 80 and 0.1 < w / h < 10, image
        assert caption_of(name, exp.root, image) == caption


@pytest.mark.parametrize('name', list(MAKERS))
def test_faults_are_real_and_not_samples(downloads, name):
    exp = downloads[name]
    kinds = {f.kind for f in exp.faults}
    assert {'unsafe-member', 'truncated-member'} <= kinds and len(kinds) >= 3
    for fault in exp.faults:
        assert fault.stage in ('prepare', 'load')
        assert fault.image not in exp.samples
        tar_or_file = fault.path.split(':')[0]
        assert (exp.root / tar_or_file).exists(), fault
    for fault in exp.dropped('load'):
        assert (exp.root / exp.image_folder / fault.image).exists()
    assert exp.indexed == set(exp.samples) | {f.image for f in exp.dropped('load')}


def test_hostile_members_are_in_the_first_tar(downloads):
    for exp in downloads.values():
        first = exp.root / next(f.path for f in exp.faults if f.kind == 'unsafe-member').split(':')[0]
        with tarfile.open(first) as tar:
            names = tar.getnames()
            assert {HOSTILE_ESCAPE, HOSTILE_ABSOLUTE, HOSTILE_LINK} <= set(names)
            assert tar.getmember(HOSTILE_LINK).issym()
        assert len(exp.must_not_exist) == 3
        assert not any(p.is_symlink() or p.exists() for p in exp.must_not_exist if p != Path('/abs.txt'))


def test_truncated_tar_is_cut_inside_a_member(downloads):
    for exp in downloads.values():
        fault = next(f for f in exp.faults if f.kind == 'truncated-member')
        tar_path, member = fault.path.split(':')
        with pytest.raises(tarfile.ReadError):
            with tarfile.open(exp.root / tar_path) as tar:
                tar.getmembers()
        assert not (exp.root / exp.image_folder / fault.image).exists()


def test_indexes_name_every_sample_and_the_index_faults(downloads):
    laion = json.loads((downloads['laion6m'].root / 'data.json').read_text())
    assert {e['image'] for e in laion} >= set(downloads['laion6m'].samples)
    assert {e['annotation'] for e in laion} == {e['image'].replace('.jpg', '.json') for e in laion}
    redcaps = downloads['redcaps5m']
    entries = json.loads((redcaps.root / 'redcaps5m_data.json').read_text())
    missing = [e['image'] for e in entries if not (redcaps.root / 'raw' / e['image']).exists()]
    assert set(missing) == {f.image for f in redcaps.dropped('prepare')}
    blip = downloads['blip3o60k']
    assert {e['image'] for e in json.loads((blip.root / 'data.json').read_text())} == \
        set(blip.samples) | {f.image for f in blip.dropped('prepare')}


def test_same_seed_same_bytes_and_options_respected(tmp_path):
    for name, make in MAKERS.items():
        a, b = make(tmp_path / 'a' / name, n=3, seed=7), make(tmp_path / 'b' / name, n=3, seed=7)
        assert a.samples == b.samples and a.faults == b.faults
        files_a = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a' / name).rglob('*') if p.is_file())
        files_b = sorted(p.relative_to(tmp_path / 'b') for p in (tmp_path / 'b' / name).rglob('*') if p.is_file())
        assert files_a == files_b
        assert all((tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes() for f in files_a)
        clean = make(tmp_path / 'clean' / name, n=3, faults=False)
        assert len(clean.samples) == 3 and clean.faults == [] and clean.must_not_exist == []


def test_index_can_be_left_out(tmp_path):
    for name in ('laion6m', 'blip3o60k'):
        exp = MAKERS[name](tmp_path / name, n=3, with_index=False)
        assert not (exp.root / exp.data_path).exists() and len(exp.samples) == 3


def test_other_caption_fields_hold_what_the_raw_files_hold(downloads):
    dalle3 = downloads['dalle3']
    for image, long_caption in dalle3.other_captions['long_caption'].items():
        meta = json.loads((dalle3.root / 'data' / Path(image).with_suffix('.json')).read_text())
        assert meta['long_caption'] == long_caption != dalle3.samples[image]
        assert meta['short_caption2'] == [dalle3.other_captions['short_caption2'][image]]
    for name, folder in (('laion6m', 'captions'), ('redcaps5m', 'raw')):
        exp = downloads[name]
        assert exp.other_captions['caption']
        for image, caption in exp.other_captions['caption'].items():
            record = json.loads((exp.root / folder / str(Path(image).with_suffix('.json'))).read_text())
            assert record['caption'] == caption != exp.samples[image]
