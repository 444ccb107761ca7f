"""The upright (width, height) of each record's picture, known before training: what aspect-ratio
buckets (``src.datasets.sample.buckets``) are assigned from.

From the index's ``width`` and ``height`` fields where it has them (dalle3's parquet, Midjourney's
and the URL datasets' indexes do); else from the image's header, read once, in parallel threads
(files, tar members or objects alike, through the dataset's reader), and kept beside the index's
memory-mapped cache as ``<cache>.sizes-<fingerprint>.npy``: an ``int32 [rows, 2]`` table over the
whole index, read by every later construction (every rank, every run) in milliseconds. The
processes of a machine that start together wait for the one reading, under a lock, rather than
all reading the headers (``storage.sidecars``). An index held in memory (no cache) reads the
headers each time.

A stored size of 0 x 0 is a picture whose header could not be read: no bucket, a counted drop.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from mmengine.logging import print_log

from src.datasets.index import selection
from src.datasets.errors import SampleError
from src.datasets.progress import tqdm
from src.datasets.storage.images import open_image, oriented_size
from src.datasets.storage.sidecars import held, kept, written_aside
from src.datasets.index.sample_index import SampleIndex
from src.datasets.storage.stored_arrays import load_array

UNREAD, UNREADABLE = -1, 0
THREADS = 16  # header reads are I/O: local disks, network file systems and object stores alike


def header_size(data: bytes, name: str) -> tuple[int, int]:
    """The upright (width, height) of the image in ``data``, from its header; ``SampleError`` if none."""
    return oriented_size(open_image(data, name))


def _sidecar(index: SampleIndex) -> str | None:
    if index.cache is None:
        return None
    digest = hashlib.blake2b(index.fingerprint or b'', digest_size=8).hexdigest()
    return f'{index.cache}.sizes-{digest}.npy'


def _load(path: str | None, rows: int) -> np.ndarray:
    if path is not None and kept(path):
        with contextlib.suppress(OSError, ValueError):  # a damaged file (DamagedArray): read again
            stored = load_array(path, mmap=True)
            if stored.shape == (rows, 2) and stored.dtype == np.int32:
                return stored
    return np.full((rows, 2), UNREAD, np.int32)


def record_sizes(index: SampleIndex, read_size: Callable[[int], tuple[int, int]] | None, what: str,
                 stored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per record of ``index`` (a view): the picture's (width, height) as float64 arrays, NaN
    where unknown. In order: the index's fields; ``stored`` (an ``int32 [rows, 2]`` table over the
    whole index, as a latent folder keeps one); the image headers, ``read_size(i)`` giving record
    ``i``'s (or raising ``SampleError``), called once per cache for the records still unknown
    (None: the images are out of reach, those sizes stay unknown)."""
    widths, heights = index.numbers('width'), index.numbers('height')
    missing = ~((widths > 0) & (heights > 0))
    if not missing.any():
        return widths, heights
    widths, heights = widths.copy(), heights.copy()
    table_rows = index.table_rows()
    if stored is not None:
        _fill(widths, heights, missing, stored[table_rows[missing]])
        missing = ~((widths > 0) & (heights > 0))
    if missing.any() and read_size is not None:
        path = _sidecar(index)
        kept = _load(path, len(index.whole()))
        if (kept[table_rows[missing], 0] == UNREAD).any():
            kept = _read_missing(index, read_size, missing, path, what)
        _fill(widths, heights, missing, kept[table_rows[missing]])
    return widths, heights


def _fill(widths: np.ndarray, heights: np.ndarray, missing: np.ndarray, sizes: np.ndarray) -> None:
    sizes = sizes.astype(np.float64)
    sizes[sizes <= 0] = np.nan  # UNREAD, UNREADABLE
    widths[missing], heights[missing] = sizes[:, 0], sizes[:, 1]


def _read_missing(index: SampleIndex, read_size, missing: np.ndarray, path: str | None, what: str) -> np.ndarray:
    """Read the headers not stored yet (under the lock: other processes wait, then find them)."""
    with held(path, required=False) if path is not None else contextlib.nullcontext():
        table_rows = index.table_rows()
        stored = np.array(_load(path, len(index.whole())))  # again: another process may have read them
        todo = np.flatnonzero(missing & (stored[table_rows, 0] == UNREAD))
        if len(todo):
            print_log(f'{what}: {len(todo)} records have no width and height in the index: reading their image '
                      'headers once' + (f' (kept in {path})' if path else ' (the index is in memory: not kept)'),
                      logger='current', level=logging.INFO)
            stored[table_rows[todo]] = _read_headers(read_size, todo, what)
            if path is not None:
                _save(stored, path)
        return stored


def _read_headers(read_size, rows: np.ndarray, what: str) -> np.ndarray:
    def one(i: int) -> tuple[int, int]:
        try:
            return read_size(int(i))
        except SampleError:
            return UNREADABLE, UNREADABLE
    with ThreadPoolExecutor(THREADS) as pool, tqdm(total=len(rows), unit='image', desc=f'image sizes of {what}',
                                                   disable=len(rows) < 1000) as bar:
        sizes = []
        for size in pool.map(one, rows):
            sizes.append(size)
            bar.update()
    return np.asarray(sizes, np.int32).reshape(-1, 2)


def forget_sizes(index: SampleIndex) -> None:
    """Drop the sizes kept for ``index`` (a whole index) and what was decided from them (the
    selections beside its cache): a picture changed after they were read."""
    path = _sidecar(index)
    if path is not None:
        with contextlib.suppress(OSError):
            os.remove(path)
    selection.forget(index)


def _save(stored: np.ndarray, path: str) -> None:
    try:
        with written_aside(path) as temp, open(temp, 'wb') as f:
            np.save(f, stored)
    except OSError as exc:  # a read-only cache folder: read again next time
        print_log(f'cannot keep the image sizes in {path} ({exc}): they are read again next time',
                  logger='current', level=logging.WARNING)
