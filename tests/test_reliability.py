"""What hostile use does to the preparation tools: runs at once on one root, names the file system
cannot hold or that are not UTF-8, sparse members, a full disk, a read-only root, leftovers of
killed runs, and indexes that are wrong in small ways."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from src.datasets.errors import IndexFormatError
from src.datasets.storage import locks as lock
from src.prepare import datasets
from src.prepare.extract import EXTRACT
from src.prepare.report import REPORT_NAME
from src.prepare.runner import prepare as run_prepare
from src.prepare.tar_members import INDEX_MEMBERS
from src.synthetic.downloads import MAKERS
from src.synthetic.images import encode_image

REPO = Path(__file__).resolve().parents[1]
JPEG = encode_image(120, 100, fmt='JPEG', seed=1)


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file() and '.prepare' not in p.parts and p.name != REPORT_NAME
            and '.sampleindex' not in p.name}


def tool(name, *args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / f'tools/prepare_{name}.py'), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_tar(path: Path, members, fmt=tarfile.GNU_FORMAT, encoding='utf-8'):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w', format=fmt, encoding=encoding) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def extract_only(root: Path, tar_names, step=EXTRACT, dest='raw'):
    from src.prepare.tar_headers import TarJob
    jobs = [TarJob(str(root), name, dest) for name in tar_names]
    return run_prepare('test', str(root), jobs, [dest], lambda files, report: None, step=step, num_processes=1)


# ---- 1. runs at once -----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_slices_at_once_give_the_sequential_result_byte_for_byte(tmp_path):
    sequential = MAKERS['laion6m'](tmp_path / 'sequential', n=8, shards=4)
    assert tool('laion6m', '--root', sequential.root, '--num-processes', 1).returncode == 0
    expected = tree(sequential.root)
    assert 'data.json.orig' in expected  # the download's index, kept: the check dropped entries
    for trial in range(4):
        root = MAKERS['laion6m'](tmp_path / f'at-once-{trial}', n=8, shards=4).root
        slices = [('--start', 0, '--end', 2), ('--start', 2)] if trial % 2 == 0 else [(), ()]  # or twice the same
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda s: tool('laion6m', '--root', root, '--num-processes', 1, *s), slices))
        assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
        assert tree(root) == expected, trial


def test_a_claim_names_its_live_holder_and_a_dead_one_is_taken_over(tmp_path):
    path = str(tmp_path / 'claims' / 'x.claim')
    lock.acquire(path)
    holder = json.loads(Path(path).read_text())
    assert holder['host'] == lock.HOST and holder['pid'] == os.getpid()
    # another live process of this host holds it
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
    try:
        Path(path).write_text(json.dumps({'host': lock.HOST, 'pid': child.pid, 'since': time.time()}))
        with pytest.raises(lock.Busy, match=rf'host {lock.HOST}, pid {child.pid}, since 20'):
            lock.acquire(path)
    finally:
        child.kill()
        child.wait()
    lock.acquire(path)  # its holder is gone: stale, taken over
    assert json.loads(Path(path).read_text())['pid'] == os.getpid()
    # another host's claim is live while it is touched, stale once it is not
    Path(path).write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'since': time.time()}))
    with pytest.raises(lock.Busy, match='host elsewhere'):
        lock.acquire(path)
    old = time.time() - lock.STALE_AFTER - 1
    os.utime(path, (old, old))
    lock.acquire(path)


def test_the_download_index_is_kept_from_the_download_and_never_overwritten(tmp_path):
    expected = MAKERS['laion6m'](tmp_path / 'laion6m', n=6)
    download = (expected.root / 'data.json').read_bytes()
    datasets.prepare_laion6m(str(expected.root), num_processes=1)
    assert (expected.root / 'data.json.orig').read_bytes() == download
    (expected.root / 'data.json').write_text('[]')  # whatever happens to the filtered one
    datasets.prepare_laion6m(str(expected.root), num_processes=1)
    assert (expected.root / 'data.json.orig').read_bytes() == download


# ---- 2, 4, 9. members -------------------------------------------------------------------------
@pytest.mark.parametrize('step', [EXTRACT, INDEX_MEMBERS], ids=['extract', 'no-extract'])
def test_names_that_are_not_utf8_are_refused_and_the_rest_kept(tmp_path, step):
    write_tar(tmp_path / 'raw' / '0.tar', [('good.jpg', JPEG), ('caf\xe9.jpg', JPEG), ('also.jpg', JPEG)],
              encoding='latin-1')
    report = extract_only(tmp_path, ['raw/0.tar'], step)
    result = report.tars['raw/0.tar']
    assert result['status'] == 'done' and result['members'] == 2
    assert result['refused'] == [['caf\\xe9.jpg', 'bad-name']]
    json.dumps(report.to_dict())  # the report can be written
    assert report.finish() == 0


def test_members_the_file_system_cannot_hold_are_refused_and_the_tar_is_kept(tmp_path):
    long_name = 'n' * 300 + '.jpg'
    deep = '/'.join(['d' * 200] * 25) + '/x.jpg'  # 5,000 characters
    write_tar(tmp_path / 'raw' / '0.tar', [('a.jpg', JPEG), (long_name, JPEG), (deep, JPEG), ('a.jpg/b.jpg', JPEG),
                                           ('ok/c.jpg', JPEG)])
    report = extract_only(tmp_path, ['raw/0.tar'])
    result = report.tars['raw/0.tar']
    assert result['status'] == 'done', result
    assert sorted(reason for _, reason in result['refused']) == ['name-too-long', 'name-too-long', 'path-clash']
    assert (tmp_path / 'raw' / 'a.jpg').read_bytes() == JPEG and (tmp_path / 'raw' / 'ok' / 'c.jpg').is_file()
    assert 'Download this tar again' not in report.summary() and report.exit_code() == 0


def sparse_tar(tmp_path: Path, fmt: str) -> Path:
    folder = tmp_path / f'sparse-{fmt}'
    folder.mkdir()
    (folder / 'caption.txt').write_text('a caption')
    with open(folder / 'holes.bin', 'wb') as f:  # mostly holes, with data between them
        f.seek(1 << 20)
        f.write(b'data in the middle')
        f.seek(3 << 20)
        f.write(b'the end')
    (folder / 'after.txt').write_text('after the sparse member')
    out = tmp_path / 'raw' / f'{fmt}.tar'
    out.parent.mkdir(exist_ok=True)
    subprocess.run(['tar', '--sparse', f'--format={fmt}', '-cf', str(out), '-C', str(folder),
                    'caption.txt', 'holes.bin', 'after.txt'], check=True)
    return out


@pytest.mark.skipif(shutil.which('tar') is None, reason='needs GNU tar to make sparse members')
@pytest.mark.parametrize('fmt', ['gnu', 'pax'])
def test_sparse_members_are_refused_never_misread(tmp_path, fmt):
    from src.datasets.storage.tar_index import TarMemberIndex
    sparse_tar(tmp_path, fmt)
    report = extract_only(tmp_path, [f'raw/{fmt}.tar'], INDEX_MEMBERS)
    assert report.tars[f'raw/{fmt}.tar']['refused'] == [['holes.bin', 'sparse']]
    index = TarMemberIndex.open(str(tmp_path / 'tar_index.arrow'))
    assert index.read('raw/caption.txt') == b'a caption'
    assert index.read('raw/after.txt') == b'after the sparse member'
    extracted = extract_only(tmp_path, [f'raw/{fmt}.tar'])
    assert extracted.tars[f'raw/{fmt}.tar']['refused'] == [['holes.bin', 'sparse']]


# ---- 5. the same path in two tars ---------------------------------------------------------------
@pytest.mark.parametrize('order', ['in order', 'later tar first'])
def test_a_path_in_two_tars_is_the_last_tar_s_copy_as_with_no_extract(tmp_path, order):
    from src.datasets.storage.tar_index import TarMemberIndex
    from src.prepare.tar_headers import TarJob
    write_tar(tmp_path / 'raw' / '0.tar', [('same.jpg', b'first tar'), ('only0.jpg', JPEG)])
    write_tar(tmp_path / 'raw' / '1.tar', [('same.jpg', b'second tar'), ('only1.jpg', JPEG)])
    jobs = [TarJob(str(tmp_path), name, 'raw') for name in ('raw/0.tar', 'raw/1.tar')]
    if order == 'later tar first':
        run_prepare('test', str(tmp_path), jobs, ['raw'], lambda files, report: None, start=1, num_processes=1)
    report = run_prepare('test', str(tmp_path), jobs, ['raw'], lambda files, report: None, num_processes=1)
    assert (tmp_path / 'raw' / 'same.jpg').read_bytes() == b'second tar'
    assert report.shared_paths == ['raw/same.jpg'] and 'more than one tar' in report.summary()
    packed = tmp_path / 'packed'
    shutil.copytree(tmp_path / 'raw', packed / 'raw', ignore=shutil.ignore_patterns('*.jpg'))
    run_prepare('test', str(packed), [TarJob(str(packed), j.name, 'raw') for j in jobs], ['raw'],
                lambda files, report: None, step=INDEX_MEMBERS, num_processes=1)
    assert TarMemberIndex.open(str(packed / 'tar_index.arrow')).read('raw/same.jpg') == b'second tar'


# ---- 6. a full disk and a read-only root ----------------------------------------------------------
@contextmanager
def mounted_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip('mounting a small file system needs root (it stands in for a full disk)')
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def test_a_full_disk_ends_with_a_summary_saying_so_and_a_rerun_completes(tmp_path):
    source = MAKERS['redcaps5m'](tmp_path / 'source', n=12, shards=4, faults=False)
    one_tar = max(p.stat().st_size for p in source.root.glob('raw/*.tar'))
    with mounted_tmpfs(tmp_path / 'small', '32m') as disk:
        root = disk / 'redcaps5m'
        shutil.copytree(source.root, root)
        filler = disk / 'filler'
        filler.write_bytes(b'\0' * (shutil.disk_usage(disk).free - int(1.5 * one_tar)))  # room for a tar or so
        result = tool('redcaps5m', '--root', root, '--num-processes', 1)
        assert result.returncode == 1
        assert 'Traceback' not in result.stderr and 'no space left on the disk' in result.stderr, result.stderr[-3000:]
        assert 'Download this tar again' not in result.stderr
        filler.unlink()  # space freed
        again = tool('redcaps5m', '--root', root, '--num-processes', 1)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(json.loads((root / 'redcaps5m_data.json').read_text())) == 12


def remount_read_only(disk: Path) -> None:
    if subprocess.run(['mount', '-o', 'remount,ro', str(disk)], capture_output=True).returncode != 0:
        pytest.skip('cannot remount read-only')


def test_a_prepared_root_on_a_read_only_mount_is_checked_without_writing(tmp_path):
    with mounted_tmpfs(tmp_path / 'ro', '20m') as disk:
        expected = MAKERS['blip3o60k'](disk / 'blip3o', n=4)
        assert tool('blip3o60k', '--root', expected.root).returncode == 0
        before = tree(expected.root)
        remount_read_only(disk)
        result = tool('blip3o60k', '--root', expected.root)
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'Traceback' not in result.stderr and 'report not saved' in result.stderr
        assert tree(expected.root) == before


def test_an_unprepared_root_on_a_read_only_mount_fails_saying_so(tmp_path):
    with mounted_tmpfs(tmp_path / 'ro', '20m') as disk:
        expected = MAKERS['blip3o60k'](disk / 'blip3o', n=4, faults=False)
        remount_read_only(disk)
        result = tool('blip3o60k', '--root', expected.root)
        assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
        assert 'the file system is read-only' in result.stderr and 'Download this tar again' not in result.stderr


# ---- 7. the image column -------------------------------------------------------------------------
@pytest.mark.parametrize('values', [[1, 2], [[1], [2]], [{'a': 1}, {'a': 2}]], ids=['ints', 'lists', 'dicts'])
def test_an_image_column_that_is_not_paths_fails_at_start_up(tmp_path, tokenizer, prompt_template, values):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    (tmp_path / 'data.json').write_text(json.dumps([{'image': v, 'caption': 'x'} for v in values]))
    with pytest.raises(IndexFormatError, match=r"data.json: the 'image' field holds .* values \(record #0"):
        CaptionDataset(str(tmp_path / 'data.json'), image_folder=str(tmp_path), tokenizer=tokenizer,
                       prompt_template=prompt_template)


# ---- 8. leftovers of killed runs --------------------------------------------------------------------
def test_leftovers_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    expected = MAKERS['blip3o60k'](tmp_path / 'blip3o', n=4, faults=False)
    root = expected.root
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    leftovers = [root / f'data.json.tmp-{lock.HOST}-{dead.pid}', root / f'data.json.tmp-{dead.pid}',
                 root / f'prepare_report.json.tmp-{dead.pid}',
                 root / '.prepare' / 'extract' / 'raw' / f'dalle3.tar.done.json.tmp-{lock.HOST}-{dead.pid}']
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'half written')
    staging = root / '.prepare' / 'staging' / 'extract' / 'raw' / 'gone.tar' / 'sub'
    staging.mkdir(parents=True)
    (staging / 'x.jpg').write_bytes(b'partial')
    alive = root / f'data.json.tmp-{lock.HOST}-{os.getppid()}'  # a live writer's is kept
    alive.write_bytes(b'being written')

    assert datasets.prepare_blip3o60k(str(root), num_processes=1).exit_code() == 0

    assert not [p for p in leftovers if p.exists()] and not (root / '.prepare' / 'staging').exists()
    assert alive.exists()


def test_a_sample_index_build_killed_midway_leaves_nothing_for_long(tmp_path):
    from src.datasets.index.sample_index import SampleIndex, cache_path_for
    (tmp_path / 'data.json').write_text(json.dumps([{'image': 'a.jpg'}]))
    cache = cache_path_for(str(tmp_path / 'data.json'))
    for suffix in ('abc123.tmp', 'abc123.tmp.0', 'abc123.tmp.1'):
        (cache.parent / f'.{cache.name}.{suffix}').write_bytes(b'half')
    SampleIndex.load(str(tmp_path / 'data.json'))
    assert not list(cache.parent.glob(f'.{cache.name}.*.tmp*'))


# ---- 10. smaller ones ---------------------------------------------------------------------------------
def test_a_deeply_nested_index_is_an_error_naming_the_file(tmp_path):
    from src.datasets.index.sample_index import SampleIndex
    (tmp_path / 'data.json').write_text('[' * 3000 + ']' * 3000)
    with pytest.raises(IndexFormatError, match=r'data.json.*nested deeper'):
        SampleIndex.load(str(tmp_path / 'data.json'), use_cache=False)


def test_a_downloaded_index_with_a_byte_order_mark_is_checked(tmp_path):
    expected = MAKERS['blip3o60k'](tmp_path / 'blip3o', n=4, faults=False)
    index = expected.root / 'data.json'
    index.write_bytes(b'\xef\xbb\xbf' + index.read_bytes())
    report = datasets.prepare_blip3o60k(str(expected.root), num_processes=1)
    assert report.exit_code() == 0 and report.indexes[0].entries == 4


def test_a_32_bit_grey_tiff_keeps_its_picture():
    import numpy as np
    from PIL import Image

    from src.datasets.sample.image_io import to_rgb
    values = (np.arange(64 * 64).reshape(64, 64) * 100_000).astype(np.int32)
    buf = io.BytesIO()
    Image.fromarray(values, 'I').save(buf, 'TIFF')
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(buf.getvalue()))))
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155  # a ramp, not a white square
