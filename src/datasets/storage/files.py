"""Reading the files a download holds, trusting none of them: the one place that opens a data file.

- :func:`unsafe_path` says why a path taken from an index (an image, an annotation, an object key)
  must not be joined to its folder: it is absolute, or climbs out with ``..``. Such paths are
  refused and counted by the dataset and the preparation tools, unless a config says it wants
  them (``allow_outside_paths=True``); :func:`unsafe_path_mask` judges a whole index column at once.
- :func:`link_outside` is the link rule: a path named under a folder must not lead out of it
  through a symbolic link (the file itself, or a folder on the way). A download can hold links
  (``raw/0001 -> /home/user/.ssh``): nothing is read, listed, written or uploaded through one that
  leaves its folder. :func:`join_inside` applies it to every path a dataset reads or the latent
  cache writes; the preparation tools' listing, reads and extraction, and ``tools/upload.py`` ask
  it too, and count and name what it refuses. Links that stay inside the folder are followed.
- :func:`read_file` reads a regular file, and only a regular file, up to a bound: a FIFO or a device
  planted in an image folder would otherwise hang a DataLoader worker or read until memory runs
  out.
"""
from __future__ import annotations

import errno
import os
import stat
from functools import lru_cache

import numpy as np
import pyarrow as pa

from src.datasets.storage.arrow_numpy import bits
from src.datasets.errors import SampleError

# The largest file a sample may read: no image of these datasets comes close (a 8192 x 8192 PNG is
# ~200 MB at worst), and a bound keeps a wrong path (a disk image, a log) from filling memory.
MAX_FILE_BYTES = 512 << 20
_READ_CHUNK = 8 << 20


def unsafe_path(path: str) -> str | None:
    """'absolute-path' or 'parent-path' when ``path`` (as an index names it) would leave the folder
    it is joined to, 'bad-path' for one holding a NUL byte (no file system takes it); else None."""
    if '\0' in path:
        return 'bad-path'
    if path.startswith('/'):
        return 'absolute-path'
    if '..' in path.split('/'):
        return 'parent-path'
    return None


def unsafe_path_mask(column) -> np.ndarray:
    """Per value of an Arrow string column: whether :func:`unsafe_path` refuses it (nulls: no).

    Read from the column's buffers: a leading '/' is one byte per value, and '..' or NUL anywhere
    is one ``bytes.find`` over all the text (a regex per path would weigh on every dataset's
    construction: bench/RESULTS.md); only values that hold one of those are judged one by one.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_unsafe_in_chunk(chunk) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _unsafe_in_chunk(chunk) -> np.ndarray:
    count = len(chunk)
    mask = np.zeros(count, dtype=bool)
    if count == 0 or chunk.null_count == count:
        return mask
    validity, offsets, data = chunk.buffers()[:3]
    offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(offsets, offset_type, count=count + 1, offset=chunk.offset * np.dtype(offset_type).itemsize)
    text = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    mask[nonempty] = text[starts[nonempty]] == ord('/')
    raw = text[offsets[0]:offsets[-1]].tobytes()
    suspects = set()
    for needle in (b'..', b'\0'):
        at = raw.find(needle)
        while at != -1:
            suspects.add(int(np.searchsorted(offsets, offsets[0] + at, side='right')) - 1)
            at = raw.find(needle, at + 1)
    for row in suspects:
        mask[row] = unsafe_path(raw[starts[row] - offsets[0]:ends[row] - offsets[0]].decode('utf-8', 'replace')) is not None
    if validity is not None:
        mask &= bits(validity, chunk.offset, count)
    return mask


@lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    """A folder's real path, once per folder: a sample read asks for its folder's, not for every
    component of its own path again (a download's folders do not change while it is read)."""
    return os.path.realpath(folder)


def link_outside(path: str, folder: str) -> str | None:
    """The link rule: 'link-outside' when ``path`` (named under ``folder``) leads out of ``folder``
    through a symbolic link, itself or a folder on the way (``..`` in a link's target included);
    else None. ``folder`` may itself be a link (``data -> /mnt/disk/data``): only what is beneath
    it is judged."""
    parent, name = os.path.split(os.path.abspath(path))  # absolute: the cache holds across a chdir
    real = os.path.realpath(path) if name in ('', '.', '..') or os.path.islink(path) else \
        os.path.join(_real_folder(parent), name)
    base = _real_folder(os.path.abspath(folder))
    return None if real == base or real.startswith(base.rstrip(os.sep) + os.sep) else 'link-outside'


def join_inside(folder: str | None, path: str, *, allow_outside: bool = False) -> str:
    """``os.path.join(folder, path)``, refusing (``SampleError('unsafe-path')``) a path that is
    absolute or climbs out of ``folder``, and (``SampleError('unsafe-link')``) one that leads out of
    it through a symbolic link, unless ``allow_outside``."""
    if not isinstance(path, str):
        raise SampleError('bad-path', f'{path!r} is a {type(path).__name__}, not a path')
    reason = None if allow_outside else unsafe_path(path)
    if reason:
        raise SampleError('unsafe-path', f'{path!r} is refused ({reason}): paths in an index stay inside '
                                         f'their folder ({folder or "the working directory"}); set '
                                         'allow_outside_paths=True to read such paths')
    joined = os.path.join(folder or '', path)
    base = folder or os.curdir  # no folder: the path is named under the working directory, judged there
    if not allow_outside and '://' not in base and link_outside(joined, base):
        # A link to a device or a FIFO is counted as what it reaches (a stat, never an open).
        reason = 'not-a-file' if os.path.exists(joined) and not os.path.isfile(joined) else 'unsafe-link'
        raise SampleError(reason, f'{joined}: refused: a symbolic link on the way leads out of '
                                  f'{folder or "the working directory"}; '
                                  'set allow_outside_paths=True to read through such links')
    return joined


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file ``path`` and its stat (the caller closes it). Raises
    ``SampleError``: 'missing-file' (absent or unreadable) or 'not-a-file' (a folder, FIFO, socket
    or device: opened without blocking, never read)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise SampleError('missing-file', f'{path}: no such file') from None
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket, or a FIFO refused for lack of a writer
            raise SampleError('not-a-file', f'{path}: not a regular file') from None
        raise SampleError('missing-file', f'{path}: cannot be read: {err.strerror}') from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SampleError('not-a-file', f'{path}: {file_kind(info.st_mode)}, not a regular file: not read')
    return fd, info


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, from its ``st_mode``."""
    return 'a folder' if stat.S_ISDIR(mode) else 'a FIFO' if stat.S_ISFIFO(mode) else \
        'a symbolic link' if stat.S_ISLNK(mode) else \
        'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'not a regular file'


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises ``SampleError``: those of :func:`open_regular`, and 'too-large' (over ``max_bytes``).
    """
    fd, info = open_regular(path)
    try:
        if info.st_size > max_bytes:
            raise SampleError('too-large', f'{path}: {info.st_size} bytes, more than the {max_bytes} a sample may read')
        return _read_bounded(fd, path, info.st_size, max_bytes)
    except OSError as err:
        raise SampleError('missing-file', f'{path}: cannot be read: {err.strerror}') from None
    finally:
        os.close(fd)


def _read_bounded(fd: int, path: str, size: int, max_bytes: int) -> bytes:
    """All of ``fd`` to its end, ``size`` (its stat) as the first read's length, failing past ``max_bytes``
    (a file that grows while it is read)."""
    chunks, total, want = [], 0, size + 1
    while chunk := os.read(fd, want):
        total += len(chunk)
        if total > max_bytes:
            raise SampleError('too-large', f'{path}: grew past the {max_bytes} bytes a sample may read')
        chunks.append(chunk)
        want = _READ_CHUNK
    return b''.join(chunks)  # one chunk: that very object, no copy


def read_text_file(path: str, max_bytes: int = 1 << 20) -> str:
    """A small text file (a config, a report) as UTF-8, through :func:`read_file`."""
    return read_file(path, max_bytes).decode('utf-8-sig')
