"""Read dataset files straight out of their tar shards, without extracting them.

A member index maps each regular-file member of the shards to the path it would have after the
dataset's extraction (relative to the dataset root), with its shard, data offset and size. The
preparation tools build it with ``--no-extract`` (``src/prepare/tar_members.py``): one pass over
each tar's headers, then one combined Arrow file at the root (``tar_index.arrow``) that DataLoader
workers memory-map and share, like the sample index. This module is the format and its reader.

Lookup goes through a 64-bit hash of the path: the combined table is sorted by it, so finding a
member is a ``numpy.searchsorted`` over a memory-mapped column instead of a per-worker dict of
millions of strings. Reading a member is one ``os.pread`` on a descriptor that each process opens
for itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from src.datasets.storage.arrow_numpy import to_numpy
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.storage.files import MAX_FILE_BYTES

INDEX_NAME = 'tar_index.arrow'
FORMAT_VERSION = '1'
# Descriptors one process keeps open at once: a dataset may have tens of thousands of shards,
# more than the usual limit on open files.
MAX_OPEN_SHARDS = 64

INDEX_SCHEMA = pa.schema([('key', pa.uint64()), ('path', pa.large_string()), ('shard', pa.int32()),
                           ('offset', pa.int64()), ('size', pa.int64())])


class StaleIndexError(IndexFormatError):
    """A tar changed (or vanished) after it was indexed: its offsets can no longer be trusted."""


def path_key(relpath: str) -> int:
    """A stable 64-bit hash of a member path (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(relpath.encode('utf-8'), digest_size=8).digest(), 'little')


def read_arrow(path: str) -> pa.Table:
    try:
        return ipc.open_file(pa.memory_map(path)).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise IndexFormatError(f'{path}: not a readable tar member index ({e})') from e


def schema_metadata(schema: pa.Schema) -> dict[str, str]:
    """The key/value metadata an index file keeps in its Arrow schema, as text."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


class TarMemberIndex:
    """Random access to the members of a dataset's tar shards, by their would-be extracted path.

    Picklable (only the index path travels); each process opens its own descriptors lazily and
    checks on first use that each tar still has the size and mtime it had when indexed.
    """

    def __init__(self, index_path: str):
        self.index_path = os.path.abspath(index_path)
        self.root = os.path.dirname(self.index_path)
        table = read_arrow(self.index_path)
        meta = schema_metadata(table.schema)
        if meta.get('version') != FORMAT_VERSION or table.schema.names != INDEX_SCHEMA.names:
            raise IndexFormatError(f'{self.index_path}: not a tar member index of format '
                                   f'{FORMAT_VERSION}; build it again with the preparation tool')
        self._shards = json.loads(meta['shards'])
        self._paths = self._column(table, 'path')
        self._keys = to_numpy(self._column(table, 'key'))
        self._shard_ids = to_numpy(self._column(table, 'shard'))
        self._offsets = to_numpy(self._column(table, 'offset'))
        self._sizes = to_numpy(self._column(table, 'size'))
        self._pid = os.getpid()
        self._fds: OrderedDict[int, int] = OrderedDict()

    @staticmethod
    def _column(table: pa.Table, name: str) -> pa.Array:
        """The column as one array viewing the memory map (combine_chunks would copy even one chunk,
        into every process's private memory)."""
        column = table[name]
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()

    @classmethod
    def open(cls, index_path: str) -> TarMemberIndex:
        """The index, with every tar it names checked (one stat each): a tar replaced or changed
        since indexing fails here, at start-up, not when a worker first reads from it."""
        index = cls(index_path)
        for shard in range(len(index._shards)):
            index._check_signature(shard, index._stat(shard))
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, relpath: str) -> bool:
        return self._row(relpath) is not None

    def __getstate__(self) -> dict:
        return {'index_path': self.index_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['index_path'])

    def relpath(self, path: str) -> str:
        """The member path of ``path`` (absolute, or relative to the working directory), which is
        how the dataset names files: ``os.path.join(image_folder, image_file)``."""
        return os.path.relpath(os.path.abspath(path), self.root)

    def paths(self) -> list[str]:
        """Every member path (in no particular order): what extraction would have created."""
        return self._paths.to_pylist()

    def path_column(self) -> pa.ChunkedArray:
        """Every member path, as the index's Arrow column (no Python strings made)."""
        return self._paths

    def locate(self, relpath: str) -> tuple[str, int, int, int] | None:
        """(tar path relative to the root, the tar's indexed size, data offset, data size) of the
        member ``relpath``, or None: where a reader that is not a local file gets its bytes."""
        row = self._row(relpath)
        if row is None:
            return None
        shard = self._shards[int(self._shard_ids[row])]
        return shard['tar'], int(shard['size']), int(self._offsets[row]), int(self._sizes[row])

    def read(self, relpath: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of the member that would be extracted to ``<root>/<relpath>`` (at most ``max_bytes``)."""
        row = self._row(relpath)
        if row is None:
            raise SampleError('missing-file', f'{os.path.join(self.root, relpath)}: no such member '
                                              f'in the tars indexed by {self.index_path}')
        shard, offset, size = int(self._shard_ids[row]), int(self._offsets[row]), int(self._sizes[row])
        if size > max_bytes:
            raise SampleError('too-large', f'{relpath}: member of {self._tar_path(shard)} has {size} bytes, more '
                                           f'than the {max_bytes} it may have')
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise SampleError('missing-file', f'{relpath}: member of {self._tar_path(shard)} at byte '
                                              f'{offset} has {size} bytes, but only {len(data)} '
                                              'could be read (the tar is cut short)')
        return data

    def close(self) -> None:
        """Close the open tar descriptors (after a fork, the child's copies of its parent's)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pid = os.getpid()

    def _row(self, relpath: str) -> int | None:
        relpath = posixpath.normpath(relpath)
        key = np.uint64(path_key(relpath))
        row = int(np.searchsorted(self._keys, key))
        while row < len(self._keys) and self._keys[row] == key:
            if self._paths[row].as_py() == relpath:
                return row
            row += 1
        return None

    def _tar_path(self, shard: int) -> str:
        return os.path.join(self.root, self._shards[shard]['tar'])

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: never share the parent's descriptors
            self.close()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        fd = self._open_checked(shard)
        self._fds[shard] = fd
        if len(self._fds) > MAX_OPEN_SHARDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _stat(self, shard: int) -> os.stat_result:
        try:
            return os.stat(self._tar_path(shard))
        except FileNotFoundError:
            raise self._gone(shard) from None

    def _gone(self, shard: int) -> StaleIndexError:
        return StaleIndexError(f'{self._tar_path(shard)} was indexed in {self.index_path} but is gone; run the '
                               'preparation tool with --no-extract again')

    def _check_signature(self, shard: int, st: os.stat_result) -> None:
        expected = self._shards[shard]
        changes = [f'{what} {old} -> {new}' for what, old, new in
                   (('size', expected['size'], st.st_size),
                    ('mtime_ns', expected['mtime_ns'], st.st_mtime_ns)) if old != new]
        if changes:
            raise StaleIndexError(f'{self._tar_path(shard)} changed after it was indexed in {self.index_path} '
                                  f'({", ".join(changes)}); run the preparation tool with '
                                  '--no-extract again to re-index it')

    def _open_checked(self, shard: int) -> int:
        """Open a tar, refusing one that is not the file that was indexed."""
        try:
            fd = os.open(self._tar_path(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise self._gone(shard) from None
        try:
            self._check_signature(shard, os.fstat(fd))
        except StaleIndexError:
            os.close(fd)
            raise
        return fd
