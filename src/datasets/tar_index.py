"""Read dataset files straight out of their tar shards, without extracting them.

A member index maps each regular-file member of the shards to the path it would have after the
dataset's extraction (relative to the dataset root), with its shard, data offset and size. It is
built from one pass over each tar's headers (no member data is read) by :data:`INDEX_MEMBERS`, the
preparation runner's step for ``--no-extract`` (the runner gives it parallelism, resume markers and
``--start/--end`` slices, as it gives them to extraction): one index file per tar, then, once every
tar is done, one combined Arrow file at the root (``tar_index.arrow``) that DataLoader workers
memory-map and share, like the sample index.

Lookup goes through a 64-bit hash of the path: the combined table is sorted by it, so finding a
member is a ``numpy.searchsorted`` over a memory-mapped column instead of a per-worker dict of
millions of strings. Reading a member is one ``os.pread`` on a descriptor that each process opens
for itself.

Members that safe extraction refuses (links, devices, absolute names, names with ``..``) are
refused here too, by the same rule; a damaged tar gives its complete members and is reported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tarfile
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from src.datasets.errors import IndexFormatError, SampleError
from src.prepare.atomic import atomic_write
from src.prepare.extract import TarJob, TarResult, end_of_archive_missing, member_path, refusal

logger = logging.getLogger(__name__)

INDEX_NAME = 'tar_index.arrow'
FORMAT_VERSION = '1'
# Descriptors one process keeps open at once: a dataset may have tens of thousands of shards,
# more than the usual limit on open files.
MAX_OPEN_SHARDS = 64

_SHARD_SCHEMA = pa.schema([('path', pa.string()), ('key', pa.uint64()), ('offset', pa.int64()),
                           ('size', pa.int64())])
_INDEX_SCHEMA = pa.schema([('key', pa.uint64()), ('path', pa.large_string()), ('shard', pa.int32()),
                           ('offset', pa.int64()), ('size', pa.int64())])


class StaleIndexError(IndexFormatError):
    """A tar changed (or vanished) after it was indexed: its offsets can no longer be trusted."""


def path_key(relpath: str) -> int:
    """A stable 64-bit hash of a member path (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(relpath.encode('utf-8'), digest_size=8).digest(), 'little')


def scan_tar(tar_path: str) -> tuple[list[tuple[str, int, int]], list[list[str]], str]:
    """One pass over a tar's headers: (clean name, data offset, size) of each member extraction
    would write, the refused members as [name, reason], and where a damaged tar stops being
    readable ('' for an intact one). Raises ``tarfile.ReadError`` when not even the first header
    can be read."""
    members, refused, damage = [], [], ''
    file_size = os.path.getsize(tar_path)
    with open(tar_path, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError as e:  # raised when the previous member's data is cut short
                damage = str(e)
                break
            if member is None:
                if end_of_archive_missing(f, tar.offset):
                    last = repr(members[-1][0]) if members else 'the start'
                    damage = f'the tar ends early or is damaged after {last}'
                break
            if member.isdir():
                continue
            reason = refusal(member) or _name_refusal(member.name)
            if reason:
                refused.append([member.name, reason])
            else:
                members.append((member_path(member.name), member.offset_data, member.size))
    # A member whose data runs past the end of the file is the one cut short.
    while members and members[-1][1] + members[-1][2] > file_size:
        name, offset, size = members.pop()
        damage = f'member {name!r} is cut short ({size} bytes from byte {offset}, the file ends at {file_size})'
    return members, refused, damage


def _name_refusal(name: str) -> str | None:
    """Names the index cannot hold: tarfile decodes undecodable bytes to lone surrogates."""
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        return 'bad-name'
    return None


def shard_index_path(root: str, tar_name: str) -> str:
    """Where the member index of the tar ``<root>/<tar_name>`` is kept."""
    return os.path.join(root, '.prepare', IndexMembers.name, tar_name + '.members.arrow')


def _write_arrow(table: pa.Table, path: str, *, durable: bool = True) -> None:
    with atomic_write(path, 'wb', durable=durable) as f, ipc.new_file(f, table.schema) as writer:
        # One record batch, so that readers get zero-copy numpy views of whole columns.
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def _read_arrow(path: str) -> pa.Table:
    try:
        return ipc.open_file(pa.memory_map(path)).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise IndexFormatError(f'{path}: not a readable tar member index ({e})') from e


def _metadata(path: str) -> dict[str, str] | None:
    """The metadata stored in an index file, or None if it is missing or unreadable."""
    try:
        schema = ipc.open_file(pa.memory_map(path)).schema
    except (OSError, pa.ArrowInvalid):
        return None
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def _tar_signature(tar_path: str) -> dict[str, int]:
    st = os.stat(tar_path)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


class IndexMembers:
    """The preparation runner's step for ``--no-extract``: index each tar's members, in place.

    ``process`` writes one tar's member index; ``listing`` (called once every tar is done) combines
    them into ``<root>/tar_index.arrow`` and returns the member paths; ``read`` serves a member's
    bytes to the index builders (caption json and .txt files).
    """

    name = 'tar-index'

    def __init__(self):
        self._open_indexes: dict[str, TarMemberIndex] = {}

    def __getstate__(self) -> dict:
        return {}  # the runner sends the step to worker processes: no open index travels

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def process(self, job: TarJob) -> TarResult:
        try:
            signature = _tar_signature(job.path)
            members, refused, damage = scan_tar(job.path)
        except (tarfile.TarError, OSError) as e:
            return TarResult(name=job.name, status='failed', error=f'cannot index {job.path}: {e}')
        paths = [posixpath.join(job.dest, name) for name, _, _ in members]
        meta = {'tar_size': str(signature['size']), 'tar_mtime_ns': str(signature['mtime_ns']),
                'version': FORMAT_VERSION}
        _write_arrow(pa.table({'path': pa.array(paths, pa.string()),
                               'key': pa.array([path_key(p) for p in paths], pa.uint64()),
                               'offset': pa.array([m[1] for m in members], pa.int64()),
                               'size': pa.array([m[2] for m in members], pa.int64())},
                              schema=_SHARD_SCHEMA.with_metadata(meta)),
                     # no sync: a member index lost to a power cut is rebuilt when combining
                     shard_index_path(job.root, job.name), durable=False)
        return TarResult(name=job.name, status='partial' if damage else 'done', members=len(members),
                         bytes=sum(m[2] for m in members), refused=refused, error=damage)

    def listing(self, root: str, jobs: list[TarJob], folders: list[str] = ()) -> set[str]:
        """The members of ``jobs`` (all of them land in ``folders``): loose files beside the tars
        are not listed, since the dataset, reading through the member index, would not find them."""
        index = TarMemberIndex.open(combine(root, jobs))
        earlier = self._open_indexes.pop(os.path.abspath(root), None)
        if earlier is not None:
            earlier.close()
        self._open_indexes[os.path.abspath(root)] = index
        return set(index.paths())

    def read(self, root: str, path: str) -> bytes:
        root = os.path.abspath(root)
        if root not in self._open_indexes:
            self._open_indexes[root] = TarMemberIndex.open(os.path.join(root, INDEX_NAME))
        return self._open_indexes[root].read(path)


INDEX_MEMBERS = IndexMembers()


def combine(root: str, jobs: list[TarJob], index_name: str = INDEX_NAME) -> str:
    """Write ``<root>/<index_name>`` from the tars' own member indexes, unless it is already there
    for exactly these tars as they are now; return its path.

    A path that several members share is read from the last one (in tar order), as extraction
    would leave it. A tar that cannot be read contributes nothing (the runner reports it).
    """
    out = os.path.join(root, index_name)
    indexed, shard_table = [], []
    for job in jobs:
        meta = _current_shard_metadata(job)
        if meta is None:  # lost, damaged or of another format, or the tar changed: index it again
            result = INDEX_MEMBERS.process(job)
            meta = _current_shard_metadata(job)
            if meta is None:
                logger.warning('%s: its members are left out: %s', job.path, result.error)
                continue
        indexed.append(job)
        shard_table.append({'tar': job.name, 'size': int(meta['tar_size']),
                            'mtime_ns': int(meta['tar_mtime_ns'])})
    existing = _metadata(out)
    if existing is not None and existing.get('shards') == json.dumps(shard_table):
        return out

    tables = []
    for shard_id, job in enumerate(indexed):
        table = _read_arrow(shard_index_path(job.root, job.name))
        tables.append(pa.table({'key': table['key'], 'path': table['path'].cast(pa.large_string()),
                                'shard': pa.array(np.full(table.num_rows, shard_id, np.int32)),
                                'offset': table['offset'], 'size': table['size']}))
    combined = pa.concat_tables(tables) if tables else _INDEX_SCHEMA.empty_table()
    combined = combined.sort_by([('key', 'ascending'), ('shard', 'ascending'),
                                 ('offset', 'ascending')]).combine_chunks()
    combined, shadowed = _drop_shadowed(combined)
    if shadowed:
        logger.warning('%d paths are in more than one tar member; the last (in tar order) is used, '
                       'as extraction would leave it: e.g. %s', len(shadowed), ', '.join(shadowed[:5]))
    meta = {'version': FORMAT_VERSION, 'shards': json.dumps(shard_table)}
    _write_arrow(combined.replace_schema_metadata(meta), out)
    return out


def _current_shard_metadata(job: TarJob) -> dict[str, str] | None:
    """The metadata of the tar's member index if it is readable and was built from the tar as it
    is now, else None."""
    meta = _metadata(shard_index_path(job.root, job.name))
    try:
        signature = _tar_signature(job.path)
    except OSError:
        return None
    if meta is None or meta.get('version') != FORMAT_VERSION:
        return None
    return meta if (meta['tar_size'], meta['tar_mtime_ns']) == (str(signature['size']),
                                                                str(signature['mtime_ns'])) else None


def _drop_shadowed(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """Keep only the last member (in tar order) of each path, as extraction would leave it.
    ``table`` is sorted by (key, shard, offset): equal paths lie in runs of equal keys (which,
    rarely, also hold other paths with the same hash)."""
    keys = table['key'].to_numpy()
    same_as_next = np.flatnonzero(keys[1:] == keys[:-1])
    if not len(same_as_next):
        return table, []
    paths = table['path']
    in_runs = np.union1d(same_as_next, same_as_next + 1).tolist()
    last = {}
    for row in in_runs:
        last[paths[row].as_py()] = row  # rows come in tar order: the last one stays
    shadowed = sorted(set(in_runs) - set(last.values()))
    if not shadowed:
        return table, []
    keep = np.ones(table.num_rows, bool)
    keep[shadowed] = False
    return table.filter(pa.array(keep)), sorted({paths[row].as_py() for row in shadowed})


class TarMemberIndex:
    """Random access to the members of a dataset's tar shards, by their would-be extracted path.

    Picklable (only the index path travels); each process opens its own descriptors lazily and
    checks on first use that each tar still has the size and mtime it had when indexed.
    """

    def __init__(self, index_path: str):
        self.index_path = os.path.abspath(index_path)
        self.root = os.path.dirname(self.index_path)
        table = _read_arrow(self.index_path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get('version') != FORMAT_VERSION or table.schema.names != _INDEX_SCHEMA.names:
            raise IndexFormatError(f'{self.index_path}: not a tar member index of format '
                                   f'{FORMAT_VERSION}; build it again with the preparation tool')
        self._shards = json.loads(meta['shards'])
        self._paths = self._column(table, 'path')
        self._keys = self._column(table, 'key').to_numpy()
        self._shard_ids = self._column(table, 'shard').to_numpy()
        self._offsets = self._column(table, 'offset').to_numpy()
        self._sizes = self._column(table, 'size').to_numpy()
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
        return cls(index_path)

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

    def read(self, relpath: str) -> bytes:
        """The bytes of the member that would be extracted to ``<root>/<relpath>``."""
        row = self._row(relpath)
        if row is None:
            raise SampleError('missing-file', f'{os.path.join(self.root, relpath)}: no such member '
                                              f'in the tars indexed by {self.index_path}')
        shard, offset, size = int(self._shard_ids[row]), int(self._offsets[row]), int(self._sizes[row])
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

    def _open_checked(self, shard: int) -> int:
        """Open a tar, refusing one that is not the file that was indexed."""
        tar, expected = self._tar_path(shard), self._shards[shard]
        try:
            fd = os.open(tar, os.O_RDONLY)
        except FileNotFoundError:
            raise StaleIndexError(f'{tar} was indexed in {self.index_path} but is gone; run the '
                                  'preparation tool with --no-extract again') from None
        st = os.fstat(fd)
        changes = [f'{what} {old} -> {new}' for what, old, new in
                   (('size', expected['size'], st.st_size),
                    ('mtime_ns', expected['mtime_ns'], st.st_mtime_ns)) if old != new]
        if changes:
            os.close(fd)
            raise StaleIndexError(f'{tar} changed after it was indexed in {self.index_path} '
                                  f'({", ".join(changes)}); run the preparation tool with '
                                  '--no-extract again to re-index it')
        return fd
