"""The lock that makes the processes of one machine wait while one of them builds a shared file
(the sample index's cache, a fetched object, the stored prompt ids) that the others would build too."""
from __future__ import annotations

import contextlib
import fcntl
from typing import IO


def wait_for_lock(path) -> IO:
    """The lock file ``path``, open and held by this process (close it to let the next one in).

    Best effort: where ``flock`` does not work (some NFS) it does not wait, so what is built under
    it must still be written atomically. Opening the file raises ``OSError`` as ``open`` does."""
    lock = open(path, 'a')
    with contextlib.suppress(OSError):
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock
