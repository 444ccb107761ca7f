"""The tar member index's writer (``tar_index.py`` reads what it writes): one pass over a tar's
headers (no member data is read) writes that tar's member index (:func:`index_tar`); :func:`combine`
joins them into ``<root>/tar_index.arrow``. The preparation runner's ``--no-extract`` step
(``src.prepare.tar_members``) and the latent shards' index call it.

Members that safe extraction refuses (links, devices, absolute names, names with ``..``) are
refused here too, by the same rule; a damaged tar gives its complete members and is reported.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import tarfile
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from src.datasets.errors import IndexFormatError
from src.datasets.storage.atomic import atomic_write
from src.datasets.storage.tar_index import (FORMAT_VERSION, INDEX_NAME, INDEX_SCHEMA, path_key, read_arrow,
                                    schema_metadata)
from src.datasets.storage.tar_headers import TarJob, TarResult, file_signature, scan_tar

# Its warnings are the preparation's (the tools' logging shows the src.prepare loggers).
logger = logging.getLogger('src.prepare.tar_members')
STEP_NAME = 'tar-index'  # the --no-extract step's name: its markers and member indexes under .prepare/

_SHARD_SCHEMA = pa.schema([('path', pa.string()), ('key', pa.uint64()), ('offset', pa.int64()),
                           ('size', pa.int64())])


def shard_index_path(root: str, tar_name: str) -> str:
    """Where the member index of the tar ``<root>/<tar_name>`` is kept."""
    return os.path.join(root, '.prepare', STEP_NAME, tar_name + '.members.arrow')


def _write_arrow(table: pa.Table, path: str, *, durable: bool = True) -> None:
    with atomic_write(path, 'wb', durable=durable) as f, ipc.new_file(f, table.schema) as writer:
        # One record batch, so that readers get zero-copy numpy views of whole columns.
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def _metadata(path: str) -> dict[str, str] | None:
    """The metadata stored in an index file, or None if it is missing or unreadable."""
    try:
        schema = ipc.open_file(pa.memory_map(path)).schema
    except (OSError, pa.ArrowInvalid):
        return None
    return schema_metadata(schema)


# Columns are made from buffers: pa.array imports pandas on its first call, a cost every worker
# process would pay once per run (bench/RESULTS.md, "Start-up and construction").
def _numeric_array(values: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _string_array(strings: list[str]) -> pa.Array:
    encoded = [s.encode('utf-8') for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(b''.join(encoded))])




def index_tar(job: TarJob) -> TarResult:
    """Write the member index of the tar ``job``; what it found (a ``TarResult``)."""
    try:
        signature = file_signature(job.path)
        members, refused, damage = scan_tar(job.path)
    except (tarfile.TarError, OSError) as e:
        return TarResult(name=job.name, status='failed', error=f'cannot index {job.path}: {e}')
    names, offsets, sizes = zip(*members) if members else ((), (), ())
    prefix = posixpath.join(job.dest, '')  # the names are relative: joining is concatenating
    paths = [prefix + name for name in names]
    sizes = np.array(sizes, np.int64)
    meta = {'tar_size': str(signature['size']), 'tar_mtime_ns': str(signature['mtime_ns']),
            'version': FORMAT_VERSION}
    _write_arrow(pa.Table.from_arrays(
        [_string_array(paths), _numeric_array(np.array([path_key(p) for p in paths], np.uint64)),
         _numeric_array(np.array(offsets, np.int64)), _numeric_array(sizes)],
        schema=_SHARD_SCHEMA.with_metadata(meta)),
        # no sync: a member index lost to a power cut is rebuilt when combining
        shard_index_path(job.root, job.name), durable=False)
    return TarResult(name=job.name, status='partial' if damage else 'done', members=len(members),
                     bytes=int(sizes.sum()), refused=refused, error=damage)


def combine(root: str, jobs: list[TarJob], index_name: str = INDEX_NAME) -> str:
    """Write ``<root>/<index_name>`` from the tars' own member indexes, unless it is already there
    for exactly these tars as they are now; return its path.

    A path that several members share is read from the last one (in tar order), as extraction
    would leave it. A tar that cannot be read contributes nothing (the runner reports it).
    """
    out = os.path.join(root, index_name)
    shards, shard_table = [], []
    for job in jobs:
        shard = _current_shard(job)
        if shard is None:  # lost, damaged or of another format, or the tar changed: index it again
            result = index_tar(job)
            shard = _current_shard(job)
            if shard is None:
                logger.warning('%s: its members are left out: %s', job.path, result.error)
                continue
        shards.append(shard)
        shard_table.append({'tar': job.name, 'size': int(shard.meta['tar_size']),
                            'mtime_ns': int(shard.meta['tar_mtime_ns'])})
    existing = _metadata(out)
    if existing is not None and existing.get('shards') == json.dumps(shard_table):
        return out

    tables = [pa.Table.from_arrays(
        [shard.table['key'], shard.table['path'].cast(pa.large_string()),
         _numeric_array(np.full(shard.table.num_rows, shard_id, np.int32)), shard.table['offset'],
         shard.table['size']], schema=INDEX_SCHEMA) for shard_id, shard in enumerate(shards)]
    combined = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
    combined = combined.sort_by([('key', 'ascending'), ('shard', 'ascending'),
                                 ('offset', 'ascending')]).combine_chunks()
    combined, shadowed = _drop_shadowed(combined)
    if shadowed:
        logger.warning('%d paths are in more than one tar member; the last (in tar order) is used, '
                       'as extraction would leave it: e.g. %s', len(shadowed), ', '.join(shadowed[:5]))
    meta = {'version': FORMAT_VERSION, 'shards': json.dumps(shard_table)}
    _write_arrow(combined.replace_schema_metadata(meta), out)
    return out


class _Shard(NamedTuple):
    table: pa.Table
    meta: dict[str, str]


def _current_shard(job: TarJob) -> _Shard | None:
    """The tar's member index if it is readable and was built from the tar as it is now, else None."""
    try:
        table = read_arrow(shard_index_path(job.root, job.name))
        signature = file_signature(job.path)
    except (IndexFormatError, OSError):
        return None
    meta = schema_metadata(table.schema)
    if meta.get('version') != FORMAT_VERSION:
        return None
    current = (meta.get('tar_size'), meta.get('tar_mtime_ns')) == (str(signature['size']),
                                                                   str(signature['mtime_ns']))
    return _Shard(table, meta) if current else None


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


