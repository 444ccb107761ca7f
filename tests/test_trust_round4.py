"""Round 4 of the hostile reading: what a planted file beside the index cache (a FIFO, a link, a
folder, a user's own file) and a crafted picture do to the newest code (``storage.sidecars``,
``storage.locks``, ``storage.images``). Each test runs its attack in a forked process bounded by
a timeout, so a hang fails the test instead of blocking the suite."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import traceback
from pathlib import Path

import pytest
from mmengine.logging import MMLogger

from src.datasets.index.sample_index import SampleIndex, cache_path_for

FORK = multiprocessing.get_context('fork')
TIMEOUT = 60  # seconds an attack may take before it counts as a hang (each takes about one)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def bounded(fn, timeout: float = TIMEOUT):
    """``fn()`` run in a forked process, and the lines the project logged meanwhile: its value, or
    the test fails naming the error (or the hang: the process is killed after ``timeout``)."""
    results = FORK.Queue()

    def run():
        lines = _Lines()
        MMLogger.get_current_instance().addHandler(lines)
        try:
            results.put(('ok', fn(), lines.lines))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results.put(('error', ''.join(traceback.format_exception(exc))[-3000:], lines.lines))

    process = FORK.Process(target=run)
    process.start()
    try:
        status, value, lines = results.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        process.join()
        pytest.fail(f'hung: no answer in {timeout} s')
    process.join(30)
    assert status == 'ok', value
    return value, lines


@pytest.fixture
def index_root(tmp_path) -> Path:
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'data.json').write_text(json.dumps([{'image': f'{i}.jpg', 'caption': f'cat {i}'} for i in range(20)]))
    return root


def _load_len(root: Path) -> int:
    return len(SampleIndex.load(root / 'data.json'))


# ---- the lock beside a file being built -------------------------------------------------------

@pytest.mark.parametrize('planted', ['fifo', 'link to a missing file', 'link to a file'])
def test_what_is_planted_at_the_lock_path_is_neither_waited_on_nor_followed(index_root, tmp_path, planted):
    outside = tmp_path / 'outside'
    outside.mkdir()
    lock = Path(f'{cache_path_for(index_root / "data.json")}.lock')
    if planted == 'fifo':
        os.mkfifo(lock)
    else:
        if planted == 'link to a file':
            (outside / 'mine').write_text('theirs')
        os.symlink(outside / 'mine', lock)
    rows, lines = bounded(lambda: _load_len(index_root))
    assert rows == 20  # built in memory, and said why, naming the lock
    assert any(str(lock) in line and 'where the lock file goes' in line for line in lines), lines
    assert [p.name for p in outside.iterdir()] == (['mine'] if planted == 'link to a file' else [])
    if planted == 'link to a file':
        assert (outside / 'mine').read_text() == 'theirs'


# ---- what is planted where a file beside the index cache goes --------------------------------

from tests.test_trust_sidecars import _samples, _sidecars, make, root  # noqa: E402,F401 - the dataset's fixtures


def _planted_at(root: Path, where: str) -> Path:
    cache = cache_path_for(root / 'data.json')
    if where == 'index cache':
        return cache
    if where.endswith('folder'):
        prefix = '.select-' if where.startswith('selection') else '.prompt-ids-'
        [folder] = (p for p in root.glob(f'{cache.name}{prefix}*') if p.is_dir())
        return folder
    [path] = _sidecars(root)[where]
    return path


def _plant(target: Path, kind: str, outside: Path) -> None:
    """Where ``target`` was: a FIFO, or a link to a copy of it out of the folder (whole and
    current: read through the link, it would be used)."""
    copy = outside / target.name
    if target.is_dir():
        shutil.copytree(target, copy)
        shutil.rmtree(target)
    else:
        shutil.copyfile(target, copy)
        target.unlink()
    if kind == 'fifo':
        os.mkfifo(target)
    else:
        os.symlink(copy, target)


@pytest.mark.parametrize('kind', ['fifo', 'link out'])
@pytest.mark.parametrize('where', ['index cache', 'sizes', 'selection rows', 'selection drops', 'selection folder',
                                   'digests', 'prompt ids', 'prompt folder'])
def test_a_fifo_or_link_planted_where_a_sidecar_goes_is_rebuilt_never_opened(make, root, tmp_path, where, kind):
    first = make()
    first.index.content_digest('image')  # the digests file too
    expected = _samples(first)
    target = _planted_at(root, where)
    outside = tmp_path / 'outside'
    outside.mkdir()
    _plant(target, kind, outside)
    if where == 'sizes':  # what was selected from them goes too: the sizes are read again
        for folder in root.glob(f'{cache_path_for(root / "data.json").name}.select-*/'):
            shutil.rmtree(folder)
    before = sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob('*'))

    def again():
        dataset = make()
        dataset.index.content_digest('image')
        return _samples(dataset)

    assert bounded(again)[0] == expected
    assert not target.is_symlink() and not target.is_fifo()  # the rename replaced it
    assert sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob('*')) == before


def test_a_digests_file_grown_past_its_bound_is_computed_again_never_read_whole(index_root):
    from src.datasets.storage.sidecars import MAX_JSON_BYTES
    first = SampleIndex.load(index_root / 'data.json')
    digest = first.content_digest('image')
    sidecar = first.cache.with_name(f'{first.cache.name}.digests.json')
    whole = sidecar.read_bytes()
    sidecar.write_bytes(b' ' * MAX_JSON_BYTES + whole)  # the very values, after more blank space than a build writes
    assert bounded(lambda: SampleIndex.load(index_root / 'data.json').content_digest('image'))[0] == digest
    assert sidecar.stat().st_size == len(whole)  # computed again and kept afresh
