"""The errors of the data layer: what went wrong with one sample, and what is wrong with an index."""
from __future__ import annotations

import errno
import os

from src.datasets.storage.redact import redact


class SampleError(Exception):
    """One sample cannot be used. The dataset replaces it (a bounded number of times) and counts it.

    ``reason`` is a short, stable category ('missing-file', 'bad-image', 'too-small', ...) used to
    count failures; the message says which file and what exactly is wrong.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(redact(message))  # a URL in it loses its credentials
        self.reason = reason


class DatasetConfigError(ValueError):
    """A dataset's options do not fit its data (a ``cap_source`` none of its records has); the
    message says which and what is there. The tools print it as one line."""


class IndexFormatError(ValueError):
    """The index file (data.json, .jsonl, parquet) cannot be read; the message names file and place."""


_OUT_OF_SPACE = {errno.ENOSPC: 'No space left on', errno.EDQUOT: 'Disk quota exceeded on',
                 errno.EFBIG: 'The file size limit reached on'}


class WriteError(OSError):
    """A write failed for want of space; the message names the file system and the file (the bare
    ``[Errno 28] No space left on device`` names neither)."""

    def __str__(self) -> str:
        return self.strerror


def mount_point(path) -> str:
    """The mount point of the file system that holds ``path`` (or would, for a file not yet made)."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def write_error(exc: BaseException, path) -> BaseException:
    """``exc`` as it should reach a person: a ``WriteError`` naming the file system and ``path`` when
    it is a full disk, a quota or a file size limit; any other error unchanged."""
    reason = _OUT_OF_SPACE.get(getattr(exc, 'errno', None))
    if reason is None or isinstance(exc, WriteError):
        return exc
    return WriteError(exc.errno, f'{reason} the file system mounted at {mount_point(path)} while writing '
                                 f'{os.fspath(path)}: free space there (or write elsewhere) and run again')
