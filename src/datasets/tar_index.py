"""Read dataset files straight out of their tar shards, without extracting them.

A member index maps each regular-file member of the shards to the path it would have after the
dataset's extraction (relative to the dataset root), with its shard, data offset and size. It is
built from one pass over each tar's headers (no member data is read), one index file per shard so
that an interrupted or repeated build redoes only the shards that are new or changed, and then
combined into one Arrow file at the root (``tar_index.arrow``) that DataLoader workers memory-map
and share, like the sample index.

Lookup goes through a 64-bit hash of the path: the combined table is sorted by it, so finding a
member is a ``numpy.searchsorted`` over a memory-mapped column instead of a per-worker dict of
millions of strings. Reading a member is one ``os.pread`` on a descriptor that each process opens
for itself.

Members that would be unsafe to extract (links, devices, absolute names, names with ``..``) are
refused and reported, as safe extraction refuses them; so is the rest of a truncated tar.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import posixpath
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from tqdm import tqdm

from src.datasets.errors import IndexFormatError, SampleError

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
_NOT_REGULAR = {tarfile.SYMTYPE: 'a symbolic link', tarfile.LNKTYPE: 'a hard link',
                tarfile.CHRTYPE: 'a character device', tarfile.BLKTYPE: 'a block device',
                tarfile.FIFOTYPE: 'a fifo', tarfile.GNUTYPE_SPARSE: 'a sparse file'}


class StaleIndexError(RuntimeError):
    """A tar changed (or vanished) after it was indexed: its offsets can no longer be trusted."""


@dataclass(frozen=True)
class Shard:
    """A tar, and the folder (relative to the dataset root) its members would be extracted into."""
    tar: str
    prefix: str = ''


@dataclass
class ShardReport:
    """What indexing one tar found. ``refused`` holds (member, why); ``truncated`` says where the
    readable part of a damaged tar ends, or is None for an intact one."""
    tar: str
    members: int = 0
    up_to_date: bool = False
    refused: list[tuple[str, str]] = field(default_factory=list)
    truncated: str | None = None


@dataclass
class BuildReport:
    index_path: str
    shards: list[ShardReport]
    members: int = 0
    duplicates: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines a person can act on: what was indexed, skipped, refused and lost."""
        up_to_date = sum(s.up_to_date for s in self.shards)
        refused = [(s.tar, m, why) for s in self.shards for m, why in s.refused]
        truncated = [s for s in self.shards if s.truncated]
        lines = [f'tar index {self.index_path}: {self.members} members from {len(self.shards)} '
                 f'tars ({len(self.shards) - up_to_date} indexed now, {up_to_date} up to date)']
        if refused:
            lines.append(f'  {len(refused)} members refused (not extracted, not indexed):')
            lines += [f'    {tar}: {member!r}: {why}' for tar, member, why in refused[:10]]
        if truncated:
            lines.append(f'  {len(truncated)} tars are damaged; only their complete members are '
                         'indexed:')
            lines += [f'    {s.tar}: {s.truncated}' for s in truncated[:10]]
        if self.duplicates:
            lines.append(f'  {len(self.duplicates)} paths occur in more than one member; the last '
                         f'(in tar order) is used, as extraction would leave it: '
                         f'{", ".join(self.duplicates[:5])}')
        return '\n'.join(lines)


def path_key(relpath: str) -> int:
    """A stable 64-bit hash of a member path (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(relpath.encode('utf-8'), digest_size=8).digest(), 'little')


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why ``info`` must not be extracted (and so is not indexed), or None if it is safe."""
    if info.type in _NOT_REGULAR or not info.isreg():
        return f'is {_NOT_REGULAR.get(info.type, f"of tar type {info.type!r}")}, not a regular file'
    if info.name.startswith('/'):
        return 'has an absolute path'
    if '..' in info.name.split('/'):
        return 'has ".." in its path (it would land outside the extraction folder)'
    if posixpath.normpath(info.name) in ('', '.'):
        return 'has an empty name'
    try:
        info.name.encode('utf-8')
    except UnicodeEncodeError:
        return 'has a name that is not valid UTF-8'
    return None


def scan_tar(tar_path: str) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]], str | None]:
    """One pass over a tar's headers: (name, data offset, size) of each safe regular file,
    the refused members as (name, why), and where a damaged tar stops being readable (or None)."""
    members, refused = [], []
    file_size = os.path.getsize(tar_path)
    try:
        tar = tarfile.open(tar_path, 'r:')
    except tarfile.ReadError as e:
        return [], [], f'no readable tar header at the start ({e})'
    damage = None
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.ReadError as e:  # raised when the previous member's data is cut short
                damage = str(e)
                break
            if info is None:
                break
            if info.isdir():
                continue
            problem = member_problem(info)
            if problem:
                refused.append((info.name, problem))
            else:
                members.append((posixpath.normpath(info.name), info.offset_data, info.size))
        end = tar.offset
    # A member whose data runs past the end of the file is the one cut short.
    while members and members[-1][1] + members[-1][2] > file_size:
        name, offset, size = members.pop()
        damage = (f'member {name!r} needs {size} bytes at byte {offset} but the file ends at '
                  f'byte {file_size}')
    if damage is None:
        # tarfile stops quietly at a cut or garbled header; an intact tar has a zero block there.
        with open(tar_path, 'rb') as f:
            f.seek(end)
            block = f.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
            last = f'after member {members[-1][0]!r}' if members else 'before any member'
            damage = (f'no valid header or end-of-archive marker at byte {end} ({last}); '
                      'the file is cut short or damaged there')
    return members, refused, damage


def _shard_index_path(root: str, tar_rel: str) -> str:
    return os.path.join(root, 'tar_index.shards', tar_rel + '.arrow')


def _atomic_write_arrow(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with ipc.new_file(tmp, table.schema) as writer:
        # One record batch, so that readers get zero-copy numpy views of whole columns.
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    os.replace(tmp, path)


def _read_arrow(path: str) -> pa.Table:
    try:
        return ipc.open_file(pa.memory_map(path)).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise IndexFormatError(f'{path}: not a readable tar member index ({e})') from e


def _shard_metadata(path: str) -> dict[str, str] | None:
    """The stored metadata of a shard index, or None if it is missing or unreadable (redo it)."""
    try:
        schema = ipc.open_file(pa.memory_map(path)).schema
    except (OSError, pa.ArrowInvalid):
        return None
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def _tar_signature(tar_path: str) -> dict[str, str]:
    st = os.stat(tar_path)
    return {'tar_size': str(st.st_size), 'tar_mtime_ns': str(st.st_mtime_ns)}


def _report_from_metadata(tar_rel: str, meta: dict[str, str], up_to_date: bool) -> ShardReport:
    return ShardReport(tar=tar_rel, members=int(meta['members']), up_to_date=up_to_date,
                       refused=[tuple(r) for r in json.loads(meta['refused'])],
                       truncated=meta['truncated'] or None)


def index_shard(root: str, shard: Shard) -> ShardReport:
    """Index one tar into its own file under ``<root>/tar_index.shards/``, unless that file is
    already there for the tar's current size, mtime and prefix."""
    tar_rel = os.path.relpath(shard.tar, root)
    out = _shard_index_path(root, tar_rel)
    signature = {**_tar_signature(shard.tar), 'prefix': shard.prefix, 'version': FORMAT_VERSION}
    meta = _shard_metadata(out)
    if meta is not None and all(meta.get(k) == v for k, v in signature.items()):
        return _report_from_metadata(tar_rel, meta, up_to_date=True)
    members, refused, truncated = scan_tar(shard.tar)
    paths = [posixpath.join(shard.prefix, name) for name, _, _ in members]
    meta = {**signature, 'members': str(len(members)), 'refused': json.dumps(refused),
            'truncated': truncated or ''}
    table = pa.table({'path': pa.array(paths, pa.string()),
                      'key': pa.array([path_key(p) for p in paths], pa.uint64()),
                      'offset': pa.array([m[1] for m in members], pa.int64()),
                      'size': pa.array([m[2] for m in members], pa.int64())},
                     schema=_SHARD_SCHEMA.with_metadata(meta))
    _atomic_write_arrow(table, out)
    return _report_from_metadata(tar_rel, meta, up_to_date=False)


def _index_shard_job(args: tuple[str, Shard]) -> ShardReport:
    return index_shard(*args)


def index_shards(root: str, shards: list[Shard], *, num_processes: int = 1) -> list[ShardReport]:
    """Index each shard (skipping those already indexed and unchanged), in parallel; reports come
    back in the order of ``shards``. Damaged tars and refused members are logged here."""
    root = os.path.abspath(root)
    for shard in shards:
        if os.path.commonpath([root, os.path.abspath(shard.tar)]) != root:
            raise ValueError(f'{shard.tar} is not under the dataset root {root}')
    jobs = [(root, Shard(os.path.abspath(s.tar), s.prefix)) for s in shards]
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.get_context('spawn').Pool(min(num_processes, len(jobs))) as pool:
            reports = list(tqdm(pool.imap(_index_shard_job, jobs), total=len(jobs),
                                desc='indexing tars', unit='tar'))
    else:
        reports = [_index_shard_job(job) for job in tqdm(jobs, desc='indexing tars', unit='tar')]
    for report in reports:
        for member, why in report.refused:
            logger.warning('%s: member %r refused: it %s', report.tar, member, why)
        if report.truncated:
            logger.warning('%s is damaged: %s; indexed its %d complete members',
                           report.tar, report.truncated, report.members)
    return reports


def combine_shard_indexes(root: str, shards: list[Shard], *, index_name: str = INDEX_NAME
                          ) -> tuple[str, int, list[str]]:
    """Write ``<root>/<index_name>`` from the shards' own index files (which must be up to date).
    Returns (index path, member count, paths found in more than one member)."""
    root = os.path.abspath(root)
    tables, shard_table = [], []
    for shard_id, shard in enumerate(shards):
        tar_rel = os.path.relpath(os.path.abspath(shard.tar), root)
        table = _read_arrow(_shard_index_path(root, tar_rel))
        meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        if {k: meta[k] for k in ('tar_size', 'tar_mtime_ns')} != _tar_signature(shard.tar):
            raise StaleIndexError(f'{shard.tar} changed after it was indexed; index it again')
        shard_table.append({'tar': tar_rel, 'size': int(meta['tar_size']),
                            'mtime_ns': int(meta['tar_mtime_ns'])})
        tables.append(pa.table({'key': table['key'], 'path': table['path'].cast(pa.large_string()),
                                'shard': pa.array(np.full(table.num_rows, shard_id, np.int32)),
                                'offset': table['offset'], 'size': table['size']}))
    combined = pa.concat_tables(tables) if tables else _INDEX_SCHEMA.empty_table()
    combined = combined.sort_by([('key', 'ascending'), ('shard', 'ascending'),
                                 ('offset', 'ascending')]).combine_chunks()
    combined, duplicates = _drop_shadowed(combined)
    out = os.path.join(root, index_name)
    meta = {'version': FORMAT_VERSION, 'shards': json.dumps(shard_table)}
    _atomic_write_arrow(combined.replace_schema_metadata(meta), out)
    return out, combined.num_rows, duplicates


def _drop_shadowed(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """Keep only the last member (in tar order) of each path, as extraction would leave it.
    ``table`` is sorted by (key, shard, offset), so equal paths are neighbours with equal keys."""
    keys = table['key'].to_numpy()
    same_key = np.flatnonzero(keys[1:] == keys[:-1])
    if not len(same_key):
        return table, []
    paths = table['path']
    shadowed = [i for i in same_key if paths[int(i)] == paths[int(i) + 1]]
    if not shadowed:
        return table, []
    keep = np.ones(table.num_rows, bool)
    keep[shadowed] = False
    duplicates = sorted({paths[int(i)].as_py() for i in shadowed})
    return table.filter(pa.array(keep)), duplicates


def build_tar_index(root: str, shards: list[Shard], *, num_processes: int = 1,
                    index_name: str = INDEX_NAME) -> BuildReport:
    """Index every shard (resumable, parallel) and combine them into ``<root>/<index_name>``."""
    reports = index_shards(root, shards, num_processes=num_processes)
    index_path, members, duplicates = combine_shard_indexes(root, shards, index_name=index_name)
    return BuildReport(index_path=index_path, shards=reports, members=members,
                       duplicates=duplicates)


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
        self._paths = table['path'].combine_chunks()
        self._keys = self._column(table, 'key')
        self._shard_ids = self._column(table, 'shard')
        self._offsets = self._column(table, 'offset')
        self._sizes = self._column(table, 'size')
        self._pid = os.getpid()
        self._fds: OrderedDict[int, int] = OrderedDict()

    @staticmethod
    def _column(table: pa.Table, name: str) -> np.ndarray:
        column = table[name]
        if column.num_chunks == 0:
            return np.empty(0, column.type.to_pandas_dtype())
        return column.combine_chunks().to_numpy()

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
