"""Which records of an index a dataset uses, decided once per index cache and options, then mapped.

A dataset drops records at construction (no image path, too small, unsafe path, outside every
bucket, ...) with a handful of whole-column passes, which at 23M records weigh on every rank's start-up in
time and memory (bench/RESULTS.md, "Memory per process and at scale (23M)"). The outcome depends only on the index and the dataset's options, so
it is kept beside the index's cache, in a folder named by a digest of both:

- ``rows.npy``: int64, the kept rows of the whole index (absent when every row is kept);
- ``buckets.npy``: int16, each kept record's aspect-ratio bucket (with buckets);
- ``drops.json``: the counts by reason, for the "Loaded N samples (dropped: ...)" line.

Later constructions (every rank, every run) memory-map the arrays: a fixed cost whatever the
record count, and the pages are shared by every process of the machine. The processes that start
together wait, under a lock, for the one computing it (``storage.sidecars``). An index held in
memory keeps nothing.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datasets.storage.sidecars import held, kept, read_json, written_aside
from src.datasets.storage.stored_arrays import load_array

VERSION = 1


@dataclass
class Selection:
    rows: np.ndarray | None  # kept rows of the whole index; None: all of them
    bucket_ids: np.ndarray | None
    drops: dict
    total: int


def folder_for(index, key: dict) -> Path | None:
    """Where the selection of ``index`` (a whole, cached index) under ``key`` lives; None for an
    index held in memory."""
    if index.cache is None or index.fingerprint is None:
        return None
    text = json.dumps([VERSION, index.fingerprint.decode(), key], sort_keys=True, default=str)
    return index.cache.with_name(f'{index.cache.name}.select-{hashlib.sha256(text.encode()).hexdigest()[:16]}')


def _load(folder: Path, total: int, buckets: int) -> Selection | None:
    """The stored selection, or None when it is missing or is not what ``save`` writes (a cut,
    zero-byte or altered file is computed again, never trusted)."""
    info = read_json(folder / 'drops.json') if kept(folder, folder=True) else None
    if info is None:
        return None
    try:
        rows = load_array(folder / 'rows.npy', mmap=True) if info['rows'] else None
        bucket_ids = load_array(folder / 'buckets.npy', mmap=True) if info['buckets'] else None
        drops = info['drops']
        if not all(isinstance(n, int) for n in drops['counts'].values()) or \
                not all(isinstance(m, str) for m in drops['messages']):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # DamagedArray is a ValueError
        return None
    count = total if rows is None else len(rows)
    if info.get('total') != total or (rows is not None and not _sorted_rows(rows, total)) or \
            (bucket_ids is not None and (bucket_ids.dtype != np.int16 or bucket_ids.shape != (count,) or (
                count and (bucket_ids.min() < 0 or bucket_ids.max() >= buckets)))):
        return None
    return Selection(rows, bucket_ids, drops, total)


def _sorted_rows(rows: np.ndarray, total: int) -> bool:
    """Whether ``rows`` are row numbers of ``total`` rows, strictly increasing (as ``save`` keeps them)."""
    return rows.dtype == np.int64 and rows.ndim == 1 and (not len(rows) or (
        rows[0] >= 0 and rows[-1] < total and bool(np.all(rows[1:] > rows[:-1]))))


@contextlib.contextmanager
def stored(folder: Path | None, total: int, buckets: int = 0):
    """The stored selection (or None), held under the folder's lock (``storage.sidecars``) so that
    one process computes what is missing while the others wait; ``save`` it inside the block.
    ``buckets``: how many the dataset has (a stored bucket id must be one of them)."""
    if folder is None:
        yield None
        return
    with held(folder, required=False) as locked:  # not held: a read-only cache folder, computed each time
        yield _load(folder, total, buckets) if locked else None


def forget(index) -> None:
    """Remove every stored selection of ``index`` (a whole, cached index): what they were decided
    from changed (processes that map one keep reading it; the next construction decides again)."""
    if index.cache is None:
        return
    for folder in index.cache.parent.glob(f'{glob.escape(index.cache.name)}.select-*'):
        shutil.rmtree(folder, ignore_errors=True)


def save(folder: Path | None, selection: Selection) -> None:
    """Keep ``selection`` in ``folder`` (written aside and renamed); a folder that cannot be
    written is left to the next construction."""
    if folder is None:
        return
    with contextlib.suppress(OSError), written_aside(folder, folder=True) as temp:
        if selection.rows is not None:
            np.save(temp / 'rows.npy', np.asarray(selection.rows, np.int64))
        if selection.bucket_ids is not None:
            np.save(temp / 'buckets.npy', np.asarray(selection.bucket_ids, np.int16))
        (temp / 'drops.json').write_text(json.dumps({
            'total': selection.total, 'drops': selection.drops, 'rows': selection.rows is not None,
            'buckets': selection.bucket_ids is not None}))
