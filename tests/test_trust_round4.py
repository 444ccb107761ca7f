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
