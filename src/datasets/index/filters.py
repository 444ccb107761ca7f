"""Filters on a dataset's records: ``CaptionDataset(filters=dict(...))``.

Teams keep records by resolution, aspect, caption length and by scores computed elsewhere (joined
into the index with ``tools/add_columns.py``). A filter is decided with the dataset's other drops,
once per index cache and options (``src.datasets.index.selection``): whole-column passes over the
memory-mapped index the first time, a mapped file of kept rows after. ::

    filters=dict(min_side=512,                 # the picture's shorter side, pixels
                 aspect=(0.5, 2.0),            # width / height, inclusive range
                 caption_words=(5, 200),       # inclusive range
                 where=[('aesthetic', '>=', 5.0), ('punsafe', '<', 0.1)],  # any column
                 dedup=True)                   # one record per duplicate cluster

``where`` compares any index column, or a derived one (``min_side``, ``aspect``,
``caption_words``), with a number or a text; a record without a value (null, missing, not a
number) is dropped by every comparison. The filters apply in the order above; each one's drops are
counted in the "Loaded N samples (dropped: ...)" line and in the funnel the report draws.
"""
from __future__ import annotations

import copy
import json
import logging
import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mmengine.logging import MMLogger

from src.datasets.progress import tqdm
from src.datasets.storage.arrow_numpy import to_numpy
from src.datasets.index.captions import ANNOTATION_KEY
from src.datasets.errors import SampleError
from src.datasets.index.sample_index import SampleIndex

KEYS = ('min_side', 'aspect', 'caption_words', 'where', 'dedup')
DERIVED = ('min_side', 'aspect', 'caption_words')
THREADS = 16  # caption files read at once (I/O: local disks, network file systems, objects)
CLUSTER_COLUMN = 'dup_cluster'  # written by tools/find_duplicates.py (src.datasets.duplicates)
_NUMPY_OPS = {'>=': np.greater_equal, '>': np.greater, '<=': np.less_equal, '<': np.less, '==': np.equal,
              '!=': np.not_equal}
_ARROW_OPS = {'>=': pc.greater_equal, '>': pc.greater, '<=': pc.less_equal, '<': pc.less, '==': pc.equal,
              '!=': pc.not_equal}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range(name: str, value) -> list:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value)
            or value[0] > value[1]):
        raise ValueError(f'filters: {name}={value!r} must be an inclusive range (low, high) of numbers')
    return [float(value[0]), float(value[1])]


def normalize(filters) -> dict | None:
    """``filters`` checked, in the plain form a selection key and a checkpoint keep (lists for
    tuples); None for no filter. A mistake is a ValueError that says what was expected."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise ValueError(f'filters must be a dict of {KEYS}, got {type(filters).__name__}')
    unknown = sorted(set(filters) - set(KEYS))
    if unknown:
        raise ValueError(f'filters: unknown {unknown}; known: {KEYS}')
    plain = {}
    if filters.get('min_side') is not None:
        if not _is_number(filters['min_side']):
            raise ValueError(f"filters: min_side={filters['min_side']!r} must be a number of pixels")
        plain['min_side'] = float(filters['min_side'])
    for name in ('aspect', 'caption_words'):
        if filters.get(name) is not None:
            plain[name] = _range(name, filters[name])
    where = filters.get('where') or []
    if isinstance(where, tuple) and len(where) == 3 and isinstance(where[0], str):
        where = [where]  # a single comparison
    clauses = []
    for clause in where:
        if (not isinstance(clause, (list, tuple)) or len(clause) != 3 or not isinstance(clause[0], str)
                or clause[1] not in _NUMPY_OPS or not isinstance(clause[2], (str, numbers.Real))):
            raise ValueError(f'filters: where {clause!r} must be (column, operator, number or text), '
                             f'the operator one of {list(_NUMPY_OPS)}')
        if isinstance(clause[2], bool):  # a bool is an int to Python: True would compare as 1
            raise ValueError(f'filters: where {clause!r}: the value {clause[2]!r} is a bool; compare with a number '
                             'or a text (a column of true/false: == 1 or == 0)')
        clauses.append([clause[0], clause[1], clause[2]])
    if clauses:
        plain['where'] = clauses
    if filters.get('dedup'):
        plain['dedup'] = True
    return plain or None


def describe(filters: dict | None) -> str:
    """The filters as a person reads them (messages, the resume check)."""
    return 'none' if not filters else json.dumps(filters, sort_keys=True)


def clause_label(clause) -> str:
    column, op, value = clause
    return f'where {column} {op} {value!r}'


class RecordValues:
    """The values filters compare, per record of an index view: its columns and the derived ones
    (computed on first use: the sizes may need image headers, see ``src.datasets.index.image_sizes``)."""

    def __init__(self, index: SampleIndex, sizes: Callable[[SampleIndex], tuple], caption_keys: tuple,
                 caption: Callable[[int], str] | None = None):
        self.index = index
        self._sizes = sizes
        self.caption_keys = caption_keys
        self._caption = caption  # record i's caption from its annotation file (SampleError if none)
        self._cache = {}

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        if 'sizes' not in self._cache:
            self._cache['sizes'] = self._sizes(self.index)
        return self._cache['sizes']

    def numbers(self, name: str) -> np.ndarray:
        """Field or derived value ``name`` as float64, NaN where there is none."""
        if name not in self._cache:
            self._cache[name] = self._numbers(name)
        return self._cache[name]

    def _numbers(self, name: str) -> np.ndarray:
        if name == 'min_side':
            width, height = self.sizes()
            return np.minimum(width, height)
        if name == 'aspect':
            width, height = self.sizes()
            with np.errstate(divide='ignore', invalid='ignore'):
                aspect = width / height
            aspect[~np.isfinite(aspect)] = np.nan
            return aspect
        if name == 'caption_words':
            return self._caption_words()
        self._check_column(name)
        return self.index.numbers(name)

    def _check_column(self, name: str) -> None:
        if name not in self.index.columns:
            raise ValueError(f'filters: {self.index.source} has no column {name!r} (it has {self.index.columns}; '
                             f'derived: {list(DERIVED)}). Join scores with tools/add_columns.py')

    def _caption_words(self) -> np.ndarray:
        """Words of each record's caption: held in the index (the first ``cap_source`` key it has),
        else read from its annotation file (in threads, with a progress bar)."""
        words = np.full(len(self.index), np.nan)
        texts = [key for key in self.caption_keys
                 if (kind := self.index.column_type(key)) is not None and pa.types.is_string(kind)]
        if not texts and self._caption is None:
            raise ValueError(f'filters: caption_words counts the captions held in the index ({self.caption_keys}), '
                             f'and {self.index.source} has none of these text columns ({self.index.columns})')
        for key in texts:
            counts = pc.list_value_length(pc.utf8_split_whitespace(self.index.whole_column(key)))
            counts = self.index.view_of(to_numpy(counts.cast(pa.float64()), fill=np.nan))
            fill = np.isnan(words) & ~self.index.not_text(key)
            words[fill] = counts[fill]
        todo = np.flatnonzero(np.isnan(words) & self.index.has_value(ANNOTATION_KEY))
        if len(todo) and self._caption is not None:
            words[todo] = self._read_words(todo)
        return words

    def _read_words(self, rows: np.ndarray) -> np.ndarray:
        def words(i) -> float:
            try:
                return float(len(self._caption(int(i)).split()))
            except SampleError:
                return np.nan
        with ThreadPoolExecutor(THREADS) as pool:
            return np.fromiter(tqdm(pool.map(words, rows), total=len(rows), unit='caption', disable=len(rows) < 1000,
                                    desc=f'caption words of {self.index.source}'), np.float64, len(rows))

    def compare(self, column: str, op: str, value) -> np.ndarray:
        """Per record: whether ``column op value`` holds; False where the record has no value."""
        if _is_number(value):
            values = self.numbers(column)
            with np.errstate(invalid='ignore'):
                return ~np.isnan(values) & _NUMPY_OPS[op](values, value)
        if column in DERIVED:
            raise ValueError(f'filters: {column} is a number; where {column!r} {op} {value!r} compares it with text')
        self._check_column(column)
        whole = self.index.whole_column(column)
        if not (pa.types.is_string(whole.type) or pa.types.is_large_string(whole.type)):
            raise ValueError(f'filters: column {column!r} holds {whole.type}, compared with the text {value!r}')
        holds = to_numpy(pc.fill_null(_ARROW_OPS[op](whole, value), False))
        return self.index.view_of(holds) & ~self.index.not_text(column)

    def first_of_clusters(self, keep: np.ndarray) -> np.ndarray:
        """Per record: whether it is the first kept record of its duplicate cluster (a record with
        no cluster is its own)."""
        if CLUSTER_COLUMN not in self.index.columns:
            raise ValueError(f'filters: dedup=True needs the {CLUSTER_COLUMN!r} column in {self.index.source}: '
                             'compute it with tools/find_duplicates.py CONFIG')
        clusters = self.index.numbers(CLUSTER_COLUMN)
        clustered = np.flatnonzero(keep & ~np.isnan(clusters))
        first = np.ones(len(keep), dtype=bool)
        first[clustered] = False
        _, where = np.unique(clusters[clustered], return_index=True)
        first[clustered[where]] = True
        return first


def apply(filters: dict | None, values: RecordValues, keep: np.ndarray,
          log: Callable[[np.ndarray, str], int]) -> tuple[dict, list]:
    """Drop from ``keep`` (in place) the records the filters refuse, in their order. Returns the
    drops by filter (``log(mask, what)`` counts and logs each) and the funnel: one
    ``[step, records before, records after]`` per filter."""
    drops, funnel = {}, []

    def step(label: str, holds: np.ndarray, what: str) -> None:
        before = int(keep.sum())
        refused = keep & ~holds
        drops[label] = log(refused, what)
        keep[refused] = False
        funnel.append([label, before, before - drops[label]])

    if not filters:
        return drops, funnel
    if 'min_side' in filters:
        step('by min_side', values.compare('min_side', '>=', filters['min_side']),
             f"have a shorter side under {filters['min_side']:g} px, or no known size (filters: min_side)")
    for name in ('aspect', 'caption_words'):
        if name in filters:
            low, high = filters[name]
            holds = values.compare(name, '>=', low) & values.compare(name, '<=', high)
            step(f'by {name}', holds, f'have {name} outside [{low:g}, {high:g}] or none (filters: {name})')
    for clause in filters.get('where', []):
        label = clause_label(clause)
        step(label, values.compare(*clause), f'fail or have no value for {label} (filters)')
    if filters.get('dedup'):
        step('duplicates', values.first_of_clusters(keep),
             f'duplicate an earlier record of their {CLUSTER_COLUMN} (filters: dedup)')
    return drops, funnel


def records_moved(dataset, filters) -> tuple[int, int]:
    """(entered, left): the records ``dataset`` keeps that ``filters`` did not keep from the same
    index, and the reverse. The other selection is decided (or mapped, when stored) on a copy."""
    other = copy.copy(dataset)
    other.filters = normalize(filters)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the other selection's "Loaded ..." lines would read as this run's
    try:
        before = other.load_index().table_rows()
    finally:
        logger.setLevel(level)
    now = dataset.index.table_rows()
    return (len(np.setdiff1d(now, before, assume_unique=True)),
            len(np.setdiff1d(before, now, assume_unique=True)))


def set_in_config(node, filters) -> int:
    """Give every dataset config under ``node`` (those with a ``data_path``: a mix's parts too)
    ``filters`` (a preview before training: ``tools/inspect_dataset.py --filters``); how many."""
    count = 0
    if isinstance(node, dict):
        if 'data_path' in node:
            node['filters'] = filters
            count += 1
        for key, value in node.items():
            if key != 'filters':
                count += set_in_config(value, filters)
    elif isinstance(node, (list, tuple)):
        count += sum(set_in_config(value, filters) for value in node)
    return count
