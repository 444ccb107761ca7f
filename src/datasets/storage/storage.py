"""Where a dataset's files are read from, chosen once when the dataset is built: a reader gives the
bytes of a path (as the dataset names it: ``os.path.join(folder, file)``) or a ``SampleError``, and
may be told which files come next (:meth:`Reader.prefetch`).

- :class:`LocalFiles`: files on a local or mounted file system (regular files only, bounded);
- :class:`TarMembers`: members of tar shards, through a tar member index (``tar_index.arrow``,
  written by the preparation tools' ``--no-extract`` and by ``cache_latents.py --format shards``):
  one ``pread`` each;
- in S3-protocol storage (``src.datasets.storage.object_store``): ``ObjectFolder``, objects;
  ``ObjectTarMembers``, members of tar shards in a bucket, one ranged GET each, or one for a
  sample's files together; a batch's files fetched at once, in threads, when told.
"""
from __future__ import annotations

import os
from typing import Sequence

from src.datasets.errors import SampleError
from src.datasets.storage.files import MAX_FILE_BYTES, read_file
from src.datasets.storage.tar_index import INDEX_NAME, TarMemberIndex


class Reader:
    """The interface every reader has."""

    remote = False  # reads wait on a network: worth telling which files come next

    def read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of ``path``; one of more than ``max_bytes`` is ``SampleError('too-large')``,
        refused before it is read where its size is known first."""
        raise NotImplementedError

    def prefetch(self, samples: Sequence[Sequence[str]], ahead: bool = False) -> None:
        """The files of ``samples`` (each sample's paths) are read next (``ahead``: after the ones
        being read now, so not waited for). Where reading them together saves nothing (a file
        system, a memory-mapped tar), nothing happens; errors are always the reads' own
        (``src.datasets.storage.prefetch``)."""


class LocalFiles(Reader):
    """Regular files only, and bounded: see ``src.datasets.storage.files.read_file``."""

    def read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        return read_file(path, max_bytes)


class TarMembers(Reader):
    """``index`` is a ``TarMemberIndex`` (or any object with its ``relpath(path)`` and ``read(relpath)``)."""

    def __init__(self, index):
        self.index = index

    def read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        relpath = self.index.relpath(path)
        if isinstance(self.index, TarMemberIndex):
            return self.index.read(relpath, max_bytes)
        return check_size(self.index.read(relpath), path, max_bytes)


def check_size(data: bytes, path: str, max_bytes: int, size: int | None = None) -> bytes:
    """``data`` (read from ``path``), or ``SampleError('too-large')`` when it (or ``size``, the
    length its source announces before it is read) is more than ``max_bytes``."""
    size = len(data) if size is None else size
    if size > max_bytes:
        raise SampleError('too-large', f'{path}: {size} bytes, more than the {max_bytes} it may have')
    return data


def folder_storage(folder: str | None):
    """The reader of a folder that may hold tar shards with their index (the sharded latent store),
    else of its files."""
    index = os.path.join(folder, INDEX_NAME) if folder is not None else None
    return TarMembers(TarMemberIndex.open(index)) if index and os.path.exists(index) else LocalFiles()
