"""Duplicate clusters of a dataset's pictures, as an index column (``dup_cluster``) that
``filters=dict(dedup=True)`` keeps one record of.

Exact duplicates share the SHA-256 of their bytes; near duplicates (the same picture re-encoded,
resized or slightly recompressed) a perceptual hash (``imagehash``'s pHash, 64 bits) within
``max_distance`` bits. Near pairs are found without comparing every pair: split in
``max_distance + 1`` bands, two hashes that close agree on at least one band (pigeonhole), so only
records sharing a band value are compared. Clusters are the connected groups (union-find); each is
named by its first record's row, and a record in no cluster has no value.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.extras import require
from src.datasets.progress import tqdm
from src.datasets.storage.files import link_outside
from src.datasets.index.filters import CLUSTER_COLUMN
from src.datasets.storage.images import open_image
from src.datasets.storage.atomic import atomic_write
from src.prepare.columns import JoinReport, join_columns

MAX_DISTANCE = 4  # bits of 64: re-encodings and small resizes stay within it (0-2 bits), other pictures do not
THREADS = 8
BAND_GROUP_LIMIT = 1000  # records sharing a band value compared at most (a flat colour's crowd)


@dataclass
class DuplicateReport:
    records: int
    unreadable: int
    exact: int  # records that repeat an earlier one's bytes
    near: int  # records clustered with another by their perceptual hash only
    clusters: int
    join: JoinReport | None = None

    def summary(self) -> str:
        return (f'{self.records} pictures hashed ({self.unreadable} unreadable): {self.exact} exact and {self.near} '
                f'near duplicates in {self.clusters} clusters; filters=dict(dedup=True) keeps one record of each')


class _Clusters:
    """Union-find over record numbers."""

    def __init__(self, count: int):
        self.parent = np.arange(count)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the first record names the cluster


def picture_hashes(data: bytes, name: str) -> tuple[bytes, int]:
    """(SHA-256 of the bytes, 64-bit pHash of the picture); ``SampleError`` if it cannot be decoded."""
    imagehash = require('imagehash')
    image = open_image(data, name)
    try:
        bits = imagehash.phash(image.convert('RGB')).hash.flatten()
    except (OSError, ValueError) as err:
        raise SampleError('bad-image', f'{name}: {err}') from None
    return hashlib.sha256(data).digest(), int(np.packbits(bits).view('>u8')[0])


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.astype('>u8').view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def clusters_of(digests: list, phashes: np.ndarray, max_distance: int = MAX_DISTANCE) -> tuple[np.ndarray, int, int]:
    """Per record, its cluster (the first member's number; -1 alone), and the exact and near
    duplicate counts. ``digests[i]`` None: an unreadable picture, in no cluster."""
    count = len(digests)
    clusters = _Clusters(count)
    first_of = {}
    exact = 0
    for i, digest in enumerate(digests):
        if digest is None:
            continue
        if digest in first_of:
            clusters.union(first_of[digest], i)
            exact += 1
        else:
            first_of[digest] = i
    readable = np.array([digest is not None for digest in digests], dtype=bool)
    rows = np.flatnonzero(readable)
    hashes = phashes[rows].astype(np.uint64)
    bands = max_distance + 1
    width = 64 // bands
    for band in range(bands):
        shift = np.uint64(band * width)
        mask = np.uint64((1 << (64 - band * width if band == bands - 1 else width)) - 1)
        values = (hashes >> shift) & mask
        order = np.argsort(values, kind='stable')
        sorted_values = values[order]
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            group = order[start:min(end, start + BAND_GROUP_LIMIT)]
            for k, member in enumerate(group[:-1]):
                others = group[k + 1:]
                close = others[_popcount(hashes[others] ^ hashes[member]) <= max_distance]
                for other in close:
                    clusters.union(int(rows[member]), int(rows[other]))
    roots = np.array([clusters.find(i) for i in range(count)])
    sizes = np.bincount(roots, minlength=count)
    cluster = np.where(sizes[roots] > 1, roots, -1)
    clustered = int((cluster >= 0).sum() - (sizes > 1).sum())  # records beyond each cluster's first
    return cluster, exact, clustered - exact


def find_duplicates(dataset, max_distance: int = MAX_DISTANCE, threads: int = THREADS) -> DuplicateReport:
    """Hash every picture of ``dataset`` (through its own reader: files, tar shards or objects) and
    join the clusters into its index as ``dup_cluster``."""
    require('imagehash')
    index = dataset.index
    files = [index[i][dataset.image_key] for i in range(len(index))]

    def hashes(image_file: str):
        try:
            return picture_hashes(dataset.read_image(image_file), image_file)
        except SampleError:
            return None, 0

    with ThreadPoolExecutor(threads) as pool:
        results = list(tqdm(pool.map(hashes, files), total=len(files), unit='image',
                            desc=f'hashing the pictures of {dataset.data_path}'))
    digests = [digest for digest, _ in results]
    phashes = np.array([phash for _, phash in results], dtype=np.uint64)
    cluster, exact, near = clusters_of(digests, phashes, max_distance)
    report = DuplicateReport(records=len(files), unreadable=sum(d is None for d in digests), exact=exact, near=near,
                             clusters=len(set(cluster[cluster >= 0].tolist())))
    in_cluster = cluster >= 0
    kept = {}  # one row per image path (a path listed twice is its own exact duplicate)
    for i in np.flatnonzero(in_cluster):
        kept.setdefault(files[i], int(index.table_row(int(cluster[i]))))
    table = pa.table({'image': pa.array(list(kept), pa.string()),
                      CLUSTER_COLUMN: pa.array(list(kept.values()), pa.int64())})
    scores = f'{dataset.data_path}.dup_cluster.parquet'
    folder = os.path.dirname(os.path.abspath(dataset.data_path))
    if link_outside(scores, folder):  # a link planted by the download: never written through
        raise IndexFormatError(f'{scores}: a symbolic link out of {folder}: refused (remove it)')
    with atomic_write(scores, 'wb') as f:  # a rename: replaces a link inside the folder, never follows it
        pq.write_table(table, f)
    report.join = join_columns(dataset.data_path, scores, 'image', image_key=dataset.image_key,
                               cache_dir=dataset.index_cache_dir)
    return report


def without_dedup(node) -> None:
    """Take ``dedup`` out of every dataset's filters under the config ``node`` (in place): the
    datasets are built to compute the column that filter needs."""
    if isinstance(node, dict):
        filters = node.get('filters')
        if isinstance(filters, dict):
            filters.pop('dedup', None)
        for value in node.values():
            without_dedup(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            without_dedup(value)
