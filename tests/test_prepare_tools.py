"""The five prepare tools on miniature raw downloads (src/synthetic/downloads/): through their
library functions and as commands, with faults, hostile members, truncated tars, re-runs,
interruptions and slices."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.prepare import datasets
from src.prepare.extract import EXTRACT
from src.prepare.report import REPORT_NAME
from src.synthetic.downloads import DEFAULT_ROOTS, FAMILY_MAKERS, MAKERS

REPO = Path(__file__).resolve().parents[1]
ALL_MAKERS = {**MAKERS, **FAMILY_MAKERS}  # the five, and the editing data of the family
NAMES = list(ALL_MAKERS)


def prepare(name, root, **options):
    return getattr(datasets, f'prepare_{name}')(str(root), **options)


def read_index(expected) -> list[dict]:
    path = expected.root / expected.data_path
    if path.suffix == '.parquet':
        return pq.read_table(path).to_pylist()
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def indexed_images(expected) -> list[str]:
    return [row.get('image', row.get('filename')) for row in read_index(expected)]


def tree(root: Path) -> dict:
    """Every file under ``root`` (bookkeeping and the report aside) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file() and '.prepare' not in p.parts and p.name != REPORT_NAME}


def run_tool(name, *args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / f'tools/prepare_{name}.py'), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('name', NAMES)
def test_prepare_gives_what_the_download_expects(tmp_path, name):
    expected = ALL_MAKERS[name](tmp_path / name, n=6, hostile=True, truncated_tar=True)

    report = prepare(name, expected.root, num_processes=2)
    code = report.finish()

    images = indexed_images(expected)
    assert sorted(images) == sorted(expected.indexed) and len(images) == len(set(images))
    for path in expected.must_not_exist:
        assert not os.path.lexists(path) or path == Path('/abs.txt') and b'outside' not in path.read_bytes()
    for fault in expected.dropped('prepare'):
        assert fault.image not in images
    if name in ('midjourney23m', 'dalle3'):  # inline captions
        captions = {row.get('image', row.get('filename')): row.get('caption') for row in read_index(expected)}
        assert {image: captions[image] for image in expected.samples} == expected.samples
    else:
        cap_folder = expected.root / expected.cap_folder
        assert all((cap_folder / row['annotation']).is_file() for row in read_index(expected))

    saved = json.loads((expected.root / REPORT_NAME).read_text())
    truncated = [f.path.split(':')[0] for f in expected.faults if f.kind == 'truncated-member']
    assert code == saved['exit_code'] == 1  # the truncated tar must be downloaded again
    assert [name for name, r in saved['tars'].items() if r['status'] == 'partial'] == truncated
    refused = {example for reason in saved['members_refused'].values() for example in reason['examples']}
    assert refused == {f.path for f in expected.faults if f.kind == 'unsafe-member'}
    (index,) = saved['indexes']
    assert sum(r['count'] for r in index['dropped'].values()) == len(expected.dropped('prepare'))
    assert index['entries'] == len(images) and saved['index_skipped'] == ''

    # A second run skips every tar and leaves every output byte for byte (and mtime) as it was.
    before = tree(expected.root)
    index_mtime = (expected.root / expected.data_path).stat().st_mtime_ns
    again = prepare(name, expected.root, num_processes=2)
    assert sorted(again.skipped_done) == sorted(report.tars) and not again.indexes[0].changed
    assert 'members (extract): 0 by this run' in again.summary()
    assert tree(expected.root) == before
    assert (expected.root / expected.data_path).stat().st_mtime_ns == index_mtime


@pytest.mark.parametrize('name', NAMES)
def test_tool_command(tmp_path, name):
    expected = ALL_MAKERS[name](tmp_path / name, n=6)

    result = run_tool(name, '--root', expected.root, '--num-processes', 2)

    assert result.returncode == 0, result.stderr
    assert sorted(indexed_images(expected)) == sorted(expected.indexed)
    assert f'{name} at {expected.root}' in result.stderr and 'dropped' in result.stderr
    assert (expected.root / REPORT_NAME).is_file()


def test_tool_default_root_is_relative_to_the_working_directory(tmp_path):
    expected = MAKERS['blip3o60k'](tmp_path / DEFAULT_ROOTS['blip3o60k'], n=4, faults=False)
    assert run_tool('blip3o60k', cwd=tmp_path).returncode == 0
    assert sorted(indexed_images(expected)) == sorted(expected.indexed)
    missing = run_tool('laion6m', cwd=tmp_path)
    assert missing.returncode == 2 and 'data/laion6m is not a folder' in missing.stderr


def test_tool_command_no_extract_indexes_the_tars(tmp_path):
    expected = MAKERS['blip3o60k'](tmp_path / 'blip3o', n=4)
    result = run_tool('blip3o60k', '--root', expected.root, '--num-processes', 2, '--no-extract')
    assert result.returncode == 0, result.stderr
    assert 'members (tar-index)' in result.stderr and (expected.root / 'tar_index.arrow').is_file()
    assert sorted(indexed_images(expected)) == sorted(expected.indexed)
    assert not any((expected.root / 'raw' / image).exists() for image in expected.samples)


class Interrupted(Exception):
    pass


class DiesAfter:
    """The extract step, but the run dies in the middle of the tar after ``tars`` finished ones."""

    name = EXTRACT.name

    def __init__(self, tars):
        self.tars = tars

    def process(self, job):
        if self.tars == 0:
            staging = os.path.join(job.root, '.prepare', 'staging', self.name, job.name)
            os.makedirs(staging, exist_ok=True)
            Path(staging, 'half-written.jpg').write_bytes(b'\xff\xd8')
            raise Interrupted(job.name)
        self.tars -= 1
        return EXTRACT.process(job)

    def listing(self, root, jobs, folders, refused=None):
        return EXTRACT.listing(root, jobs, folders, refused)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    clean = MAKERS['midjourney23m'](tmp_path / 'clean', n=10, shards=5)
    resumed = MAKERS['midjourney23m'](tmp_path / 'resumed', n=10, shards=5)
    prepare('midjourney23m', clean.root, num_processes=1)

    with pytest.raises(Interrupted):
        prepare('midjourney23m', resumed.root, num_processes=1, step=DiesAfter(2))
    assert not (resumed.root / 'data.json').exists()
    report = prepare('midjourney23m', resumed.root, num_processes=2)

    assert len(report.skipped_done) == 2 and len(report.tars) == 5
    assert tree(resumed.root) == tree(clean.root)


def test_killed_command_resumes_to_the_same_result(tmp_path):
    clean = MAKERS['dalle3'](tmp_path / 'clean', n=12, shards=12, faults=False)
    killed = tmp_path / 'killed'
    shutil.copytree(clean.root, killed)
    prepare('dalle3', clean.root, num_processes=1)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, str(REPO / 'tools/prepare_dalle3.py'), '--root',
                                str(killed), '--num-processes', '1'], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = killed / '.prepare' / 'extract'
    deadline = time.monotonic() + 60
    while not (markers.is_dir() and any(markers.iterdir())) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert run_tool('dalle3', '--root', killed, '--num-processes', 2).returncode == 0
    assert tree(killed) == tree(clean.root)


def test_slices_build_the_index_once_every_tar_is_done(tmp_path):
    full = MAKERS['laion6m'](tmp_path / 'full', n=10, shards=3)
    sliced = MAKERS['laion6m'](tmp_path / 'sliced', n=10, shards=3)
    prepare('laion6m', full.root)
    download = (sliced.root / 'data.json').read_bytes()

    first = prepare('laion6m', sliced.root, start=0, end=4)
    assert len(first.tars) == 4 and first.tar_slice == (0, 4) and first.indexes == []
    assert 'not done yet' in first.index_skipped and 'index not built' in first.summary()
    assert (sliced.root / 'data.json').read_bytes() == download  # nothing dropped for tars not extracted yet
    second = prepare('laion6m', sliced.root, start=4, end=-1)
    assert len(second.tars) == 2 and second.indexes

    assert tree(sliced.root) == tree(full.root)


def test_complete_downloaded_index_is_left_as_downloaded(tmp_path):
    expected = MAKERS['redcaps5m'](tmp_path / 'redcaps', n=6, faults=False)
    download = (expected.root / 'redcaps5m_data.json').read_bytes()
    assert prepare('redcaps5m', expected.root).indexes[0].changed is False
    assert (expected.root / 'redcaps5m_data.json').read_bytes() == download
    assert not (expected.root / 'redcaps5m_data.json.orig').exists()


def test_drops_are_undone_once_a_damaged_tar_is_downloaded_again(tmp_path):
    expected = MAKERS['laion6m'](tmp_path / 'laion', n=9, shards=3, faults=False)
    download = (expected.root / 'data.json').read_bytes()
    tar = expected.root / 'raw/00001.tar'
    good = tar.read_bytes()
    tar.write_bytes(b'not a tar' * 100)

    damaged = prepare('laion6m', expected.root)
    assert damaged.exit_code() == 1 and damaged.by_status('failed') == ['raw/00001.tar']
    assert damaged.indexes[0].drops.counts['no-image'] == 3 and len(indexed_images(expected)) == 6
    assert (expected.root / 'data.json.orig').read_bytes() == download

    tar.write_bytes(good)
    repaired = prepare('laion6m', expected.root)
    assert repaired.exit_code() == 0 and sorted(repaired.tars) == sorted(damaged.tars)
    assert 'raw/00001.tar' not in repaired.skipped_done and len(repaired.skipped_done) == 5
    assert (expected.root / 'data.json').read_bytes() == download


def test_annotations_outside_cap_folder_are_found_and_rewritten(tmp_path):
    # OpenUni reads laion6m annotations relative to raw/, the guide relative to captions/: a
    # download whose caption json sit only in raw/ must still pair, relative to the config's folder.
    expected = MAKERS['laion6m'](tmp_path / 'laion', n=6, faults=False)
    for tar in (expected.root / 'captions').glob('*.tar'):
        tar.unlink()
    download = (expected.root / 'data.json').read_bytes()

    report = prepare('laion6m', expected.root)

    rows = read_index(expected)
    assert sorted(row['image'] for row in rows) == sorted(expected.indexed)
    assert all(row['annotation'] == '../raw/' + row['image'][:-len('.jpg')] + '.json' for row in rows)
    assert all((expected.root / expected.cap_folder / row['annotation']).is_file() for row in rows)
    assert (expected.root / 'data.json.orig').read_bytes() == download
    assert f'{len(rows)} annotations found outside captions/ were rewritten' in report.summary()


@pytest.mark.parametrize('name', ['laion6m', 'blip3o60k'])
def test_index_built_by_pairing_names_when_not_downloaded(tmp_path, name):
    expected = MAKERS[name](tmp_path / name, n=8, with_index=False)

    report = prepare(name, expected.root)

    rows = read_index(expected)
    assert sorted(row['image'] for row in rows) == sorted(expected.indexed)
    cap_folder = expected.root / expected.cap_folder
    assert all((cap_folder / row['annotation']).is_file() for row in rows)
    if name == 'laion6m':  # re-captions from captions/, never the metadata json beside the image
        assert all(row['annotation'] == row['image'][:-len('.jpg')] + '.json' for row in rows)
    assert report.indexes[0].drops.total() == len(expected.dropped('prepare'))
    assert 'built by pairing' in report.summary()


@pytest.mark.parametrize('field', ['long_caption', 'short_caption2'])
def test_dalle3_caption_field_and_txt_files(tmp_path, field):
    expected = MAKERS['dalle3'](tmp_path / 'dalle3', n=4)

    report = prepare('dalle3', expected.root, caption_field=field, write_txt=True)

    captions = expected.other_captions[field]  # short_caption2 is a list: its first element
    rows = read_index(expected)
    assert {row['filename']: row['caption'] for row in rows} == captions
    assert pq.read_schema(expected.root / expected.data_path).names == ['width', 'height', 'caption', 'filename']
    for image, caption in captions.items():
        assert (expected.root / 'data' / image).with_suffix('.txt').read_text() == caption
    assert len(list((expected.root / 'data').glob('*.txt'))) == len(captions)
    assert set(report.indexes[0].drops.counts) == {'no width', 'unreadable json', 'no-image'}
    assert not list(MAKERS['dalle3'](tmp_path / 'plain', n=3, faults=False).root.glob('data/*.txt'))
    prepare('dalle3', tmp_path / 'plain')
    assert not list((tmp_path / 'plain').glob('data/*.txt'))  # only with --write-txt


def test_dalle3_hub_layout_pairs_by_key_and_counts_image_names_that_disagree(tmp_path):
    expected = MAKERS['dalle3'](tmp_path / 'dalle3', n=6)
    assert not list(expected.root.glob('*.tar')) and list(expected.root.glob('data/*.tar'))

    report = prepare('dalle3', expected.root)

    rows = read_index(expected)
    assert {row['filename']: row['caption'] for row in rows} == expected.samples
    assert {Path(row['filename']).suffix for row in rows} == {'.png', '.jpg', '.jpeg'}
    (index,) = report.indexes
    assert dict(index.remarks.counts) == {'image_name differs from its member (indexed under the member)': 1}
    assert "'not-this-name.png'" in report.summary()
    # The preview .jpg files, README and .cache/huggingface/ of the root are not samples.
    assert not any('preview' in row['filename'] for row in rows)


def test_dalle3_guide_layout_still_prepares(tmp_path):
    expected = MAKERS['dalle3'](tmp_path / 'dalle3', n=4, layout='guide')
    assert list(expected.root.glob('*.tar'))
    assert prepare('dalle3', expected.root).exit_code() == 0
    assert {row['filename']: row['caption'] for row in read_index(expected)} == expected.samples


def test_dalle3_implausible_sizes_are_counted_drops(tmp_path):
    root = tmp_path / 'dalle3'
    (root / 'data').mkdir(parents=True)
    for key, width in (('inf', '1e400'), ('nan', 'NaN'), ('text', '"wide"'), ('good', '512')):
        (root / 'data' / f'{key}.png').write_bytes(b'image')
        (root / 'data' / f'{key}.json').write_text(
            f'{{"image_name": "{key}.png", "short_caption": "a cat", "width": {width}, "height": 512}}')
    report = prepare('dalle3', root)
    assert report.indexes[0].drops.counts == {'bad-size': 3} and report.indexes[0].entries == 1


def test_midjourney_tables_column_checks(tmp_path):
    root = tmp_path / 'mj'
    (root / 'raw').mkdir(parents=True)
    for name in ('a.png', 'b.png', 'c.png', 'd.png', 'sub/e.webp'):
        (root / 'images' / name).parent.mkdir(parents=True, exist_ok=True)
        (root / 'images' / name).touch()
    schema = pa.schema([('filename', pa.string()), ('prompt', pa.string()), ('width', pa.float64()),
                        ('height', pa.int32()), ('extra', pa.string())])
    pq.write_table(pa.table({'filename': ['b.png', 'gone.png', 'a.png', 'c.png'],
                             'prompt': ['bee "quoted"\n', 'x', None, 'sea'],
                             'width': [512.0, 1.0, 1.0, float('nan')], 'height': [256, 1, 1, 9],
                             'extra': ['', '', '', '']}, schema=schema), root / 'raw/table-1.parquet')
    pq.write_table(pa.table({'filename': ['sub/e.webp', 'b.png', None, 'd.png'],
                             'prompt': ['東京 \\ "back\\slash"', 'bee again', 'y', 'dee'],
                             'width': [100.0, 5.0, 1.0, 64.0], 'height': [200, 5, 1, None],
                             'extra': ['', '', '', '']}, schema=schema), root / 'raw/table-2.parquet')

    report = prepare('midjourney23m', root)

    with open(root / 'data.json', encoding='utf-8') as f:
        assert json.load(f) == [
            {'image': 'images/b.png', 'caption': 'bee "quoted"\n', 'width': 512, 'height': 256},
            {'image': 'images/sub/e.webp', 'caption': '東京 \\ "back\\slash"', 'width': 100, 'height': 200}]
    drops = report.indexes[0].drops
    assert dict(drops.counts) == {'no-image': 2, 'no-caption': 1, 'no-size': 2, 'duplicate': 1}
    assert drops.examples['no-image'] == ['gone.png', 'None'] and drops.examples['duplicate'] == ['b.png']
    assert report.exit_code() == 0


def test_midjourney_column_names_are_options_and_bad_sizes_are_counted(tmp_path):
    from src.prepare.midjourney import Columns
    root = tmp_path / 'mj'
    (root / 'raw/meta').mkdir(parents=True)
    for name in ('a.png', 'b.png', 'c.png', 'd.png'):
        (root / 'images').mkdir(exist_ok=True)
        (root / 'images' / name).touch()
    pq.write_table(pa.table({'file': ['a.png', 'b.png', 'c.png', 'd.png'], 'text': ['aa', 'bb', 'cc', 'dd'],
                             'w': [512.0, float('inf'), 1e300, None], 'h': [384.0, 10.0, 10.0, 10.0]}),
                   root / 'raw/meta/part-0.parquet')
    columns = Columns(tables='raw/meta/*.parquet', filename='file', caption='text', width='w', height='h')

    report = prepare('midjourney23m', root, columns=columns)

    assert json.loads((root / 'data.json').read_text()) == [
        {'image': 'images/a.png', 'caption': 'aa', 'width': 512, 'height': 384}]
    assert dict(report.indexes[0].drops.counts) == {'bad-size': 2, 'no-size': 1}
    result = run_tool('midjourney23m', '--root', root, '--tables', 'raw/meta/*.parquet', '--filename-col', 'file',
                      '--caption-col', 'text', '--width-col', 'w', '--height-col', 'h')
    assert result.returncode == 0, result.stderr
    wrong = run_tool('midjourney23m', '--root', root, '--tables', 'raw/meta/*.parquet')
    assert wrong.returncode == 1
    assert "no column 'filename', 'prompt', 'width', 'height'; its columns are ['file', 'text', 'w', 'h']" in wrong.stderr


def test_midjourney_encoding_across_chunk_edges(tmp_path, monkeypatch):
    # The data.json text is assembled from Arrow buffers a chunk at a time; tiny chunks put quotes,
    # backslashes, control characters and wholly dropped chunks on every edge.
    from src.prepare import midjourney
    monkeypatch.setattr(midjourney, 'CHUNK', 3)
    root = tmp_path / 'mj'
    (root / 'raw').mkdir(parents=True)
    prompts = ['plain', 'q"uote', 'back\\slash', 'tab\there', 'nul\x00bell\x07', 'ünï 東京',
               'line\nbreak', '', '"', '\\', 'end\x1f', 'last']
    present = [i for i in range(len(prompts)) if i not in (3, 4, 5)]  # one whole chunk has no images
    for i in present:
        (root / 'images').mkdir(exist_ok=True)
        (root / 'images' / f'{i}.png').touch()
    pq.write_table(pa.table({'filename': [f'{i}.png' for i in range(len(prompts))], 'prompt': prompts,
                             'width': [float(100 + i) for i in range(len(prompts))],
                             'height': [200.0] * len(prompts)}), root / 'raw/table-1.parquet')

    prepare('midjourney23m', root)

    with open(root / 'data.json', encoding='utf-8') as f:
        assert json.load(f) == [{'image': f'images/{i}.png', 'caption': prompts[i], 'width': 100 + i,
                                 'height': 200} for i in present]


def test_unreadable_index_or_table_is_reported_with_its_name(tmp_path):
    expected = MAKERS['redcaps5m'](tmp_path / 'redcaps', n=3, faults=False)
    (expected.root / 'redcaps5m_data.json').write_text('[{"image": "a.jpg", ')
    report = prepare('redcaps5m', expected.root)
    assert report.exit_code() == 1
    assert 'redcaps5m_data.json: not valid JSON' in report.summary()

    (tmp_path / 'mj/raw').mkdir(parents=True)
    (tmp_path / 'mj/images').mkdir()
    (tmp_path / 'mj/images/a.png').write_bytes(b'extracted by hand')
    pq.write_table(pa.table({'filename': ['a.png']}), tmp_path / 'mj/raw/table-1.parquet')
    report = prepare('midjourney23m', tmp_path / 'mj')
    assert report.exit_code() == 1
    assert "table-1.parquet: no column 'prompt', 'width', 'height'; its columns are ['filename']" in report.index_error


def test_resize_to_writes_smaller_images_with_the_same_index_and_crops(tmp_path):
    from PIL import Image, ImageOps
    plain = MAKERS['blip3o60k'](tmp_path / 'plain', n=6, faults=False)
    small = MAKERS['blip3o60k'](tmp_path / 'small', n=6, faults=False)
    assert run_tool('blip3o60k', '--root', plain.root).returncode == 0
    result = run_tool('blip3o60k', '--root', small.root, '--resize-to', 100)
    assert result.returncode == 0, result.stderr
    assert (small.root / 'data.json').read_bytes() == (plain.root / 'data.json').read_bytes()
    for image in small.samples:
        with Image.open(plain.root / 'raw' / image) as original, Image.open(small.root / 'raw' / image) as resized:
            upright = ImageOps.exif_transpose(original)
            if min(upright.size) <= 100:  # small enough already: left byte for byte as it was
                assert (small.root / 'raw' / image).read_bytes() == (plain.root / 'raw' / image).read_bytes()
                continue
            assert min(resized.size) == 100 and resized.format == original.format
            assert abs(resized.width / resized.height - upright.width / upright.height) < 0.02
    again = run_tool('blip3o60k', '--root', small.root, '--resize-to', 100)
    assert again.returncode == 0 and 'members (extract): 0 by this run' in again.stderr
    # Another size on a root prepared with one (a second slice started with another value) would
    # leave half the images at each size and the index unbuilt: refused, naming both.
    other = run_tool('blip3o60k', '--root', small.root, '--resize-to', 80)
    assert other.returncode != 0
    assert 'were prepared with --resize-to 100' in other.stderr and 'asks for --resize-to 80' in other.stderr
    assert run_tool('blip3o60k', '--root', small.root).returncode != 0  # nor without --resize-to
    refused = run_tool('blip3o60k', '--root', small.root, '--resize-to', 80, '--no-extract')
    assert refused.returncode != 0 and 'cannot be used with --no-extract' in refused.stderr
