"""The sample index: a read-only, columnar table of index records, memory-mapped from a cache.

Upstream datasets ``json.load`` the whole index (23M entries: ~40 s and ~13 GB per process) into a
list of dicts. DataLoader workers forked from that process copy it page by page, because merely
reading a Python object writes its reference count. mmengine's ``BaseDataset.serialize_data``
packs the list into one numpy buffer of pickles, which fixes the copying but still ``json.load``s
everything first in every rank and unpickles a dict on every access.

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
import glob
import hashlib
import json
import logging
import operator
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mmengine.logging import print_log

from src.datasets.arrow_numpy import to_numpy
from src.datasets.errors import IndexFormatError, write_error
from src.datasets.files import unsafe_path_mask
from src.datasets.locks import building

# Bump when the cache layout or the conversion of records changes: old caches are then rebuilt.
FORMAT_VERSION = 2
_FINGERPRINT_KEY = b'sampleindex.fingerprint'
_BATCH_ROWS = 65536            # records per Arrow batch (bounds the memory of a build)
_JSON_CHUNK_CHARS = 1 << 20    # text read at a time by the streaming .json array reader
_WHITESPACE = re.compile(r'[ \t\n\r]*')
# Distinct keys (columns) an index may bring, all its files together. An index holds the same few
# fields in every record (a few dozen at most); every key is a column over all the records, so
# records that each bring keys of their own grow the cache, and the memory of its build, as
# records x keys.
MAX_INDEX_KEYS = 256
# A failure this close to the end of the text read so far may be a record cut by the chunk edge
# (the longest such tail is a literal like 'false' or a '\\uXXXX' escape).
_MAX_CUT_TOKEN = 8


def _format_error(path, message: str) -> IndexFormatError:
    return IndexFormatError(f'{path}: {message}')


# ----------------------------------------------------------------------------- reading the source

def _member_files(path: Path) -> list[Path]:
    """The files that make up the index at ``path`` (a folder: its ``.json`` arrays, sorted).
    Only regular files: a FIFO would hang the reader, a device read without end."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() == '.json' and p.is_file())
    if path.suffix.lower() not in ('.json', '.jsonl', '.parquet'):
        raise _format_error(path, 'unsupported index format (expected a .json array, a .jsonl '
                                  'file, a folder of .json arrays or a .parquet table)')
    if not path.is_file():
        raise _format_error(path, 'not a regular file')
    return [path]


def iter_json_array(path, *, chunk_chars: int | None = None) -> Iterator[dict]:
    """Yields the objects of the JSON array in ``path``, holding only about one chunk of text.

    The records up to the last ``}`` of the text read so far are decoded in one call, as the array
    ``[<that text>]``: that succeeds only if the text ends between two records (cut inside a
    string or a record, the brackets do not match), and then means exactly what it would in the
    file. Otherwise, and for precise error positions, records are decoded one at a time with
    ``json.JSONDecoder.raw_decode``; a record cut by the end of the text is retried with more.
    """
    chunk_chars = chunk_chars or _JSON_CHUNK_CHARS
    decoder = json.JSONDecoder()
    with open(path, encoding='utf-8-sig') as file:
        buf, pos, eof = '', 0, False
        may_decode_run = True  # tried at most once per text read, so a failure costs little
        consumed_chars = consumed_lines = 0  # text already dropped from the front of ``buf``

        def read_more() -> None:
            nonlocal buf, pos, eof, consumed_chars, consumed_lines, may_decode_run
            consumed_lines += buf.count('\n', 0, pos)
            consumed_chars += pos
            try:
                text = file.read(chunk_chars)
            except UnicodeDecodeError as exc:
                raise _format_error(path, f'not UTF-8 text after character {consumed_chars}: '
                                          f'{exc}') from None
            buf, pos, eof = buf[pos:] + text, 0, not text
            may_decode_run = True

        def fail(at: int, message: str) -> IndexFormatError:
            line = consumed_lines + buf.count('\n', 0, at) + 1
            return _format_error(path, f'line {line}, character {consumed_chars + at}: {message}')

        def decode_run() -> tuple[list, int] | None:
            """The records from ``pos`` to the last '}' read, and where they end; or None."""
            end = buf.rfind('}', pos) + 1
            if end == 0:
                return None
            try:
                run = decoder.decode(f'[{buf[pos:end]}]')
            except json.JSONDecodeError:
                return None
            return (run, end) if all(isinstance(record, dict) for record in run) else None

        def decode_one() -> tuple[list, int]:
            """The record at ``pos`` alone (reading on while it may be cut), and where it ends."""
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    maybe_cut = (exc.pos >= len(buf) - _MAX_CUT_TOKEN
                                 or exc.msg.startswith('Unterminated string'))
                    if eof or not maybe_cut:
                        raise fail(exc.pos, f'malformed JSON in record {count}: '
                                            f'{exc.msg}') from None
                    read_more()
            if not isinstance(record, dict):
                raise fail(pos, f'record {count} is a {type(record).__name__}, not a JSON object')
            return [record], end

        def next_char() -> str:
            """The next non-blank character ('' at the end of the file), left at ``buf[pos]``."""
            nonlocal pos
            while True:
                pos = _WHITESPACE.match(buf, pos).end()
                if pos < len(buf) or eof:
                    return buf[pos:pos + 1]
                read_more()

        char = next_char()
        if char != '[':
            raise fail(pos, 'the file is empty' if not char else
                       'the top-level value is not a JSON array of records')
        pos += 1
        count = 0
        if next_char() == ']':
            pos += 1
        else:
            while True:
                next_char()
                run = decode_run() if may_decode_run else None
                if run is None:
                    may_decode_run = False
                    run = decode_one()
                records, end = run
                yield from records
                count += len(records)
                pos = end
                char = next_char()
                if char == ']':
                    pos += 1
                    break
                if char != ',':
                    raise fail(pos, f"expected ',' or ']' after record {count - 1}, found "
                                    f"{char!r}" if char else 'unexpected end of file')
                pos += 1
        if next_char():
            raise fail(pos, 'unexpected data after the JSON array')


def iter_jsonl(path) -> Iterator[dict]:
    """Yields the objects of a JSON-lines file, one per non-blank line."""
    with open(path, encoding='utf-8-sig') as file:
        line_no = 0
        try:
            for line_no, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _format_error(path, f'line {line_no}, column {exc.colno}: malformed '
                                              f'JSON: {exc.msg}') from None
                if not isinstance(record, dict):
                    raise _format_error(path, f'line {line_no}: the record is a '
                                              f'{type(record).__name__}, not a JSON object')
                yield record
        except UnicodeDecodeError as exc:
            raise _format_error(path, f'not UTF-8 text after line {line_no}: {exc}') from None


def _as_text(value):
    return value if value is None or isinstance(value, str) else json.dumps(value,
                                                                            ensure_ascii=False)


# A column whose values are of several types (a caption that is text in one record and a list,
# a number or NaN in another) is stored as text, the values that were not text as their JSON; a
# hidden boolean column beside it says which, so that a record gives back the value it held and
# a caption that is a list or a number is never taken for text.
_JSON_FLAG = '__t2i_json__/'


def json_flag(name: str) -> str:
    return _JSON_FLAG + name


def _is_flag(name: str) -> bool:
    return name.startswith(_JSON_FLAG)


def _column(values: list) -> tuple[pa.Array, pa.Array | None]:
    """The values as one Arrow array, and None; or, for values of mixed types (1 in one record, '1'
    in another) or ints beyond int64, as text with the flags of the values that were not text."""
    try:
        return pa.array(values), None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return (pa.array([_as_text(value) for value in values], pa.string()),
                pa.array([value is not None and not isinstance(value, str) for value in values]))


def _records_to_batch(records: list[dict]) -> pa.RecordBatch:
    """One batch of the union of the records' keys; a key a record lacks is null there."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    arrays, names = [], []
    for key in keys:
        column, flags = _column([r.get(key) for r in records])
        arrays.append(column)
        names.append(key)
        if flags is not None:
            arrays.append(flags)
            names.append(json_flag(key))
    return pa.RecordBatch.from_arrays(arrays, names=names)


class _KeyCount:
    """The distinct keys the records of one index bring, refused past ``MAX_INDEX_KEYS``."""

    def __init__(self):
        self.seen: set[str] = set()

    def add(self, keys: Iterable[str], where, what: str) -> None:
        """Count ``keys`` (those of ``what``, e.g. 'record 12', in the file ``where``)."""
        if self.seen.issuperset(keys):
            return
        new = [key for key in keys if key not in self.seen]
        if len(self.seen) + len(new) > MAX_INDEX_KEYS:
            raise _format_error(where, f'{what} brings the key {new[0]!r:.80}, past {MAX_INDEX_KEYS} distinct '
                                       'keys in the index: its records do not share their fields (each bringing '
                                       'keys of its own grows the index as records x keys); not indexed')
        self.seen.update(new)


def _batched(records: Iterable[dict], where='the records', keys: _KeyCount | None = None
             ) -> Iterator[pa.RecordBatch]:
    keys = keys or _KeyCount()
    batch = []
    for number, record in enumerate(records):
        keys.add(record, where, f'record {number}')
        batch.append(record)
        if len(batch) == _BATCH_ROWS:
            yield _records_to_batch(batch)
            batch = []
    if batch:
        yield _records_to_batch(batch)


def _parquet_batches(path: Path, keys: _KeyCount) -> Iterator[pa.RecordBatch]:
    try:
        table = pq.ParquetFile(path)
        keys.add(table.schema_arrow.names, path, 'its table')
        yield from table.iter_batches(batch_size=_BATCH_ROWS)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _format_error(path, f'unreadable parquet table: {exc}') from None


def _source_batches(members: list[Path]) -> Iterator[pa.RecordBatch]:
    """The records of every member file, as batches whose schemas may differ from one another."""
    keys = _KeyCount()
    for member in members:
        suffix = member.suffix.lower()
        if suffix == '.parquet':
            yield from _parquet_batches(member, keys)
            continue
        # Not pyarrow.json for .jsonl: its reader fixes the schema from the first block (a key
        # first seen later or a type that changes is an error) and names no line on errors.
        try:
            yield from _batched(iter_jsonl(member) if suffix == '.jsonl' else iter_json_array(member), member, keys)
        except RecursionError:
            raise _format_error(member, 'a record is nested deeper than the JSON parser can follow '
                                        '(thousands of levels): not an index of samples') from None
        except UnicodeEncodeError:  # JSON allows a lone surrogate escape; no UTF-8 text holds one
            raise _format_error(member, 'a record holds text with a lone surrogate escape (such as '
                                        '"\\ud800"): not Unicode text') from None


# ------------------------------------------------------------------- one schema for all batches

def _unified_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """Every field seen, in order of appearance; a field whose types differ between batches is
    float64 if they are all numbers, else text with the flags of its JSON values (see ``_column``)."""
    types: dict[str, set] = {}
    for schema in schemas:
        for field in schema:
            types.setdefault(field.name, set()).add(field.type)
    fields, flags = [], []
    for name, seen in types.items():
        if _is_flag(name):
            continue
        seen.discard(pa.null())
        if len(seen) <= 1:
            fields.append(pa.field(name, seen.pop() if seen else pa.null()))
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in seen):
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.string()))
            flags.append(json_flag(name))
        if json_flag(name) in types and json_flag(name) not in flags:
            flags.append(json_flag(name))
    return pa.schema(fields + [pa.field(flag, pa.bool_()) for flag in flags])


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = {}
    for field in schema:
        if _is_flag(field.name):
            continue
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns[field.name] = pa.nulls(len(batch), field.type)
            continue
        column = batch.column(index)
        if column.type == field.type:
            columns[field.name] = column
        elif field.type == pa.string() and not pa.types.is_null(column.type):
            columns[field.name] = pa.array([_as_text(v) for v in column.to_pylist()], pa.string())
            columns[json_flag(field.name)] = pc.is_valid(column)  # none of them was text
        else:
            columns[field.name] = column.cast(field.type, safe=False)
    for field in schema:
        if _is_flag(field.name) and field.name not in columns:
            index = batch.schema.get_field_index(field.name)
            columns[field.name] = batch.column(index) if index >= 0 else pa.nulls(len(batch), pa.bool_())
    return pa.RecordBatch.from_arrays([columns[field.name] for field in schema], schema=schema)


def _no_records(source) -> IndexFormatError:
    return _format_error(source, 'the index has no records')


def _build_table(source: str, batches: Iterable[pa.RecordBatch]) -> pa.Table:
    batches = [batch for batch in batches if len(batch)]
    if not batches:
        raise _no_records(source)
    schema = _unified_schema(batch.schema for batch in batches)
    return pa.Table.from_batches([_conform(batch, schema) for batch in batches], schema)


# ------------------------------------------------------------------------------------- the cache

class _CacheUnwritable(Exception):
    """The cache cannot be written (read-only folder, disk full, ...): build in memory instead."""


# A member up to this size is hashed whole (about 10 ms); a larger one by its head, its tail and
# blocks spread between, 1.5 MiB whatever its size (hashing a 223 MiB index whole took 1.2 s here,
# at every start of every rank; this sample 5-15 ms: bench/RESULTS.md).
_HASH_WHOLE_BYTES = 4 << 20
_HASH_BLOCK = 256 << 10  # the head and the tail; also the read size of a whole hash
_HASH_SPREAD = 64  # blocks of _HASH_SPREAD_BYTES between the head and the tail
_HASH_SPREAD_BYTES = 16 << 10


def _content_digest(path: Path, size: int) -> str:
    """A digest of ``path``'s bytes: all of them for a small file, else a fixed sample of them."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, 'rb') as f:
        if size <= _HASH_WHOLE_BYTES:
            while chunk := f.read(_HASH_BLOCK):
                digest.update(chunk)
            return digest.hexdigest()
        spans = [(0, _HASH_BLOCK), (size - _HASH_BLOCK, _HASH_BLOCK)]
        step = (size - 2 * _HASH_BLOCK) // (_HASH_SPREAD + 1)
        spans += [(_HASH_BLOCK + step * (i + 1), _HASH_SPREAD_BYTES) for i in range(_HASH_SPREAD)]
        for offset, length in spans:
            digest.update(os.pread(f.fileno(), length, offset))
    return digest.hexdigest()


def _fingerprint(resolved: Path, members: list[Path]) -> bytes:
    """What the cache was built from: each member's size, mtime, ctime and a digest of its bytes.

    The ctime is what tells an edit that kept the size and set the mtime back (``touch -d``, a copy
    with preserved times): the kernel sets it on every write and no call sets it back. The digest
    covers the file systems whose ctime means little (some network and FUSE mounts)."""
    stats = [(m.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, _content_digest(m, st.st_size))
             for m in members for st in (m.stat(),)]
    return json.dumps({'format': FORMAT_VERSION, 'source': str(resolved), 'members': stats},
                      sort_keys=True).encode()


def cache_path_for(data_path, cache_dir=None) -> Path:
    """Where the cache of ``data_path`` lives: beside it, or in ``cache_dir`` under a name that
    keeps apart sources of the same file name."""
    resolved = Path(data_path).resolve()
    if cache_dir is None:
        return resolved.parent / f'.{resolved.name}.sampleindex.arrow'
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    return Path(cache_dir) / f'{resolved.name}.{digest}.sampleindex.arrow'


_SAID_STALE: set = set()


def _open_cache(path: Path, fingerprint: bytes) -> pa.Table | None:
    """The memory-mapped table in ``path``, or None if it is missing, stale or corrupt."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if (reader.schema.metadata or {}).get(_FINGERPRINT_KEY) != fingerprint:
            if str(path) not in _SAID_STALE:  # looked at again under the build lock: said once
                _SAID_STALE.add(str(path))
                print_log(f'The sample index cache {path} is stale (its source changed): rebuilding',
                          logger='current', level=logging.INFO)
            return None
        table = reader.read_all()
        table.validate()
        return table
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (pa.ArrowInvalid, OSError) as exc:
        print_log(f'The sample index cache {path} is unreadable ({exc}): rebuilding',
                  logger='current', level=logging.WARNING)
        return None


class _SpillWriter:
    """Writes batches to segment files next to the cache, a new segment whenever the schema
    changes, so that a build holds one batch in memory; ``finish`` unifies them into one file."""

    def __init__(self, temp_path: str, metadata: dict):
        self.temp_path = temp_path
        self.metadata = metadata
        self.segments: list[tuple[str, pa.Schema]] = []
        self.writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self.writer is None or not batch.schema.equals(self.segments[-1][1]):
            self._close_writer()
            segment = f'{self.temp_path}.{len(self.segments)}'
            self.segments.append((segment, batch.schema))
            self.writer = pa.ipc.new_file(segment, batch.schema.with_metadata(self.metadata))
        self.writer.write_batch(batch)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> None:
        """Leaves the whole index in ``temp_path``."""
        self._close_writer()
        schema = _unified_schema(s for _, s in self.segments)
        if len(self.segments) == 1 and self.segments[0][1].equals(schema):
            os.replace(self.segments.pop()[0], self.temp_path)
            return
        with pa.ipc.new_file(self.temp_path, schema.with_metadata(self.metadata)) as writer:
            for segment, _ in self.segments:
                reader = pa.ipc.open_file(pa.memory_map(segment))
                for i in range(reader.num_record_batches):
                    writer.write_batch(_conform(reader.get_batch(i), schema))

    def remove_segments(self) -> None:
        """The clean-up, after the build or its failure: a writer that cannot flush its end (a full
        disk) is dropped quietly, so the first error stands and the segments are removed anyway."""
        with contextlib.suppress(OSError):
            self._close_writer()
        self.writer = None
        for segment, _ in self.segments:
            with contextlib.suppress(FileNotFoundError):
                os.remove(segment)


def _build_cache(source: str, members: list[Path], cache: Path, fingerprint: bytes) -> pa.Table:
    """Builds the cache file once (other processes building the same one wait for it)."""
    with contextlib.ExitStack() as held:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # Ranks starting together wait here instead of all parsing the source; the atomic
            # rename below keeps the cache whole where the lock does not work.
            held.enter_context(building(cache))
        except OSError as exc:
            raise _CacheUnwritable(exc) from exc
        table = _open_cache(cache, fingerprint)
        if table is not None:
            return table
        # What a build killed midway left (temp file and segments): this lock's holder builds now.
        for leftover in cache.parent.glob(f'.{glob.escape(cache.name)}.*.tmp*'):
            with contextlib.suppress(OSError):
                leftover.unlink()
        print_log(f'Indexing {source} into {cache} (done once; later loads memory-map it)',
                  logger='current', level=logging.INFO)
        started = time.perf_counter()
        try:
            handle, temp_path = tempfile.mkstemp(dir=cache.parent, prefix=f'.{cache.name}.',
                                                 suffix='.tmp')
            os.close(handle)
        except OSError as exc:
            raise _CacheUnwritable(exc) from exc
        spill = _SpillWriter(temp_path, {_FINGERPRINT_KEY: fingerprint})
        try:
            for batch in _source_batches(members):
                if len(batch):
                    try:
                        spill.write(batch)
                    except OSError as exc:
                        raise _CacheUnwritable(write_error(exc, cache)) from exc
            if not spill.segments:
                raise _no_records(source)
            try:
                spill.finish()
                os.replace(temp_path, cache)
            except OSError as exc:
                raise _CacheUnwritable(write_error(exc, cache)) from exc
        finally:
            spill.remove_segments()
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp_path)
    table = _open_cache(cache, fingerprint)
    if table is None:
        raise _CacheUnwritable(f'{cache} could not be read back after writing it')
    print_log(f'Indexed {table.num_rows} records of {source} in '
              f'{time.perf_counter() - started:.1f} s', logger='current', level=logging.INFO)
    return table


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
            cache = cache_path_for(resolved, cache_dir)
            try:
                table = _open_cache(cache, fingerprint)
                if table is None:
                    table = _build_cache(source, members, cache, fingerprint)
                return cls(table, source, cache=cache, fingerprint=fingerprint)
            except _CacheUnwritable as exc:
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
        file beside it, keyed on the cache's fingerprint. A kept value that is not ``valid`` (a
        damaged file) is computed again."""
        sidecar = None if self._cache is None else self._cache.with_name(f'{self._cache.name}.digests.json')
        known = {}
        if sidecar is not None:
            with contextlib.suppress(OSError, ValueError, RecursionError):
                known = json.loads(sidecar.read_text())
            if not isinstance(known, dict) or known.get('fingerprint') != self._fingerprint.decode() or \
                    not isinstance(known.get('values'), dict) or known.get('check') != _memo_check(known['values']):
                known = {}  # another index's, or damaged: computed again
        values = known.get('values', {})
        if key not in values or not valid(values[key]):
            values = {**values, key: compute()}
            known = {'fingerprint': self._fingerprint.decode() if self._fingerprint else None, 'values': values,
                     'check': _memo_check(values)}
            if sidecar is not None:
                with contextlib.suppress(OSError):  # a read-only cache folder: computed again next time
                    temp = sidecar.with_name(f'{sidecar.name}.{os.getpid()}.tmp')
                    temp.write_text(json.dumps(known))
                    os.replace(temp, sidecar)
        return values[key]

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
        """A view of the whole index's ``rows`` as ``src.datasets.selection`` stores them (sorted
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
    """The path of a stored ``rows.npy`` (``src.datasets.selection``), pickled in place of its rows."""


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
