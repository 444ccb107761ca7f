"""Which records of the index a dataset keeps, and each one's aspect-ratio bucket.

Records that cannot make a sample are dropped at construction, each kind counted and logged (no
image path, a path that is not text or leaves its folder, too small, too elongated, filtered, in no
bucket); with buckets, every kept record gets its bucket from its picture's size (the index's width
and height, the sizes stored beside its latents, or the image header, read once:
``src.datasets.index.image_sizes``). The outcome depends only on the index and ``RecordRules``: it
is decided once per index cache and rules, then mapped (``src.datasets.index.selection``).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from mmengine.logging import print_log

from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.index import filters as record_filters, selection
from src.datasets.index.image_sizes import header_size, record_sizes
from src.datasets.sample.buckets import Buckets
from src.datasets.storage.latent_store import INFO_NAME as LATENT_INFO, read_sizes

MAX_ASPECT = 10.0  # upstream's asserts: 0.1 < w / h < 10


@dataclass(frozen=True)
class PictureSizes:
    """Where the records' picture sizes come from: ``read_image(image_file) -> bytes`` (None where
    the images are not reachable) for their headers, and the sizes a latent folder stored."""

    data_path: str
    image_key: str
    read_image: Callable[[str], bytes] | None
    latent_read: Callable[[str], bytes] | None
    latent_root: str | None

    def header_reader(self, view):
        """``i -> (width, height)`` of record ``i``'s image, or None where the images are not reachable."""
        if self.read_image is None:
            return None

        def read(i: int) -> tuple[int, int]:
            image_file = view[i].get(self.image_key)
            if not isinstance(image_file, str):
                raise SampleError('bad-record', f'record {i} has no image path')
            return header_size(self.read_image(image_file), image_file)
        return read

    def latent_sizes(self, view) -> np.ndarray | None:
        """The sizes a latent folder stored for the whole index (``tools/cache_latents.py``), if any."""
        if self.latent_root is None:
            return None
        whole = view.whole()
        return read_sizes(self.latent_read, self.latent_root, whole.content_digest(self.image_key), len(whole))

    def of(self, view, read=None) -> tuple[np.ndarray, np.ndarray]:
        """The (widths, heights) of ``view``'s records (NaN where unknown)."""
        return record_sizes(view, self.header_reader(view) if read is None else read, self.data_path,
                            self.latent_sizes(view))

    def latents_digest(self) -> str | None:
        """A digest of the latent folder's record (the sizes may come from there), or None."""
        if self.latent_root is None:
            return None
        with contextlib.suppress(SampleError, OSError):
            return hashlib.sha256(self.latent_read(os.path.join(self.latent_root, LATENT_INFO))).hexdigest()
        return None

    def table(self, view) -> tuple[str, np.ndarray]:
        """The picture sizes of ``view``'s records as a latent folder stores them: the index's
        image-path digest, and ``int32 [rows of the whole index, 2]`` (0 where unknown or not used)."""
        widths, heights = self.of(view)
        whole = view.whole()
        table = np.zeros((len(whole), 2), np.int32)
        known = (widths > 0) & (heights > 0)
        table[view.table_rows()[known]] = np.stack([widths[known], heights[known]], 1).astype(np.int32)
        return whole.content_digest(self.image_key), table


@dataclass(frozen=True)
class RecordRules:
    """What decides which records are kept, besides the index itself: the dataset's options."""

    data_path: str
    dataset: str  # the class, module.qualname
    image_key: str
    required_keys: tuple
    path_keys: tuple
    allow_outside_paths: bool
    min_image_size: int
    first: int | None  # train_number_samples
    filters: dict | None
    buckets: Buckets  # the table (square crops: the square table of one bucket)

    def key(self, sizes: PictureSizes) -> dict:
        """The selection's key: what decides which records are kept, besides the index itself."""
        key = dict(dataset=self.dataset, image_key=self.image_key, required=list(self.required_keys),
                   paths=list(self.path_keys), outside=self.allow_outside_paths, min_image_size=self.min_image_size,
                   max_aspect=MAX_ASPECT, first=self.first, buckets=self.buckets.record())
        if self.filters:
            key['filters'] = self.filters
        if self.buckets.placed:
            digest = sizes.latents_digest()
            if digest is not None:
                key['latents'] = digest
        return key


class DropLog:
    """Counts and logs each kind of drop among ``total`` records, keeping the messages."""

    def __init__(self, data_path: str, total: int):
        self.data_path, self.total, self.messages = data_path, total, []

    def __call__(self, mask: np.ndarray, what: str) -> int:
        count = int(mask.sum())
        if count:
            message = f'{count} of {self.total} records in {self.data_path} {what} (first: record #{int(np.argmax(mask))})'
            print_log(message, logger='current', level=logging.WARNING)
            self.messages.append(message)
        return count


def describe_drops(dropped: dict) -> str:
    return ', '.join(f'{count} {why}' for why, count in dropped.items() if count) or 'none'


def check_image_column(index, key: str, data_path: str) -> None:
    """Image paths must be text: a column of numbers, lists or objects is a wrong ``image_key``
    or a broken index, said here rather than as a TypeError inside a DataLoader worker."""
    kind = index.column_type(key)
    if kind is None or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return
    first = int(np.argmax(index.has_value(key)))
    raise IndexFormatError(f'{data_path}: the {key!r} field holds {kind} values (record #{first}: '
                           f'{index[first].get(key)!r}), not image paths. Is image_key right? '
                           f'The records have {index.columns}.')


@dataclass
class KeptRecords:
    index: object  # the view of the kept records
    bucket_ids: np.ndarray | None
    funnel: list


def keep_records(rules: RecordRules, index, sizes: PictureSizes, cap_keys: Sequence[str],
                 caption_of: Callable[[dict], str]) -> KeptRecords:
    """The kept records of ``index`` (its first ``rules.first``), decided now or mapped from the
    selection stored for the index and rules; the drops logged, and a dataset without a usable
    record refused."""
    if rules.first and 0 < rules.first < len(index):
        print_log(f'Using the first {rules.first} of the {len(index)} records of '
                  f'{rules.data_path} (train_number_samples)', logger='current', level=logging.INFO)
        index = index.select(np.arange(rules.first))
    whole = index.whole()
    folder = selection.folder_for(whole, rules.key(sizes)) if len(whole) == len(index) or rules.first else None
    with selection.stored(folder, len(index), len(rules.buckets) if rules.buckets.placed else 0) as kept:
        if kept is None:
            kept = select_records(rules, index, sizes, cap_keys, caption_of)
            selection.save(folder, kept)
        else:
            for message in kept.drops['messages']:
                print_log(message, logger='current', level=logging.WARNING)
    dropped = kept.drops['counts']
    count = kept.total if kept.rows is None else len(kept.rows)
    if count == 0:
        raise ValueError(f'{rules.data_path}: none of its {kept.total} records is usable '
                         f'(dropped: {describe_drops(dropped)})')
    print_log(f'Loaded {count} samples from {rules.data_path} '
              f'(dropped: {describe_drops(dropped)})', logger='current', level=logging.INFO)
    if kept.rows is None:
        view = index
    else:
        view = whole.select_stored(kept.rows) if isinstance(kept.rows, np.memmap) else index.select(kept.rows)
    return KeptRecords(view, kept.bucket_ids, kept.drops.get('funnel', []))


def select_records(rules: RecordRules, index, sizes: PictureSizes, cap_keys: Sequence[str],
                   caption_of: Callable[[dict], str]) -> selection.Selection:
    """Which records of ``index`` are kept (row numbers) and their buckets, each drop counted and logged."""
    total = len(index)
    log = DropLog(rules.data_path, total)
    keep, dropped = np.ones(total, dtype=bool), {}
    for key in rules.required_keys:
        check_image_column(index, key, rules.data_path)
        missing = keep & ~index.has_value(key)
        dropped[f'without {key!r}'] = log(missing, f'have no {key!r}')
        not_text = keep & ~missing & index.not_text(key)
        dropped[f'{key!r} not text'] = log(not_text, f'have a {key!r} that is not text')
        keep &= ~missing & ~not_text
    if not rules.allow_outside_paths:
        unsafe = np.zeros(total, dtype=bool)
        for key in dict.fromkeys((rules.image_key, *rules.required_keys, *rules.path_keys)):
            unsafe |= keep & index.unsafe_paths(key)
        dropped['unsafe path'] = log(
            unsafe, 'name an image or annotation path that is absolute or climbs out of its folder '
                    "with '..' (refused: set allow_outside_paths=True to read them)")
        keep &= ~unsafe
    if 'width' in index.columns and 'height' in index.columns:
        dropped.update(_size_drops(index, keep, rules.min_image_size, log))
    values = record_filters.RecordValues(index, sizes.of, cap_keys, lambda i: caption_of(index[i]))
    filtered, funnel = record_filters.apply(rules.filters, values, keep, log)
    dropped.update(filtered)
    assigned = None
    if rules.buckets.placed:  # the square table's one bucket takes every record, whatever its size
        assigned, drops = assign_buckets(rules.buckets, index, keep, sizes, log)
        dropped.update(drops)
        keep &= assigned >= 0
    rows = np.flatnonzero(keep)
    return selection.Selection(
        rows=index.table_rows()[rows] if len(rows) < total else None,
        bucket_ids=None if assigned is None else assigned[rows],
        drops={'counts': dropped, 'messages': log.messages, 'funnel': funnel}, total=total)


def _size_drops(index, keep: np.ndarray, min_image_size: int, log: DropLog) -> dict:
    """The records too small or too elongated by the index's width and height (dropped from ``keep``)."""
    width, height = index.numbers('width'), index.numbers('height')
    # NaN (size unknown) compares False everywhere: such records are checked when read.
    small = keep & ((width <= min_image_size) | (height <= min_image_size))
    with np.errstate(divide='ignore', invalid='ignore'):
        aspect = width / height
    bad_aspect = keep & ~small & ((aspect <= 1 / MAX_ASPECT) | (aspect >= MAX_ASPECT))
    drops = {'too small': log(small, f'are no larger than {min_image_size} px on a side'),
             'bad aspect': log(bad_aspect, f'have an aspect ratio outside (1/{MAX_ASPECT:g}, {MAX_ASPECT:g})')}
    keep &= ~small & ~bad_aspect
    return drops


def assign_buckets(buckets: Buckets, index, keep: np.ndarray, sizes: PictureSizes,
                   log: DropLog) -> tuple[np.ndarray, dict]:
    """The bucket of each record of ``index`` (-1: none, or not kept) and the drops, by reason."""
    rows = np.flatnonzero(keep)
    view = index.select(rows)
    read = sizes.header_reader(view)
    widths, heights = sizes.of(view, read)
    assigned = np.full(len(index), -1, np.int16)
    assigned[rows] = buckets.assign(widths, heights)
    no_size = keep & (assigned == -2)
    outside = keep & (assigned == -1)
    drops = {
        'without a size': log(
            no_size, 'have no size for their bucket: no width and height in the index, and their image '
                     'header unreadable' + ('' if read else ' or unreachable (no image_folder: give the '
                                            'index width and height, or cache the latents with '
                                            'tools/cache_latents.py, which stores them)')),
        'outside every bucket': log(
            outside, f'are more elongated than the buckets allow (max_aspect={buckets.max_aspect:g})'),
    }
    assigned[no_size | outside] = -1
    return assigned, drops
