"""``BlockShuffleSampler``: an opt-in shard-aware shuffle for datasets read from tar shards in a
bucket, in the spirit of Mosaic's ``py1e`` and webdataset's shard shuffle.

The global shuffle (mmengine's ``DefaultSampler``, the default) draws every sample from anywhere:
one ranged GET a sample. Here the indices are cut into blocks of ``block_size`` neighbours, and the
blocks, not the samples, are shuffled (by seed and epoch). The preparation tools list a shard's
members in their order in the index, so a block is a run of neighbouring members of one shard; with
``block_size`` a multiple of the batch size, a batch lies in one block, and the batch prefetch reads
its members with one coalesced ranged GET (``object_store.member_spans``).

Told the DataLoader's ``batch_size`` and ``num_workers``, the sampler deals whole blocks to the
workers (torch hands batch ``k`` of an epoch to worker ``k % num_workers``), so a worker reads a
block's batches one after another, and tells the dataset its blocks (``read_blocks``): the
worker's first batch of a block fetches the whole block with one GET, the next ones find their
bytes fetched (a block of 32 and batches of 8: a GET every 32 samples, not every 8).

The price is shuffle quality: a batch holds ``batch_size / block_size`` places of the data instead
of ``batch_size``. It is measured at construction against a global shuffle of the same size and
logged (:func:`shuffle_quality`): the mean distance between neighbours in the read order (a
fraction of the data; a global shuffle's is about 1/3) and the distinct regions a batch draws from.

Per epoch (``set_epoch``), each rank yields ``len()`` indices: blocks are dealt to the ranks in
turn, the order padded (from its start, as ``DefaultSampler``'s ``round_up``) to whole blocks for
every rank, so ranks never share a block.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.draws import Ahead
from src.datasets.storage.object_fetch import block_rest


def block_order(size: int, block_size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """All ``size`` indices, in blocks of ``block_size`` neighbours, the blocks in an order drawn by
    (``seed``, ``epoch``) (in order without ``shuffle``). A last, shorter block stays last, so
    that every other block starts at a multiple of ``block_size`` in the order (a batch of
    ``block_size`` is one block)."""
    whole, blocks = size // block_size, math.ceil(size / block_size)
    order = np.random.default_rng([seed, epoch]).permutation(whole) if shuffle else np.arange(whole)
    order = np.append(order, np.arange(whole, blocks))
    starts = order * block_size
    indices = (starts[:, None] + np.arange(block_size)[None, :]).ravel()
    return indices[indices < size]


def rank_share(order: np.ndarray, block_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s indices of ``order``: every ``world_size``-th chunk of ``block_size``, the
    order first padded from its start so that every rank gets as many chunks."""
    span = block_size * world_size
    total = math.ceil(len(order) / span) * span
    padded = np.resize(order, total)  # repeats from the start
    return padded.reshape(-1, world_size, block_size)[:, rank, :].ravel()


def worker_lanes(share: np.ndarray, block_size: int, batch_size: int, workers: int) -> np.ndarray:
    """``share`` (whole blocks of ``block_size``) reordered so that batch ``k`` of ``batch_size``
    comes from lane ``k % workers``, each lane reading its blocks (every ``workers``-th) whole and in
    turn: torch's DataLoader gives batch ``k`` to worker ``k % workers``, so each block is read by one
    worker. The same indices, a multiple of ``block_size`` long. Where the blocks do not divide
    among the workers, the last ones' batches go to the workers in turn (each fetching the rest of
    the block from its batch: a few requests and bytes more at an epoch's end)."""
    if workers <= 1 or block_size % batch_size:
        return share
    blocks = share.reshape(-1, block_size)
    lanes = [blocks[w::workers].reshape(-1, batch_size) for w in range(workers)]
    rounds = max(len(lane) for lane in lanes)
    batches = [lane[r] for r in range(rounds) for lane in lanes if r < len(lane)]
    return np.concatenate(batches) if batches else share


def next_blocks(order: np.ndarray, block_size: int, batch_size: int, workers: int) -> np.ndarray:
    """For each batch of ``order`` (batch ``k`` read by worker ``k % workers``, as torch deals them)
    that begins a run of one block in its worker: the number of the batch that begins that worker's
    next run, else -1. A run is the worker's batches that follow one another in the block (and so
    are fetched with the run's first, ``object_fetch.block_rest``)."""
    count = len(order) // batch_size
    batches = order[:count * batch_size].reshape(count, batch_size).astype(np.int64)
    following = np.full(count, -1)
    if not count or block_size % batch_size:
        return following
    inside = (np.diff(batches, axis=1) == 1).all(axis=1)  # a run of neighbours (block_rest's own condition)
    before = np.arange(count) - workers  # the same worker's batch before
    goes_on = np.zeros(count, dtype=bool)
    seen = before >= 0
    goes_on[seen] = (inside[seen] & inside[before[seen]] & (batches[seen, 0] == batches[before[seen], -1] + 1)
                     & (batches[seen, 0] // block_size == batches[before[seen], 0] // block_size))
    for worker in range(workers):
        starts = np.flatnonzero(~goes_on[worker::workers]) * workers + worker
        following[starts[:-1]] = starts[1:]
    return following


def shuffle_quality(order: np.ndarray, size: int, batch_size: int) -> tuple[float, float]:
    """(mean distance between neighbours of ``order``, as a fraction of ``size``; mean number of
    distinct regions of ``batch_size`` neighbouring indices that a batch of ``order`` draws from)."""
    if len(order) < 2:
        return 0.0, 1.0
    distance = float(np.abs(np.diff(order.astype(np.int64))).mean() / size)
    batches = len(order) // batch_size
    if not batches:
        return distance, 1.0
    regions = (order[:batches * batch_size] // batch_size).reshape(batches, batch_size)
    regions.sort(axis=1)
    distinct = float((1 + (np.diff(regions, axis=1) != 0).sum(axis=1)).mean())
    return distance, distinct


@DATA_SAMPLERS.register_module()
class BlockShuffleSampler(Sampler):
    """``dataset``; ``block_size``: neighbours read together (a multiple of the batch size, so a
    batch lies in one block); ``batch_size`` and ``num_workers``: the DataLoader's (0: the main
    process reads), to deal whole blocks to its workers, each fetching a block with one request
    (without ``num_workers``, a request a batch);
    ``shuffle``, ``seed`` (None: one drawn and shared by all ranks) as ``DefaultSampler``'s."""

    def __init__(self, dataset: Sized, block_size: int = 32, shuffle: bool = True, seed: Optional[int] = None,
                 batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> None:
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f'BlockShuffleSampler: block_size must be a positive int, got {block_size!r}')
        if batch_size and num_workers is not None and block_size % batch_size:
            raise ValueError(f'BlockShuffleSampler: block_size ({block_size}) must be a multiple of batch_size '
                             f'({batch_size}) to deal whole blocks to the workers')
        self.rank, self.world_size = get_dist_info()
        self.size, self.block_size, self.shuffle = len(dataset), block_size, shuffle
        self.batch_size, self.workers = batch_size or block_size, max(num_workers or 1, 1)
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        span = block_size * self.world_size
        self.num_samples = math.ceil(self.size / span) * block_size
        self.dealt = num_workers is not None and hasattr(dataset, 'read_blocks')  # each block read by one process:
        if self.dealt:
            dataset.read_blocks = block_size  # its first batch fetches the whole block
        if self.size:
            self._log_quality(self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        """This rank's indices of ``epoch``, in the order they are read."""
        order = block_order(self.size, self.block_size, self.seed, epoch, self.shuffle)
        share = rank_share(order, self.block_size, self.rank, self.world_size)
        return worker_lanes(share, self.block_size, self.batch_size, self.workers)

    def _log_quality(self, batch_size: int) -> None:
        blocks = shuffle_quality(self._order(0), self.size, batch_size)
        uniform = shuffle_quality(np.random.default_rng(self.seed).permutation(self.size), self.size, batch_size)
        print_log(f'BlockShuffleSampler: blocks of {self.block_size} neighbouring samples, shuffled; its shuffle '
                  f'quality against a global shuffle of the {self.size} samples: mean distance between neighbours '
                  f'{blocks[0]:.3f} of the data (global: {uniform[0]:.3f}), a batch of {batch_size} draws from '
                  f'{blocks[1]:.1f} places (global: {uniform[1]:.1f})', logger='current')

    def __iter__(self) -> Iterator[int]:
        """The epoch's indices; where blocks are dealt to workers, each run's first index is an
        ``Ahead`` naming the indices its worker reads next (its next run and the rest of that block),
        which the dataset fetches while the worker reads this run."""
        order = self._order(self.epoch)
        if not self.dealt:
            yield from order.tolist()
            return
        following = next_blocks(order, self.block_size, self.batch_size, self.workers)
        for number, batch in enumerate(order.reshape(-1, self.batch_size).tolist()):
            after = following[number]
            if after >= 0:
                start = after * self.batch_size
                first = order[start:start + self.batch_size]
                rest = block_rest(first, self.block_size, self.size)
                batch[0] = Ahead(batch[0], (*first.tolist(), *rest))
            yield from batch

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
