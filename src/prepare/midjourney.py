"""midjourney-23m: the parquet tables -> data.json, column by column.

The guide walks 23M rows with ``iterrows``, stats every image and dumps with ``indent=2`` (the
pure-Python encoder). Here every check is one Arrow/numpy operation over a whole column, existence
is a lookup of 64-bit path hashes against one listing of the files (``src.prepare.listing``), and
the JSON text is joined by Arrow string kernels, a chunk at a time, and written straight from
Arrow's buffers.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from src.datasets.errors import IndexFormatError
from src.datasets.storage.files import unsafe_path_mask
from src.datasets.storage.arrow_numpy import to_numpy
from src.datasets.storage.atomic import write_encoded_json_array
from src.prepare.report import EXAMPLES_PER_REASON, Drops, Report
from src.prepare.listing import bool_array, row_array, string_array, string_hashes
from src.prepare.runner import Files

TABLE_SCHEMA = pa.schema([('filename', pa.string()), ('prompt', pa.string()),
                          ('width', pa.float64()), ('height', pa.float64())])
IMAGE_FOLDER = 'images'
INDEX = 'data.json'
CHUNK = 100_000
MAX_SIDE = 2 ** 31  # a size no image has: such a value is damage, not a picture
GATED = ('the dataset is gated on the hub: run `huggingface-cli login`, accept its terms on its page, '
         'then download again')


@dataclass(frozen=True)
class Columns:
    """The tables' file pattern (relative to the root) and column names; defaults as the guide reads them."""

    tables: str = 'raw/table-*.parquet'
    filename: str = 'filename'
    caption: str = 'prompt'
    width: str = 'width'
    height: str = 'height'

    def by_role(self) -> dict[str, str]:
        """:data:`TABLE_SCHEMA` name -> the tables' column name."""
        return dict(zip(TABLE_SCHEMA.names, (self.filename, self.caption, self.width, self.height)))


def table_paths(root: str, columns: Columns = Columns()) -> list[str]:
    """The tables, in name order (the order of data.json)."""
    paths = sorted(glob.glob(os.path.join(root, columns.tables)))
    if not paths:
        raise IndexFormatError(f'no {columns.tables} under {root}: no tables were downloaded ({GATED})')
    return paths


def read_table(path: str, columns: Columns = Columns(), roles=TABLE_SCHEMA.names) -> pa.Table:
    """The ``roles`` (of :data:`TABLE_SCHEMA`) of one table, under those names."""
    wanted = {role: name for role, name in columns.by_role().items() if role in roles}
    try:
        # One file, not pq.read_table's dataset layer (whose import pulls in pandas: half a second).
        with pq.ParquetFile(path) as parquet:
            present = parquet.schema_arrow.names
            missing = [name for name in columns.by_role().values() if name not in present]
            if missing:
                raise IndexFormatError(f'{path}: no column {", ".join(map(repr, missing))}; its columns are '
                                       f'{present}. Name them with --filename-col/--caption-col/--width-col/'
                                       '--height-col.')
            table = parquet.read(columns=list(wanted.values()))
        schema = pa.schema([TABLE_SCHEMA.field(role) for role in wanted])
        return table.rename_columns(list(wanted)).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise IndexFormatError(f'{path}: cannot read columns {list(wanted.values())}: {e}') from None


def read_tables(root: str, columns: Columns = Columns(), roles=TABLE_SCHEMA.names) -> pa.Table:
    """All tables in name order, as one table (of ``roles``)."""
    return pa.concat_tables([read_table(path, columns, roles) for path in table_paths(root, columns)])


def first_occurrences(names: pa.ChunkedArray, candidates: np.ndarray, hashes: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask: the rows of ``candidates`` (row numbers) whose name no earlier candidate has.

    By 64-bit hashes of the names (``hashes``: :func:`string_hashes` of ``names``, where the caller
    has them), sorted with their row order kept: 24 bytes a candidate at the peak, where a hash
    table of 23M names' bytes took over a GB. Rows whose hash another row has (the repeats, and
    the rare collision) are then told apart by name, so a collision never drops a record."""
    hashes = (string_hashes(names) if hashes is None else hashes)[candidates]
    order = np.argsort(hashes, kind='stable')  # equal hashes stay in row order
    hashes = hashes[order]
    equal = hashes[1:] == hashes[:-1]
    del hashes
    shared = np.zeros(len(order), dtype=bool)  # a hash some other candidate has too
    shared[1:] |= equal
    shared[:-1] |= equal
    mask = np.zeros(len(names), dtype=bool)
    mask[candidates] = True
    rows = np.sort(candidates[order[shared]])
    seen = set()
    for row, name in zip(rows.tolist(), names.take(row_array(rows)).to_pylist()):
        if name in seen:
            mask[row] = False
        seen.add(name)
    return mask


def build_index(files: Files, report: Report, columns: Columns = Columns()) -> None:
    """data.json from the tables, in two passes so that at 23M rows the prompts (gigabytes of text)
    are never all in memory: the row checks and every file name first, table by table; then the
    kept rows of each table, encoded, table by table."""
    paths = table_paths(files.root, columns)
    index = report.add_index(os.path.join(files.root, INDEX))
    names, row_problems = [], {'no-caption': [], 'no-size': [], 'bad-size': []}
    for path in paths:
        table = read_table(path, columns)
        names.append(table['filename'])
        row_problems['no-caption'].append(is_missing(table['prompt']))
        row_problems['no-size'].append(is_missing(table['width']) | is_missing(table['height']))
        row_problems['bad-size'].append(~is_plausible_size(table['width']) | ~is_plausible_size(table['height']))
        del table
        pa.default_memory_pool().release_unused()  # its prompts: Arrow's allocator would keep them
    names = pa.chunked_array([chunk for column in names for chunk in column.chunks], pa.string())
    hashes = string_hashes(names)

    # Each dropped row is counted once, under the first reason that applies.
    problems = [
        ('unsafe-path', unsafe_path_mask(names)),  # absolute, or climbing out of images/
        ('no-image', ~files.paths.contains_all(names, prefix=IMAGE_FOLDER + '/', hashes=hashes)),
        *((reason, np.concatenate(masks) if masks else np.zeros(0, bool)) for reason, masks in row_problems.items()),
    ]
    keep = np.ones(len(names), dtype=bool)
    for reason, rows in problems:
        record_drops(index.drops, reason, names, rows & keep)
        keep &= ~rows
    unique = first_occurrences(names, np.flatnonzero(keep), hashes)
    record_drops(index.drops, 'duplicate', names, keep & ~unique)
    keep &= unique
    del names, problems, unique, hashes
    pa.default_memory_pool().release_unused()

    index.entries = int(keep.sum())
    index.changed = write_encoded_json_array(index.path, _records_of_tables(paths, columns, keep))


def _records_of_tables(paths: list[str], columns: Columns, keep: np.ndarray):
    """The encoded records of each table's kept rows, one table read at a time."""
    start = 0
    for path in paths:
        table = read_table(path, columns)
        folder, empty = string_array([IMAGE_FOLDER + '/', ''])  # Arrow scalars (pa.scalar imports pandas)
        images = pc.binary_join_element_wise(folder, table['filename'], empty)
        yield from encoded_records(table.set_column(0, 'image', images), keep[start:start + len(table)])
        start += len(table)


def is_missing(values: pa.ChunkedArray) -> np.ndarray:
    return to_numpy(pc.is_null(values, nan_is_null=True))


def is_plausible_size(values: pa.ChunkedArray) -> np.ndarray:
    """Finite and below :data:`MAX_SIDE` (nulls count as plausible here: they are 'no-size')."""
    sizes = to_numpy(values, fill=np.nan)  # float64 with NaN for null
    with np.errstate(invalid='ignore'):
        return np.isnan(sizes) | (np.isfinite(sizes) & (np.abs(sizes) < MAX_SIDE))


def record_drops(drops: Drops, reason: str, names: pa.ChunkedArray, rows: np.ndarray) -> None:
    count = int(rows.sum())
    if count:
        examples = names.take(row_array(np.flatnonzero(rows)[:EXAMPLES_PER_REASON])).to_pylist()
        drops.add_many(reason, [str(name) for name in examples], count)


def string_bytes(strings: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of a ``pa.string()`` array's values back to back (its offsets are int32): a
    view of its data buffer, no copy."""
    offsets = np.frombuffer(strings.buffers()[1], np.int32, len(strings) + 1, strings.offset * 4)
    return np.frombuffer(strings.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]


def json_escaped(values: pa.Array) -> pa.Array:
    """Each string as it goes between the quotes of a JSON string literal, escaped by Arrow kernels
    over the whole column; the rare value holding a control character is encoded by ``json.dumps``.

    A kernel runs only when a scan of the column's bytes (a few ms) finds a byte it handles: in
    UTF-8 a byte below 0x80 is always that ASCII character. File names seldom need any kernel, and
    the control character search (a regex, the slowest of them) is skipped for nearly every chunk.
    """
    data = string_bytes(values)
    escaped = values
    for char, escape in (('\\', '\\\\'), ('"', '\\"')):
        if (data == ord(char)).any():
            escaped = pc.replace_substring(escaped, char, escape)
    if data.size and data.min() < 0x20:
        control = pc.fill_null(pc.match_substring_regex(values, r'[\x00-\x1f]'), False)
        fixed = [json.dumps(value, ensure_ascii=False)[1:-1] for value in values.filter(control).to_pylist()]
        escaped = pc.replace_with_mask(escaped, control, string_array(fixed))
    return escaped


def kept_chunks(table: pa.Table, keep: np.ndarray):
    """The ``keep`` rows of ``table`` as record batches of at most :data:`CHUNK` rows, each within
    one of the table's own chunks: a line of data.json each, where lines always broke, so that a
    re-run with this code leaves an existing data.json untouched. Each is filtered from the span of
    rows it comes from: the kept rows are never copied whole (memory a process touches for the
    first time is slow to get on a virtual machine: bench/RESULTS.md, "Preparation against the
    guides' scripts")."""
    start = 0
    for whole in table.to_batches():
        rows = np.flatnonzero(keep[start:start + len(whole)])
        for first in range(0, len(rows), CHUNK):
            low, high = rows[first], rows[min(first + CHUNK, len(rows)) - 1] + 1
            yield whole.slice(low, high - low).filter(bool_array(keep[start + low:start + high]))
        start += len(whole)


def encoded_records(table: pa.Table, keep: np.ndarray):
    """The data.json records of the ``keep`` rows of ``table``, already JSON-encoded, a chunk per line.

    Building {"image", "caption", "width", "height"} dicts and encoding them is per-row work in
    Python; joining the escaped columns with Arrow string kernels costs a small fraction of that.
    Each record is joined with its trailing comma, so the chunk's text is the data buffer of the
    joined array as it is (less the last comma): it is written from there, never copied to bytes
    (each piece is a bytes-like numpy view).
    """
    # The literals as Arrow scalars: a Python str argument goes through pa.scalar, which imports pandas.
    opening, caption, width, height, closing, empty = string_array(
        ['{"image":"', '","caption":"', '","width":', ',"height":', '},', ''])
    for batch in kept_chunks(table, keep):
        sizes = [pc.cast(pc.cast(batch[name], pa.int64(), safe=False), pa.string()) for name in ('width', 'height')]
        records = pc.binary_join_element_wise(
            opening, json_escaped(batch['image']), caption, json_escaped(batch['prompt']),
            width, sizes[0], height, sizes[1], closing, empty)
        yield string_bytes(records)[:-1]
