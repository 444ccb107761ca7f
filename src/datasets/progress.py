"""The project's progress bars: tqdm, with a write lock of each process's own.

tqdm serialises the writes of its bars with a lock shared by every process forked from the one
that made it (a multiprocessing lock), besides a thread lock. A forked process killed while it
holds the shared one (a builder or a pool worker stopped by SIGKILL or the OOM killer in the middle
of drawing its bar) leaves it held for good, and every relative's next bar, and tqdm's monitor
thread, wait for ever; a process forked while one of its parent's threads held the thread lock
inherits it held by a thread it does not have. Here each process draws under a lock of its own,
made again in a forked child: at worst two processes' bars share a line for a moment.
"""
from __future__ import annotations

import os
import threading

from tqdm import tqdm as _tqdm

__all__ = ['tqdm']


class _ProcessLock:
    """tqdm's write lock for one process: a thread lock only."""

    def __init__(self):
        self._lock = threading.RLock()

    def acquire(self, *args, **kwargs):
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class tqdm(_tqdm):  # noqa: N801 (tqdm's own name, for its callers)
    """tqdm's bar, drawn under this process's own lock (see the module)."""


def _own_lock() -> None:
    tqdm.set_lock(_ProcessLock())


_own_lock()
os.register_at_fork(after_in_child=_own_lock)
