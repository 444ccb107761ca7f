"""The one way a file (or folder) beside the index cache is made: once, under a lock, written aside
and renamed. The sample index's cache, the selections, the image sizes, the stored prompt ids, the
index's digests and a fetched object all go through it, so each holds the same promises:

- the processes of a machine that would build it at once wait for the first (``<target>.lock``,
  :func:`src.datasets.storage.locks.wait_for_lock`) and look again before building;
- a build fills a temporary ``<target>.tmp-*`` beside it, renamed into place when whole: a reader
  never meets a half-written file (a rename also replaces a link planted there, never follows it);
  what a killed build left (``<target>.tmp-<pid>-<random>``, nothing else) is removed by the next
  one, under the lock;
- what is found there is read only when it is what a build leaves (:func:`kept`): a link, a FIFO
  or an oversized JSON file planted there is built over, never read;
- a target that cannot be kept (a read-only or full folder, a lock that cannot be made) raises
  :class:`Unwritable` with the cause's words: the caller does without (in memory, or again next time).

Nothing is synced to disk: every reader checks what it maps, and builds again what is not whole.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from src.datasets.errors import write_error
from src.datasets.storage.locks import wait_for_lock

T = TypeVar('T')
MAX_JSON_BYTES = 64 << 20  # a JSON file beside the cache larger than this was not written by a build
TEMP = '.tmp-'  # <target>.tmp-<pid>-<random>: a build's file or folder until it is renamed
_TEMP_NAME = re.compile(rf'{re.escape(TEMP)}\d+-[0-9a-f]{{8}}(\.\d+)?')  # (and the parts a build adds: .0, .1)


class Unwritable(OSError):
    """A file beside the index cache cannot be kept there; the message is the cause's own."""

    def __init__(self, cause):
        super().__init__(getattr(cause, 'errno', None), str(cause))

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # its arguments are not the constructor's: rebuilt from its words
        return Unwritable, (self.strerror,)


@contextlib.contextmanager
def held(target, *, required: bool = True, leftovers: Sequence[str] = ()) -> Iterator[bool]:
    """Hold ``<target>.lock`` for the block (the lock is best effort: where ``flock`` does not work
    nothing waits, and the rename still keeps the target whole); yields True when held. While held,
    what killed builds left beside ``target`` is removed first: its ``TEMP`` files and folders and
    the ``leftovers`` globs (the names earlier versions gave them).

    Where the lock cannot be made (a read-only folder): ``Unwritable`` when ``required``, else the
    block runs anyway, yielding False."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = wait_for_lock(f'{target}.lock')
    except OSError as exc:
        if required:
            raise Unwritable(exc) from exc
        yield False
        return
    with lock:
        for leftover in target.parent.glob(f'{glob.escape(target.name)}{TEMP}*'):
            if _TEMP_NAME.fullmatch(leftover.name[len(target.name):]):  # a user's own '.tmp-mine' stays
                remove(leftover)
        for pattern in leftovers:
            for leftover in target.parent.glob(pattern):
                remove(leftover)
        yield True


@contextlib.contextmanager
def written_aside(target, *, folder: bool = False) -> Iterator[Path]:
    """A new temporary file (or folder) beside ``target`` for the block to fill, renamed onto
    ``target`` when the block ends without error and removed when it fails. ``Unwritable`` (naming
    a full disk and ``target``) when the temporary one cannot be made or renamed."""
    target = Path(target)
    temp = target.with_name(f'{target.name}{TEMP}{os.getpid()}-{secrets.token_hex(4)}')
    try:
        if folder:
            os.mkdir(temp)
        else:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise Unwritable(write_error(exc, target)) from exc
    try:
        yield temp
        try:
            _rename(temp, target, folder)
        except OSError as exc:
            raise Unwritable(write_error(exc, target)) from exc
    finally:
        remove(temp)  # gone already when renamed


def kept(target, *, folder: bool = False, max_bytes: int | None = None) -> bool:
    """Whether ``target`` is what a build leaves there, so that reading it is safe: a regular file
    (of at most ``max_bytes``), or with ``folder`` a real folder of regular files. Anything else
    planted there counts as missing (built again, and the rename replaces it): a link is never read
    through (out of the folder), a FIFO never opened (it would wait for a writer forever)."""
    try:
        info = os.lstat(target)
        if folder:
            return stat.S_ISDIR(info.st_mode) and all(entry.is_file(follow_symlinks=False)
                                                      for entry in os.scandir(target))
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and (max_bytes is None or info.st_size <= max_bytes)


def read_json(target):
    """What the JSON file ``target`` beside the cache holds, or None where it is not what a build
    leaves (:func:`kept`, at most ``MAX_JSON_BYTES``) or cannot be read or parsed: built again."""
    if not kept(target, max_bytes=MAX_JSON_BYTES):
        return None
    with contextlib.suppress(OSError, ValueError, RecursionError):
        return json.loads(Path(target).read_text())
    return None


def build_once(target, load: Callable[[], T | None], build: Callable[[Path], object], *,
               folder: bool = False, required: bool = True, leftovers: Sequence[str] = ()) -> T:
    """``load()``: what ``target`` holds when it is whole and current, else None (not asked where
    something else than a build's file is there: :func:`kept`). When it is None,
    the lock is taken (:func:`held`) and ``load()`` asked again; still None, ``build(temp)`` fills a
    temporary file (or folder) :func:`written_aside`, renamed onto ``target``, and what it holds is
    loaded. ``Unwritable`` when it cannot be kept or read back; the build's own errors pass."""
    def found_there() -> T | None:
        return load() if kept(target, folder=folder) else None

    found = found_there()
    if found is not None:
        return found
    with held(target, required=required, leftovers=leftovers):
        found = found_there()
        if found is None:
            with written_aside(target, folder=folder) as temp:
                build(temp)
            found = found_there()
    if found is None:
        raise Unwritable(f'{target} could not be read back after writing it')
    return found


def _rename(temp: Path, target: Path, folder: bool) -> None:
    if folder:
        remove(target)  # a folder cannot replace another by a rename: what is there goes first
        os.rename(temp, target)
    else:
        os.replace(temp, target)


def remove(path: Path) -> None:
    """Remove the file, folder or link ``path`` (a link itself, never what it points to), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()

