"""The sample index: a read-only, columnar table of index records, memory-mapped from a cache.

Upstream datasets ``json.load`` the whole index (at 23M entries, tens of seconds and gigabytes in
every process: bench/RESULTS.md) into a list of dicts. DataLoader workers forked from that process
copy it page by page, because merely reading a Python object writes its reference count. mmengine's
``BaseDataset.serialize_data`` packs the list into one numpy buffer of pickles, which fixes the
copying but still ``json.load``s everything first in every rank and unpickles a dict on every
access.

``SampleIndex`` instead streams the source once, in bounded batches, into an Arrow IPC file (the
cache) and from then on memory-maps that file:

* no ``json.load``: opening a cached index reads the schema and the batch offsets, not the records;
* no per-record Python objects: the records stay in the file's pages, and ``index[i]`` builds the
  one dict asked for from the columns;
* shared pages: the mapping is backed by the file, so DataLoader workers (fork or spawn) and all the
  ranks of a machine read the same page-cache pages instead of holding a private copy each.

The cache is keyed on the source's identity (resolved path; size, mtime, ctime and a digest of the
bytes of each file; the format version below) stored in the file's schema metadata: a stale or corrupt cache is rebuilt,
never used. Where no cache can be written, the index is built in memory with a warning.
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import logging
import operator
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mmengine.logging import print_log

from src.datasets.storage.arrow_numpy import to_numpy
from src.datasets.errors import IndexFormatError
from src.datasets.storage.files import unsafe_path_mask
from src.datasets.storage.sidecars import Unwritable, held, read_json, written_aside

# The cache and the source's readers live in their own modules; their public names (and the
# spill writer the tests reach) stay importable from here.
from src.datasets.index.index_cache import (FORMAT_VERSION, _fingerprint, _open_cache, _SpillWriter,  # noqa: F401
                                            cache_path_for, cached_table)
from src.datasets.index.index_source import (MAX_INDEX_KEYS, _JSON_FLAG, _batched, _build_table,  # noqa: F401
                                       _format_error, _is_flag, _member_files, _source_batches,
                                       iter_json_array, iter_jsonl, json_flag)

# --------------------------------------------------------------------------------- the index

class SampleIndex:
    """A read-only table of index records; ``index[i]`` is record ``i`` as a dict of its
    non-null fields. Build it with ``SampleIndex.load``."""

    def __init__(self, table: pa.Table, source: str, *, cache: Path | None = None,
                 fingerprint: bytes | None = None, rows: np.ndarray | None = None):
        self._table = table
        self.source = source
        self._cache = cache
        self._fingerprint = fingerprint
        self._rows = rows
        self._names = table.column_names
        # (column, its flag) of the columns of mixed types: see ``_column``.
        self._json_columns = [(name[len(_JSON_FLAG):], name) for name in self._names if _is_flag(name)]
        # The columns of each batch, so that one record costs a bisect and a scalar per column.
        batches = [batch for batch in table.to_batches() if len(batch)]
        self._batch_columns = [batch.columns for batch in batches]
        self._batch_starts = np.cumsum([0] + [len(b) for b in batches[:-1]]).tolist()

    @classmethod
    def load(cls, data_path, *, cache_dir=None, use_cache: bool = True) -> 'SampleIndex':
        """Opens the index at ``data_path`` (a ``.json`` array, a ``.jsonl`` file, a folder of
        ``.json`` arrays or a ``.parquet`` table), from its cache when that is up to date."""
        source = os.fspath(data_path)
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, 'sample index not found', source)
        resolved = Path(source).resolve()
        members = _member_files(resolved)
        if not members:
            raise _format_error(source, 'the folder holds no .json files')
        if use_cache:
            fingerprint = _fingerprint(resolved, members)
            cache = cache_path_for(source, cache_dir)
            try:
                table = cached_table(source, members, cache, fingerprint)
                return cls(table, source, cache=cache, fingerprint=fingerprint)
            except Unwritable as exc:
                print_log(f'Cannot write the sample index cache {cache} ({exc}): building the '
                          f'index of {source} in memory, in every process that loads it; give '
                          f'a writable cache_dir (index_cache_dir= of the dataset) to share it',
                          logger='current', level=logging.WARNING)
        return cls(_build_table(source, _source_batches(members)), source)

    @classmethod
    def from_records(cls, records: Iterable[dict], source: str) -> 'SampleIndex':
        """An index held in memory, of ``records`` (dicts, as a JSON index holds them)."""
        return cls(_build_table(source, _batched(records, source)), source)

    def __len__(self) -> int:
        return self._table.num_rows if self._rows is None else len(self._rows)

    @property
    def cache(self) -> Path | None:
        """The memory-mapped cache file, or None for an index held in memory."""
        return self._cache

    @property
    def fingerprint(self) -> bytes | None:
        """What the cache was built from (the source's files, sizes and times), or None."""
        return self._fingerprint

    def table_row(self, i) -> int:
        """The row of the whole index that record ``i`` of this (possibly selected) view is."""
        i = operator.index(i)
        return i if self._rows is None else int(self._rows[i])

    def table_rows(self) -> np.ndarray:
        """``table_row`` of every record of this view, as an int64 array."""
        return np.arange(len(self), dtype=np.int64) if self._rows is None else np.asarray(self._rows, np.int64)

    def content_digest(self, name: str) -> str:
        """A digest of field ``name``'s values in this view's records, in their order: what tells a
        resumed run that the index it meets holds other records, or the same ones reordered. The
        whole table's part is computed once per cache (kept in a file beside it)."""
        digest = hashlib.blake2b(self._column_digest(name).encode(), digest_size=16)
        if self._rows is not None:
            digest.update(np.ascontiguousarray(self._rows, dtype='<i8').tobytes())
        return digest.hexdigest()

    def _column_digest(self, name: str) -> str:
        return self._memo(f'digest/{name}', lambda: _digest_column(self._table, name),
                          lambda value: isinstance(value, str) and re.fullmatch('[0-9a-f]{32}', value))

    def _memo(self, key: str, compute, valid):
        """``compute()`` (a JSON value about the whole table), computed once per cache: kept in a
        file beside it (``storage.sidecars``), keyed on the cache's fingerprint. A kept value that
        is not ``valid`` (a damaged file) is computed again."""
        if self._cache is None:
            return compute()
        sidecar = self._cache.with_name(f'{self._cache.name}.digests.json')
        values = self._memo_values(sidecar)
        if key in values and valid(values[key]):
            return values[key]
        with held(sidecar, required=False):  # not held (a read-only cache folder): computed again next time
            values = self._memo_values(sidecar)  # another process may have computed it meanwhile
            if key not in values or not valid(values[key]):
                values = {**values, key: compute()}
                known = {'fingerprint': self._fingerprint.decode(), 'values': values, 'check': _memo_check(values)}
                with contextlib.suppress(OSError), written_aside(sidecar) as temp:
                    temp.write_text(json.dumps(known))
        return values[key]

    def _memo_values(self, sidecar: Path) -> dict:
        """The values kept in ``sidecar`` for this cache; none when it is another index's, or damaged."""
        known = read_json(sidecar)
        if not isinstance(known, dict) or known.get('fingerprint') != self._fingerprint.decode() or \
                not isinstance(known.get('values'), dict) or known.get('check') != _memo_check(known['values']):
            return {}
        return known['values']

    def unsafe_paths(self, name: str) -> np.ndarray:
        """Per record: whether field ``name`` holds a path that is absolute or climbs out of its
        folder (``files.unsafe_path``); computed once per cache."""
        kind = self.column_type(name)
        if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return np.zeros(len(self), dtype=bool)
        rows = self._memo(f'unsafe/{name}', lambda: np.flatnonzero(
            unsafe_path_mask(self._table.column(name)) & ~self._whole_not_text(name)).tolist(),
            lambda value: isinstance(value, list) and all(
                isinstance(row, int) and 0 <= row < self._table.num_rows for row in value))
        mask = np.zeros(self._table.num_rows, dtype=bool)
        mask[rows] = True
        return self._view(mask)

    def whole(self) -> 'SampleIndex':
        """All the records, whatever this view selects."""
        if self._rows is None:
            return self
        return SampleIndex(self._table, self.source, cache=self._cache, fingerprint=self._fingerprint)

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f'record {i} is out of range for the {len(self)} records of '
                             f'{self.source}')
        row = self.table_row(i)
        batch = bisect.bisect_right(self._batch_starts, row) - 1
        offset = row - self._batch_starts[batch]
        record = {}
        for name, column in zip(self._names, self._batch_columns[batch]):
            value = column[offset].as_py()
            if value is not None:
                record[name] = value
        for name, flag in self._json_columns:
            if record.pop(flag, False):
                record[name] = json.loads(record[name])  # the list, number, NaN, ... it was
        return record

    @property
    def columns(self) -> list[str]:
        return [name for name in self._names if not _is_flag(name)]

    def column_type(self, name: str) -> pa.DataType | None:
        """The Arrow type of field ``name`` (text for a field of mixed types), or None when absent."""
        return self._table.schema.field(name).type if name in self._names else None

    def _view(self, values: np.ndarray) -> np.ndarray:
        return values if self._rows is None else values[self._rows]

    def view_of(self, values: np.ndarray) -> np.ndarray:
        """Per-row ``values`` of the whole index, as this view's records see them."""
        return self._view(values)

    def whole_column(self, name: str) -> pa.ChunkedArray | None:
        """Field ``name`` over the whole index (memory-mapped, typed), or None when absent."""
        return self._table.column(name) if name in self.columns else None

    def has_value(self, name: str) -> np.ndarray:
        """Per record: whether field ``name`` is present and not null."""
        if name not in self._names:
            return np.zeros(len(self), dtype=bool)
        valid = to_numpy(pc.is_valid(self._table.column(name)))
        return self._view(valid)

    def not_text(self, name: str) -> np.ndarray:
        """Per record: whether field ``name`` holds a value that is not text (a list, a number, ...)
        in a column whose other values are text."""
        return self._view(self._whole_not_text(name))

    def _whole_not_text(self, name: str) -> np.ndarray:
        flag = json_flag(name)
        if flag not in self._names:
            return np.zeros(self._table.num_rows, dtype=bool)
        return to_numpy(self._table.column(flag), fill=False)

    def numbers(self, name: str) -> np.ndarray:
        """Per record: field ``name`` as float64, NaN where it is missing or not a number
        (text is parsed, since a column of mixed types is stored as text)."""
        if name not in self._names:
            return np.full(len(self), np.nan)
        column = self._table.column(name)
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values = to_numpy(column.cast(pa.float64()), fill=np.nan)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values = parse_numbers(column)
        else:
            values = np.full(self._table.num_rows, np.nan)
        return self._view(values)

    def select_stored(self, rows: np.ndarray) -> 'SampleIndex':
        """A view of the whole index's ``rows`` as ``src.datasets.index.selection`` stores them (sorted
        int64, memory-mapped): used in place, neither copied nor scanned."""
        if self._rows is not None or rows.dtype != np.int64:
            raise ValueError('select_stored takes sorted int64 rows of a whole index')
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(self)):
            raise IndexError(f'stored row numbers outside 0..{len(self) - 1} for {self.source}')
        return SampleIndex(self._table, self.source, cache=self._cache, fingerprint=self._fingerprint, rows=rows)

    def select(self, rows) -> 'SampleIndex':
        """A view of the given records (row numbers of this index, or a boolean mask)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if len(rows) != len(self):
                raise ValueError(f'a mask of {len(rows)} values for {len(self)} records')
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, casting='safe')
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f'row numbers outside 0..{len(self) - 1} for {self.source}')
        if self._rows is not None:
            rows = self._rows[rows]
        return SampleIndex(self._table, self.source, cache=self._cache,
                           fingerprint=self._fingerprint, rows=rows)

    def __reduce__(self):
        # A cached index pickles as its file name and re-opens the memory map where it is
        # unpickled (DataLoader workers started with spawn); only an in-memory one carries data.
        if self._cache is not None:
            rows = self._rows
            if isinstance(rows, np.memmap) and rows.filename:  # stored rows (selection): mapped again
                rows = _StoredRows(rows.filename)
            return _reopen, (self.source, self._cache, self._fingerprint, rows)
        return SampleIndex, (self._table, self.source), {'_rows': self._rows}

    def __setstate__(self, state):
        self._rows = state['_rows']

    def __repr__(self) -> str:
        where = f'memory-mapped from {self._cache}' if self._cache else 'in memory'
        return f'SampleIndex({self.source!r}: {len(self)} records, {where})'


def _memo_check(values: dict) -> str:
    """A checksum of the values kept beside a cache: one altered there is computed again, not used."""
    return hashlib.blake2b(json.dumps(values, sort_keys=True).encode(), digest_size=16).hexdigest()


def _digest_column(table: pa.Table, name: str) -> str:
    """A digest of a column's values, the same however the table is cut into batches: each value's
    length and bytes for text, the values' bytes for numbers, and which are null."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([name, str(table.schema.field(name).type) if name in table.column_names else None]).encode())
    if name not in table.column_names:
        return digest.hexdigest()
    for chunk in table.column(name).chunks:
        if not len(chunk):
            continue
        digest.update(np.packbits(to_numpy(pc.is_valid(chunk))).tobytes())
        kind = chunk.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            width = np.int32 if pa.types.is_string(kind) else np.int64
            offsets = np.frombuffer(chunk.buffers()[1], width, count=len(chunk) + 1, offset=chunk.offset * width().itemsize)
            digest.update(np.diff(offsets).astype('<i8').tobytes())
            if offsets[-1] > offsets[0]:
                digest.update(memoryview(chunk.buffers()[2])[int(offsets[0]):int(offsets[-1])])
        else:
            digest.update(json.dumps(chunk.to_pylist(), default=str).encode())  # numbers, lists: rare as keys
    return digest.hexdigest()


class _StoredRows(str):
    """The path of a stored ``rows.npy`` (``src.datasets.index.selection``), pickled in place of its rows."""


def _reopen(source: str, cache: Path, fingerprint: bytes, rows) -> SampleIndex:
    if isinstance(rows, _StoredRows):
        rows = np.load(rows, mmap_mode='r')
    table = _open_cache(cache, fingerprint)
    if table is None:
        raise IndexFormatError(f'{source}: its index cache {cache} changed or vanished after the '
                               f'index was pickled; load the index again')
    return SampleIndex(table, source, cache=cache, fingerprint=fingerprint, rows=rows)


def parse_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """Text as float64 (correctly rounded), NaN where it is no number. Arrow parses a column of
    numbers at once; one with other text in it (rare: mixed types are stored as text) value by value."""
    try:
        return to_numpy(column.cast(pa.float64()), fill=np.nan)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([_number(value) for value in column.to_pylist()], dtype=np.float64)


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float('nan')


class RecordList(Sequence):
    """A read-only, list-like view of a :class:`SampleIndex`: what code written against upstream's
    ``self.data_list`` (a list of dicts) reads, without the copy of every record. A slice is a view too."""

    def __init__(self, index: SampleIndex):
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RecordList(self._index.select(np.arange(len(self._index))[i]))
        i = operator.index(i)
        return self._index[i + len(self._index) if i < 0 else i]

    def __repr__(self) -> str:
        return f'RecordList({len(self)} records of {self._index.source})'

