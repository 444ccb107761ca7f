"""Per-record values computed elsewhere (aesthetic, CLIP similarity, NSFW and watermark
probabilities, duplicate clusters) joined into a prepared dataset's index by key, its images left
as they are: ``tools/add_columns.py CONFIG SCORES.parquet --key image``.

The key is ``image`` (the record's image path as the index holds it, under the dataset's
``image_key``), or a column both hold (``url``, ``key``: what the URL route keeps from
img2dataset's json, see ``src.prepare.metadata``). The parquet's other columns become index
columns; a record whose key is not in the parquet gets none (null, which every ``where`` filter
drops). A column the index already has is replaced, so joining a new version of the scores is a
re-run. The join is Arrow's ``index_in`` over the index's memory-mapped key column: the records
are streamed once from the index file and written back atomically (the index as it was before the
first join is kept as ``<index>.before-columns``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from src.datasets.storage.arrow_numpy import to_numpy
from src.datasets.errors import IndexFormatError
from src.datasets.storage.files import link_outside
from src.datasets.index.sample_index import SampleIndex, iter_json_array, iter_jsonl
from src.datasets.storage.atomic import atomic_write, write_json_array

IMAGE_KEY = 'image'  # --key image: the record's image path, whatever the dataset's image_key is
CHUNK = 65536
MAX_SCORES_BYTES = 8 << 30  # a scores parquet: its columns are read whole into memory
MAX_SCORES_ROWS = 1 << 30


@dataclass
class JoinReport:
    index: str
    key: str
    columns: list[str]
    records: int = 0
    matched: int = 0  # records that got values
    unmatched_keys: int = 0  # parquet rows whose key is no record's
    examples: list[str] = field(default_factory=list)  # a few of those keys

    def summary(self) -> str:
        text = (f'{self.index}: joined {self.columns} by {self.key!r} into {self.matched} of {self.records} records '
                f'({self.records - self.matched} without a value: null, dropped by every where filter); '
                f'{self.unmatched_keys} keys of the parquet match no record')
        return text + (f' (e.g. {self.examples})' if self.examples else '')


def index_paths(node) -> list[tuple[str, str]]:
    """(data_path, image_key) of every dataset config under ``node`` (a mix's parts too)."""
    if isinstance(node, dict):
        found = [(str(node['data_path']), node.get('image_key', IMAGE_KEY))] if 'data_path' in node else []
        return found + [path for value in node.values() for path in index_paths(value)]
    if isinstance(node, (list, tuple)):
        return [path for value in node for path in index_paths(value)]
    return []


def _values(scores: pa.Table, key: str, index_column: str) -> tuple[pa.Array, list[str]]:
    if key not in scores.column_names:
        raise IndexFormatError(f'the parquet has no {key!r} column to join by (it has {scores.column_names})')
    keys = scores.column(key).combine_chunks()
    if keys.null_count:
        raise IndexFormatError(f'the parquet has {keys.null_count} rows without a {key!r}')
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type) or pa.types.is_integer(keys.type)):
        raise IndexFormatError(f'the parquet\'s {key!r} column holds {keys.type}: keys are texts or integers, '
                               'they cannot be matched')
    repeated = len(keys) - len(pc.unique(keys))
    if repeated:
        raise IndexFormatError(f'the parquet has {repeated} repeated {key!r} values: one row per record')
    others = [name for name in scores.column_names if name != key and name != index_column]
    if not others:
        raise IndexFormatError(f'the parquet has no column besides {key!r} to join')
    return keys, others


def _scores_column_refused(field: pa.Field) -> bool:
    kind = field.type
    return not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _read_scores(scores_path: str, key: str, index_column: str) -> pa.Table:
    """The parquet's key column and the columns to join (not the whole file: its other columns are
    never read), its size and rows bounded; a column of a type an index cannot hold (binary, a
    timestamp, a decimal, a list) refused by name, before anything is written."""
    try:
        size = os.stat(scores_path).st_size
        if size > MAX_SCORES_BYTES:
            raise IndexFormatError(f'{scores_path}: {size} bytes, more than the {MAX_SCORES_BYTES} a scores '
                                   'parquet may have')
        meta = pq.ParquetFile(scores_path)
        if meta.metadata.num_rows > MAX_SCORES_ROWS:
            raise IndexFormatError(f'{scores_path}: {meta.metadata.num_rows} rows, more than the '
                                   f'{MAX_SCORES_ROWS} a scores parquet may have')
        schema = meta.schema_arrow
        if key not in schema.names:
            raise IndexFormatError(f'the parquet has no {key!r} column to join by (it has {schema.names})')
        for field in schema:
            if field.name not in (key, index_column) and _scores_column_refused(field):
                raise IndexFormatError(f'{scores_path}: column {field.name!r} holds {field.type}: an index '
                                       'column holds numbers, booleans or texts')
        scores = meta.read(columns=[name for name in schema.names if name != index_column or name == key])
    except (pa.ArrowInvalid, OSError) as err:
        raise IndexFormatError(f'{scores_path}: not a readable parquet table ({err})') from None
    return scores


def _keep_original(path: Path) -> None:
    """Keep the index as first seen as ``<index>.before-columns`` (once): not through a link out of
    its folder (a dangling one included: ``Path.exists`` says False for it), and written by the
    atomic write (a temp file, then a rename that replaces a link in the folder, never follows it)."""
    original = path.with_name(path.name + '.before-columns')
    if os.path.lexists(original) and link_outside(str(original), str(path.parent)):
        raise IndexFormatError(f'{original}: a symbolic link out of {path.parent}: refused (remove it)')
    if os.path.lexists(original):
        return
    with open(path, 'rb') as source, atomic_write(original, 'wb') as f:
        shutil.copyfileobj(source, f)
    shutil.copystat(path, original)


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def join_columns(data_path: str, scores_path: str, key: str = IMAGE_KEY, *, image_key: str = IMAGE_KEY,
                 cache_dir=None) -> JoinReport:
    """Join the columns of the parquet ``scores_path`` into the index at ``data_path`` by ``key``."""
    path = Path(data_path)
    index = SampleIndex.load(data_path, cache_dir=cache_dir)
    index_column = image_key if key == IMAGE_KEY else key
    if index.column_type(index_column) is None:
        raise IndexFormatError(f'{data_path}: no {index_column!r} column to join by (it has {index.columns})')
    scores = _read_scores(scores_path, key, index_column)
    keys, others = _values(scores, key, index_column)
    record_keys = index.whole_column(index_column)
    if keys.type != record_keys.type:
        try:
            keys = keys.cast(record_keys.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise IndexFormatError(f'{scores_path}: its {key!r} column holds {keys.type}, the index\'s '
                                   f'{index_column!r} holds {record_keys.type}: they cannot be matched') from None
    positions = pc.index_in(record_keys, value_set=keys)  # per record: its parquet row, or null
    joined = scores.select(others).take(positions)
    report = JoinReport(str(data_path), key, others, records=len(index), matched=len(index) - positions.null_count)
    used = np.zeros(len(keys), dtype=bool)
    used[to_numpy(pc.drop_null(positions).cast(pa.int64()))] = True
    report.unmatched_keys = int((~used).sum())
    report.examples = [str(keys[int(i)]) for i in np.flatnonzero(~used)[:3]]
    _keep_original(path)
    suffix = path.suffix.lower()
    if suffix == '.parquet':
        table = pq.read_table(path)
        table = table.drop_columns([name for name in others if name in table.column_names])
        for name in others:
            table = table.append_column(name, joined.column(name))
        with atomic_write(path, 'wb') as f:
            pq.write_table(table, f)
    elif suffix in ('.json', '.jsonl'):
        records = iter_jsonl(path) if suffix == '.jsonl' else iter_json_array(path)
        chunks = _joined_records(records, joined, others)
        if suffix == '.json':
            write_json_array(path, chunks, only_if_changed=False)
        else:
            with atomic_write(path, 'w') as f:
                for chunk in chunks:
                    f.writelines(json.dumps(record, ensure_ascii=False) + '\n' for record in chunk)
    else:
        raise IndexFormatError(f'{data_path}: columns are joined into a .json, .jsonl or .parquet index')
    return report


def _joined_records(records, joined: pa.Table, names: list[str]):
    """The index's records in chunks, each with its joined values (a previous value of the same name
    replaced; none where it has no value)."""
    chunk, start = [], 0

    def flush():
        values = joined.slice(start, len(chunk)).to_pydict()
        for i, record in enumerate(chunk):
            for name in names:
                record.pop(name, None)
                value = _json_value(values[name][i])
                if value is not None:
                    record[name] = value
        return chunk

    for record in records:
        chunk.append(record)
        if len(chunk) == CHUNK:
            yield flush()
            start, chunk = start + CHUNK, []
    if chunk:
        yield flush()
