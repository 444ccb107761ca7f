"""Every file beside the index cache is made the one way (``src.datasets.storage.sidecars``): the
index cache, a selection, the image sizes, the stored prompt ids, the index's digests and a fetched
object. Each promise is checked once for every site, through the site's own call, in real processes:

- processes that build at once build once (all of them map the one file the first renamed);
- a build killed midway leaves nothing half that is read, and its leftovers go with the next build;
- the file is written aside and renamed: a link planted where it goes is replaced, never written through.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from mmengine.logging import MMLogger

from src.datasets.index import image_sizes, prompt_ids, selection
from src.datasets.index.sample_index import SampleIndex, cache_path_for
from src.datasets.index.token_ids import TokenIds

FORK = multiprocessing.get_context('fork')
ROWS, MANY_ROWS = 3000, 50000  # MANY_ROWS: a build that lasts long enough to be killed midway
SELECTION_KEY = {'kept': 'the even rows'}
BLOB = 'blob.bin'
_TOKENIZER = []  # the session's tokenizer, set by the fixture below; forked builders inherit it
_WORK = []  # the building this process did: a record of each build (each header read, for the image sizes)
_GETS = []  # the object GETs the local server answered


class _Builds(logging.Handler):
    """Keeps the lines the index cache and the prompt ids say when they build."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(('Indexing ', 'Tokenizing the prompts')):
            _WORK.append(record.getMessage())


def _records(n: int) -> list[dict]:
    return [{'image': f'{i}.jpg', 'caption': f'picture number {i} of a cat'} for i in range(n)]


def _index(root: Path) -> SampleIndex:
    return SampleIndex.load(root / 'data.json')


# ---- the sites: each one's own call, what it builds, and what that must hold -------------------

def _index_cache(root: Path, slow: bool) -> int:
    return len(_index(root))


def _selection(root: Path, slow: bool) -> list[int]:
    index = _index(root)
    folder = selection.folder_for(index, SELECTION_KEY)
    with selection.stored(folder, len(index)) as kept:
        if kept is None:  # the dataset's whole-column passes, as long as they take
            _WORK.append('selected')
            time.sleep(60 if slow else 0.2)
            rows = np.arange(0, len(index), 2, dtype=np.int64)
            kept = selection.Selection(rows, None, {'counts': {'odd': len(index) - len(rows)}, 'messages': []},
                                       len(index))
            selection.save(folder, kept)
    return np.asarray(kept.rows).tolist()


def _image_sizes(root: Path, slow: bool) -> list[float]:
    def read_size(i: int) -> tuple[int, int]:  # a reader of image headers on slow storage
        _WORK.append(i)
        time.sleep(0.05 if slow else 0.0002)
        return 100 + i, 200 + i
    widths, heights = image_sizes.record_sizes(_index(root), read_size, 'the test index')
    return widths.tolist() + heights.tolist()


def _prompt_ids(root: Path, slow: bool) -> list[list[int]]:
    tokenizer = _TOKENIZER[0]
    index = _index(root)
    stored = prompt_ids.load_prompt_ids(index, ['caption'], str, tokenizer, {}, {},
                                        check=TokenIds(tokenizer, {}).one)
    return [stored.get(row).tolist() for row in (0, len(index) - 1)]


def _digests(root: Path, slow: bool) -> str:
    def compute() -> str:  # a value as long to compute as a column's digest at 23M records
        _WORK.append('computed')
        time.sleep(60 if slow else 0.2)
        return 'computed once'
    return _index(root)._memo('test/once', compute, lambda value: value == 'computed once')


def _fetched(root: Path, slow: bool) -> str:
    from src.datasets.storage.object_store import fetch_to_cache
    path = fetch_to_cache(f's3://sidecars/{root.parent.name}/{BLOB}', str(root / 'petreloss.conf'),
                          str(root / 'objects'))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _expected(site: str, root: Path, rows: int):
    if site == 'index cache':
        return rows
    if site == 'selection':
        return list(range(0, rows, 2))
    if site == 'image sizes':
        return [100.0 + i for i in range(rows)] + [200.0 + i for i in range(rows)]
    if site == 'prompt ids':
        one = TokenIds(_TOKENIZER[0], {}).one
        return [one(f'picture number {row} of a cat') for row in (0, rows - 1)]
    if site == 'digests':
        return 'computed once'
    return hashlib.sha256((root / BLOB).read_bytes()).hexdigest()


def _target(site: str, root: Path) -> Path:
    if site == 'fetched object':
        url = f's3://sidecars/{root.parent.name}/{BLOB}'
        return root / 'objects' / hashlib.sha1(url.encode()).hexdigest()[:16] / BLOB
    cache = cache_path_for(root / 'data.json')
    if site == 'index cache':
        return cache
    index = _index(root)
    if site == 'selection':
        return selection.folder_for(index, SELECTION_KEY)
    if site == 'image sizes':
        return Path(image_sizes._sidecar(index))
    if site == 'prompt ids':
        digest = prompt_ids._digest(index.fingerprint, _TOKENIZER[0], {}, {}, ['caption'])
        return cache.with_name(f'{cache.name}.prompt-ids-{digest}')
    return cache.with_name(f'{cache.name}.digests.json')


@dataclass(frozen=True)
class Site:
    build: Callable[[Path, bool], object]
    folder: bool = False
    killable: bool = True  # whether a build of it can be made to last (a fetch from the local server cannot)
    temp_while_building: bool = False  # whether its temporary file exists while it builds (it streams into it)


SITES = {
    'index cache': Site(_index_cache, temp_while_building=True),
    'selection': Site(_selection, folder=True),
    'image sizes': Site(_image_sizes),
    'prompt ids': Site(_prompt_ids, folder=True, temp_while_building=True),
    'digests': Site(_digests),
    'fetched object': Site(_fetched, killable=False),
}


@pytest.fixture(autouse=True)
def _tokenizer(tokenizer):
    _TOKENIZER[:] = [tokenizer]


@pytest.fixture(scope='module')
def s3():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3
    client = boto3.client('s3', endpoint_url=f'http://{host}:{port}', aws_access_key_id='test-access',
                          aws_secret_access_key='test-secret', region_name='us-east-1')
    client.create_bucket(Bucket='sidecars')
    gets = _Gets()
    logging.getLogger('werkzeug').addHandler(gets)
    yield f'http://{host}:{port}', client
    logging.getLogger('werkzeug').removeHandler(gets)
    server.stop()


class _Gets(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if 'GET /sidecars/' in record.getMessage():
            _GETS.append(record.getMessage())


def _prepare(site: str, root: Path, request, rows: int = ROWS) -> None:
    """The site's input: an index (its cache built, for the files beside it), or an object in the bucket."""
    root.mkdir()
    if site == 'fetched object':
        endpoint, client = request.getfixturevalue('s3')
        (root / BLOB).write_bytes(np.random.default_rng(0).bytes(1 << 20))  # one GET
        client.put_object(Bucket='sidecars', Key=f'{root.parent.name}/{BLOB}', Body=(root / BLOB).read_bytes())
        (root / 'petreloss.conf').write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = test-access\n'
                                             f'secret_key = test-secret\nhost_base = {endpoint}\n')
        return
    (root / 'data.json').write_text(json.dumps(_records(rows)))
    if site != 'index cache':
        _index(root)


def _leftovers(target: Path) -> list[Path]:
    return list(target.parent.glob(f'{glob.escape(target.name)}.tmp-*'))


def _build_and_report(site: str, root: Path, barrier, results) -> None:
    _WORK.clear()
    MMLogger.get_current_instance().addHandler(_Builds())
    barrier.wait()
    value = SITES[site].build(root, False)
    results.put((value, os.stat(_target(site, root)).st_ino, len(_WORK)))


def _results(results, processes: list) -> list:
    """What each of ``processes`` put in ``results`` (a failed one fails the test at once)."""
    got = []
    while len(got) < len(processes):
        try:
            got.append(results.get(timeout=1))
        except queue.Empty:
            assert all(p.is_alive() or p.exitcode == 0 for p in processes), 'a builder failed (its traceback is above)'
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    return got


@pytest.mark.slow
@pytest.mark.parametrize('site', sorted(SITES))
def test_processes_building_at_once_build_once(site, tmp_path, request):
    root = tmp_path / 'data'
    _prepare(site, root, request)
    barrier, results = FORK.Barrier(2), FORK.Queue()
    builders = [FORK.Process(target=_build_and_report, args=(site, root, barrier, results)) for _ in range(2)]
    for builder in builders:
        builder.start()
    gets = len(_GETS)
    seen = _results(results, builders)
    target = _target(site, root)
    # What each did to build it: once on the machine (each header read once); and a second build
    # would have renamed another file (another inode) onto the target.
    work = len(_GETS) - gets if site == 'fetched object' else sum(work for _, _, work in seen)
    assert work == (ROWS if site == 'image sizes' else 1)
    assert [inode for _, inode, _ in seen] == [os.stat(target).st_ino] * 2
    assert [value for value, _, _ in seen] == [_expected(site, root, ROWS)] * 2
    assert not _leftovers(target) and target.is_dir() == SITES[site].folder


def _lock_held(target: Path) -> bool:
    try:
        with open(f'{target}.lock', 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
    except BlockingIOError:
        return True


def _kill_midway(site: str, root: Path) -> int:
    """A build of ``site`` started in a process of its own, killed (SIGKILL) while it builds."""
    target = _target(site, root)
    builder = FORK.Process(target=SITES[site].build, args=(root, True))
    builder.start()
    deadline = time.monotonic() + 120
    while not (_lock_held(target) and (_leftovers(target) or not SITES[site].temp_while_building)):
        assert builder.is_alive() and time.monotonic() < deadline, 'the build ended before it could be killed'
        time.sleep(0.005)
    os.kill(builder.pid, signal.SIGKILL)
    builder.join(60)
    return builder.pid


@pytest.mark.slow
@pytest.mark.parametrize('site', sorted(SITES))
def test_a_build_killed_midway_leaves_nothing_half_that_is_read(site, tmp_path, request):
    root = tmp_path / 'data'
    rows = MANY_ROWS if SITES[site].temp_while_building else ROWS
    _prepare(site, root, request, rows)
    target = _target(site, root)
    if SITES[site].killable:
        dead = _kill_midway(site, root)
        assert not target.exists()  # nothing was renamed into place: what it wrote lies aside
    else:  # a download killed after its ETag was kept, before its rename: the copy itself is gone
        SITES[site].build(root, False)
        target.unlink()
        dead = 2 ** 22 + 1
    half = target.with_name(f'{target.name}.tmp-{dead}-0badf00d')  # as a build killed while writing leaves it
    if not half.exists():
        (half / 'ids.int32' if SITES[site].folder else half).parent.mkdir(parents=True, exist_ok=True)
        (half / 'ids.int32' if SITES[site].folder else half).write_bytes(b'\x93NUMPY half of it')
    assert _leftovers(target)
    results = FORK.Queue()
    again = FORK.Process(target=lambda: results.put(SITES[site].build(root, False)))
    again.start()
    assert _results(results, [again]) == [_expected(site, root, rows)]
    assert not _leftovers(target) and target.is_dir() == SITES[site].folder


@pytest.mark.slow
@pytest.mark.parametrize('site', sorted(SITES))
def test_a_link_planted_where_the_file_goes_is_replaced_never_written_through(site, tmp_path, request):
    root = tmp_path / 'data'
    _prepare(site, root, request)
    target = _target(site, root)
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'mine.txt').write_text('not the dataset\'s')
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside if SITES[site].folder else outside / 'mine.txt', target)
    value = SITES[site].build(root, False)
    assert value == _expected(site, root, ROWS)
    assert not target.is_symlink() and target.is_dir() == SITES[site].folder
    assert [p.name for p in outside.iterdir()] == ['mine.txt']
    assert (outside / 'mine.txt').read_text() == 'not the dataset\'s'
