"""Reading an index's files for the sample index (``sample_index.py``): the streaming JSON array
parser, JSON lines, parquet and folders of them, records to Arrow batches of bounded size, and one
schema for all the batches (columns of mixed types kept as their JSON)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from src.datasets.errors import IndexFormatError

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
    with open(path, encoding='utf-8-sig') as file:
        yield from _JsonArrayReader(path, file, chunk_chars or _JSON_CHUNK_CHARS).records()


class _JsonArrayReader:
    """The state of one pass of :func:`iter_json_array` over a file: the text read and not yet
    decoded (``buf`` from ``pos``), and how much was dropped before it, for error positions."""

    def __init__(self, path, file, chunk_chars: int):
        self.path, self.file, self.chunk_chars = path, file, chunk_chars
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof = '', 0, False
        self.may_decode_run = True  # tried at most once per text read, so a failure costs little
        self.consumed_chars = self.consumed_lines = 0  # text already dropped from the front of ``buf``
        self.count = 0  # records yielded

    def records(self) -> Iterator[dict]:
        """The array's records, in order; then the check that nothing follows the array."""
        char = self.next_char()
        if char != '[':
            raise self.fail(self.pos, 'the file is empty' if not char else
                            'the top-level value is not a JSON array of records')
        self.pos += 1
        if self.next_char() == ']':
            self.pos += 1
        else:
            yield from self.elements()
        if self.next_char():
            raise self.fail(self.pos, 'unexpected data after the JSON array')

    def elements(self) -> Iterator[dict]:
        """The records from the first one to the closing ']' (read past it)."""
        while True:
            self.next_char()
            run = self.decode_run() if self.may_decode_run else None
            if run is None:
                self.may_decode_run = False
                run = self.decode_one()
            records, end = run
            yield from records
            self.count += len(records)
            self.pos = end
            char = self.next_char()
            if char == ']':
                self.pos += 1
                return
            if char != ',':
                raise self.fail(self.pos, f"expected ',' or ']' after record {self.count - 1}, found "
                                          f"{char!r}" if char else 'unexpected end of file')
            self.pos += 1

    def read_more(self) -> None:
        """Drop the decoded text and read the next chunk after the rest."""
        self.consumed_lines += self.buf.count('\n', 0, self.pos)
        self.consumed_chars += self.pos
        try:
            text = self.file.read(self.chunk_chars)
        except UnicodeDecodeError as exc:
            raise _format_error(self.path, f'not UTF-8 text after character {self.consumed_chars}: '
                                           f'{exc}') from None
        self.buf, self.pos, self.eof = self.buf[self.pos:] + text, 0, not text
        self.may_decode_run = True

    def fail(self, at: int, message: str) -> IndexFormatError:
        """The error at ``buf[at]``, naming its line and character in the file."""
        line = self.consumed_lines + self.buf.count('\n', 0, at) + 1
        return _format_error(self.path, f'line {line}, character {self.consumed_chars + at}: {message}')

    def decode_run(self) -> tuple[list, int] | None:
        """The records from ``pos`` to the last '}' read, and where they end; or None."""
        end = self.buf.rfind('}', self.pos) + 1
        if end == 0:
            return None
        try:
            run = self.decoder.decode(f'[{self.buf[self.pos:end]}]')
        except json.JSONDecodeError:
            return None
        return (run, end) if all(isinstance(record, dict) for record in run) else None

    def decode_one(self) -> tuple[list, int]:
        """The record at ``pos`` alone (reading on while it may be cut), and where it ends."""
        while True:
            try:
                record, end = self.decoder.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                maybe_cut = (exc.pos >= len(self.buf) - _MAX_CUT_TOKEN
                             or exc.msg.startswith('Unterminated string'))
                if self.eof or not maybe_cut:
                    raise self.fail(exc.pos, f'malformed JSON in record {self.count}: '
                                             f'{exc.msg}') from None
                self.read_more()
        if not isinstance(record, dict):
            raise self.fail(self.pos, f'record {self.count} is a {type(record).__name__}, not a JSON object')
        return [record], end

    def next_char(self) -> str:
        """The next non-blank character ('' at the end of the file), left at ``buf[pos]``."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self.read_more()


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

