"""The project's locks, in one module.

- :func:`wait_for_lock` makes the processes of one machine wait while one of them builds a shared
  file (the sample index's cache, a selection, image sizes, a fetched object, the stored prompt
  ids) that the others would build too: ``src.datasets.storage.sidecars`` builds them all.
- Claim files let runs on the same dataset root at once (slices on several machines over a shared
  file system, or two started by mistake) share work.

They share work through claim files made with ``O_CREAT | O_EXCL`` (atomic on local file systems
and NFS alike, unlike ``flock``), each holding who made it: host, pid and since when.

Claims:

- A tar is claimed before it is processed (:func:`claim`): a tar another live run holds is left to
  it (and waited for, see the runner), so no two runs write one tar's staging folder.
- Building the index (and clearing leftovers) holds the root's ``index`` claim: a second run waits
  for it, then builds again from the same files (building is idempotent), so the download's index
  kept as ``.orig`` is never read back after a filtered one replaced it.

A claim whose holder is gone is stale and is taken over: on this host, when its pid is no longer
running; from another host, when its file has not been touched for :data:`STALE_AFTER` seconds
(a holder touches its claims every :data:`HEARTBEAT` seconds while it lives).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from typing import IO

from src.datasets.storage.files import file_kind

logger = logging.getLogger(__name__)

HEARTBEAT = 30.0
STALE_AFTER = 300.0
NOTE_AFTER = 5.0  # seconds a process waits for a lock before it says so (then every NOTE_EVERY)
NOTE_EVERY = 60.0
HOST = socket.gethostname()


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float

    def describe(self) -> str:
        return f'host {self.host}, pid {self.pid}, since {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))}'


class Busy(Exception):
    """The claim is held by a live run: ``holder`` says which."""

    def __init__(self, path: str, holder: Holder):
        super().__init__(f'{path} is held by another run ({holder.describe()})')
        self.holder = holder


def claims_folder(root: str) -> str:
    return os.path.join(root, '.prepare', 'claims')


def _read_holder(path: str) -> Holder | None:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return Holder(str(data['host']), int(data['pid']), float(data['since']))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(holder: Holder, path: str) -> bool:
    if holder.host == HOST:
        if holder.pid == os.getpid():
            return True
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's live process
        return True
    try:
        return time.time() - os.stat(path).st_mtime < STALE_AFTER
    except FileNotFoundError:
        return False


def _try_create(path: str) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump({'host': HOST, 'pid': os.getpid(), 'since': time.time()}, f)
    return True


def acquire(path: str) -> None:
    """Make the claim file ``path``, taking over a stale one; ``Busy`` when a live run holds it."""
    for _ in range(3):  # a stale claim may be taken over by two runs at once: one of them wins
        if _try_create(path):
            return
        holder = _read_holder(path)
        if holder is None:  # being written this instant, or damaged: judge by its age
            try:
                if time.time() - os.stat(path).st_mtime < 5:
                    time.sleep(0.1)
                    continue
            except FileNotFoundError:
                continue
        elif _alive(holder, path):
            raise Busy(path, holder)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # stale: its run was killed
    holder = _read_holder(path)
    raise Busy(path, holder or Holder('unknown', 0, time.time()))


def is_free(path: str) -> bool:
    """Whether no live run holds the claim ``path``: it is missing, or left by a run that is gone."""
    holder = _read_holder(path)
    try:
        if holder is None:
            return time.time() - os.stat(path).st_mtime > 5
    except FileNotFoundError:
        return True
    return not _alive(holder, path)


def release(path: str) -> None:
    holder = _read_holder(path)
    if holder is not None and holder.host == HOST and holder.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def held(path: str, *, wait: float = 0.0, on_wait=None):
    """Hold the claim ``path`` for the block, waiting up to ``wait`` seconds for a live holder
    (``on_wait(busy)`` is called once when waiting starts); ``Busy`` after that. The claim is
    touched every HEARTBEAT seconds. On a read-only root nothing is claimed: no run can write
    there, so none can race this one."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            acquire(path)
            break
        except Busy as busy:
            if time.monotonic() >= deadline:
                raise
            if on_wait and not told:
                on_wait(busy)
                told = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        except OSError as err:
            if err.errno != errno.EROFS:
                raise
            yield
            return
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        release(path)


def _heartbeat(path: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(OSError):
            os.utime(path)


def tar_claim_path(root: str, tar_name: str) -> str:
    return os.path.join(claims_folder(root), 'tars', tar_name + '.claim')


def index_claim_path(root: str) -> str:
    return os.path.join(claims_folder(root), 'index.claim')


def wait_for_lock(path) -> IO:
    """The lock file ``path``, open and held by this process (close it to let the next one in).

    Best effort: where ``flock`` does not work (some NFS) it does not wait, so what is built under
    it must still be written atomically. Opening the file raises ``OSError`` as ``open`` does, and
    one naming ``path`` where something else than a lock file is there: a link is never followed
    (it would make or lock a file out of the folder), a FIFO never waited on."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        try:
            kind = file_kind(os.lstat(path).st_mode)
        except OSError:
            kind = 'not a regular file'
        raise OSError(f'{path}: {kind} where the lock file goes: remove it')
    lock = os.fdopen(fd, 'a')
    with contextlib.suppress(OSError):
        _take_flock(lock, path)
    return lock


def _take_flock(lock: IO, path) -> None:
    """``flock`` on ``lock``, waiting while another process holds it: a wait of more than
    :data:`NOTE_AFTER` seconds is said (then every :data:`NOTE_EVERY`), naming the holder and
    whether it is stopped, so that a wait for a build, or for a process that will never go on, is
    never silent."""
    started = time.monotonic()
    noted, pause = started - NOTE_EVERY + NOTE_AFTER, 0.01
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() - noted >= NOTE_EVERY:
            noted = time.monotonic()
            logger.warning('waiting %.0f s for %s: %s', noted - started, path, lock_holder(lock))
        time.sleep(pause)
        pause = min(2 * pause, 0.5)


def lock_holder(lock: IO) -> str:
    """Who holds the ``flock`` on ``lock``'s file, as ``/proc/locks`` tells it (Linux): its pid, and
    what to do when it is stopped; a general phrase where that cannot be told."""
    try:
        info = os.fstat(lock.fileno())
        device = f'{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}'
        with open('/proc/locks', encoding='ascii', errors='replace') as table:
            pids = [int(fields[4]) for fields in map(str.split, table)
                    if len(fields) > 5 and fields[1] == 'FLOCK' and fields[5] == device]
        pid = next(pid for pid in pids if pid != os.getpid())
        with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as stat_file:
            state = stat_file.read().rpartition(')')[2].split()[0]
    except (OSError, ValueError, IndexError, StopIteration):
        return 'another process holds it (building it)'
    if state in ('T', 't'):
        return (f'process {pid} holds it and is stopped: nothing goes on until it does '
                f'(kill -CONT {pid}) or ends')
    return f'process {pid} holds it (building it)'

