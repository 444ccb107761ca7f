"""A process that waits for a lock beside the index cache says so, naming the holder: a rank
waiting for another's index build, or for a process that is stopped and will never let go
(``locks.wait_for_lock``, which every file built beside the index cache goes through)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

from src.datasets.storage import locks

pytestmark = pytest.mark.skipif(not os.path.exists('/proc/locks'), reason='/proc/locks is Linux')

HOLD = 'import fcntl, sys, time; f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(120)'


@pytest.fixture
def holder(tmp_path):
    """A process holding ``<tmp>/index.arrow.lock``."""
    path = tmp_path / 'index.arrow.lock'
    child = subprocess.Popen([sys.executable, '-c', HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == '1'
    yield path, child
    child.kill()
    child.wait()


@pytest.mark.parametrize('stopped', [False, True])
def test_a_wait_for_a_lock_names_its_holder(holder, monkeypatch, caplog, stopped):
    path, child = holder
    if stopped:
        os.kill(child.pid, signal.SIGSTOP)
        os.waitpid(child.pid, os.WUNTRACED)  # a stop lands later than kill returns: wait until it has
    monkeypatch.setattr(locks, 'NOTE_AFTER', 0.0)

    class EndsTheHolder(logging.Handler):
        def emit(self, record):  # once the wait is said, the holder ends: the lock is this process's
            child.kill()

    ends = EndsTheHolder()
    logging.getLogger('src.datasets.storage.locks').addHandler(ends)
    try:
        with caplog.at_level(logging.WARNING, logger='src.datasets.storage.locks'):
            with locks.wait_for_lock(path):
                pass
    finally:
        logging.getLogger('src.datasets.storage.locks').removeHandler(ends)
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith(f'waiting 0 s for {path}: process {child.pid} holds it')
    assert ('is stopped: nothing goes on until it does (kill -CONT' in said[0]) == stopped


def test_a_short_wait_says_nothing(holder, caplog):
    path, child = holder
    released = threading.Timer(0.3, child.kill)
    released.start()
    with caplog.at_level(logging.WARNING, logger='src.datasets.storage.locks'):
        with locks.wait_for_lock(path):
            pass
    released.join()
    assert caplog.records == []  # under NOTE_AFTER (5 s): the usual wait of a rank for a quick build
