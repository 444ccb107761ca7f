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
every rank, so ranks never share a block. Since the batches depend on the ranks, the batch, the
workers and the block (the *deal*), a run resumed under another deal reads the rest of the
interrupted epoch once, in its own batches (``block_orders.Passes``).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.block_orders import (Deal, Passes, block_places, dealt, places_of, rank_length,
                                                unread_order)
from src.datasets.samplers.draws import Ahead, Draw
from src.datasets.storage.object_fetch import block_rest


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


CHUNK = 65536  # indices turned into draws at a time: an epoch of millions is not a list of millions


@DATA_SAMPLERS.register_module()
class BlockShuffleSampler(Sampler):
    """``dataset``; ``block_size``: neighbours read together (a multiple of the batch size, so a
    batch lies in one block); ``batch_size`` and ``num_workers``: the DataLoader's (0: the main
    process reads), to deal whole blocks to its workers, each fetching a block with one request
    (without ``num_workers``, a request a batch);
    ``shuffle``, ``seed`` (None: one drawn and shared by all ranks) as ``DefaultSampler``'s.

    Resumable in O(1) where the deal (ranks, batch, workers, block) is the checkpoint's
    (``epoch_of_batch``, ``resume_at``); under another deal (``set_deals``) the rest of the
    interrupted epoch is read once, in the new deal's batches."""

    def __init__(self, dataset: Sized, block_size: int = 32, shuffle: bool = True, seed: Optional[int] = None,
                 batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> None:
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f'BlockShuffleSampler: block_size must be a positive int, got {block_size!r}')
        if batch_size and num_workers is not None and block_size % batch_size:
            raise ValueError(f'BlockShuffleSampler: block_size ({block_size}) must be a multiple of batch_size '
                             f'({batch_size}) to deal whole blocks to the workers')
        self.rank, self.world_size = get_dist_info()
        self.size, self.block_size, self.shuffle = len(dataset), block_size, shuffle
        self.lane_batch = batch_size or block_size  # the batch the workers' lanes are laid in
        self.batch_size = self.lane_batch  # the DataLoader's, once a loop tells it (set_deals)
        self.workers = max(num_workers or 1, 1)
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch, self._skip, self.deals, self._passes, self._passes_of = 0, 0, None, None, None
        self.dealt = num_workers is not None and hasattr(dataset, 'read_blocks')  # each block read by one process:
        if self.dealt:
            dataset.read_blocks = block_size  # its first batch fetches the whole block
        if self.size:
            self._log_quality(self.batch_size)

    @property
    def deal(self) -> Deal:
        return Deal(self.world_size, self.batch_size, self.workers, self.block_size, self.lane_batch)

    def passes(self) -> Passes:
        """The epochs as this run's deals read them (made again when the seed or the deals change)."""
        deals = self.deals or [[0, *self.deal]]
        if self._passes_of != (self.seed, deals):
            self._passes, self._passes_of = Passes(self.size, self.seed, self.shuffle, deals), (self.seed, deals)
        return self._passes

    def set_deals(self, iteration: int, saved: list | None, batch_size: int) -> tuple[list, str]:
        """Go on after ``iteration`` global batches read under the ``saved`` deals (a checkpoint's
        ``[iteration, world size, batch size, ...]`` entries; missing fields are this run's), the
        DataLoader's ``batch_size`` now: the deals to save, and a note when this one is new."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f'BlockShuffleSampler: the DataLoader\'s batch size must be a positive int, '
                             f'got {batch_size!r}')
        self.batch_size = batch_size
        now = list(self.deal)
        deals = [[int(entry[0]), *entry[1:], *now[len(entry) - 1:]] for entry in saved or [] if entry[0] <= iteration]
        room = max(4 * self.size, 1 << 16)  # a deal's epoch is padded to ranks x block: replayed, it is made
        if any(entry[1] * entry[4] > room for entry in deals):
            raise ValueError(f'BlockShuffleSampler: the checkpoint\'s deals {deals[:3]}... have more ranks x block '
                             f'than {room} for {self.size} samples: not a deal of this dataset')
        deals = deals or [[0, *now]]
        note = ''
        if deals[-1][1:] != now:
            note = (f'BlockShuffleSampler dealt as {Deal(*now).describe()} instead of '
                    f'{Deal(*deals[-1][1:]).describe()}: the rest of the interrupted epoch is read once, in '
                    'other batches')
            deals = [entry for entry in deals if entry[0] < iteration] + [[iteration, *now]]
        self.deals = deals
        return deals, note

    def _order(self, epoch: int, read: np.ndarray | None = None) -> np.ndarray:
        """This rank's indices of ``epoch`` (those not in ``read``), in the order they are read."""
        order = unread_order(self.size, self.block_size, self.seed, epoch, self.shuffle, read)
        return dealt(order, self.deal, self.rank)

    def _log_quality(self, batch_size: int) -> None:
        blocks = shuffle_quality(self._order(0), self.size, batch_size)
        uniform = shuffle_quality(np.random.default_rng(self.seed).permutation(self.size), self.size, batch_size)
        print_log(f'BlockShuffleSampler: blocks of {self.block_size} neighbouring samples, shuffled; its shuffle '
                  f'quality against a global shuffle of the {self.size} samples: mean distance between neighbours '
                  f'{blocks[0]:.3f} of the data (global: {uniform[0]:.3f}), a batch of {batch_size} draws from '
                  f'{blocks[1]:.1f} places (global: {uniform[1]:.1f})', logger='current')

    def _part(self, epoch: int):
        """What this deal reads of ``epoch``: its part of the replayed passes, or the whole epoch."""
        part = self.passes().part(epoch)
        return part if part.deal == self.deal else None

    def __iter__(self) -> Iterator[Draw]:
        """The epoch's indices as draws keyed on their place in the epoch's block order; where blocks
        are dealt to workers, each run's first index is an ``Ahead`` naming the indices its worker
        reads next (its next run and the rest of that block), fetched while the worker reads this run."""
        skip, self._skip = self._skip, 0
        if not self.size:
            return
        epoch, passes = self.epoch, self.passes()
        part = self._part(epoch)
        start = passes.epoch_start(epoch)
        read, first = (part.read, part.first) if part else (None, start)
        position = part.position if part else start * self.world_size * self.batch_size  # (a past epoch)
        skip -= first - start  # batches of the epoch read under the deals before
        order = self._order(epoch, read)
        where = block_places(self.size, self.block_size, self.seed, epoch, self.shuffle)
        following = next_blocks(order, self.block_size, self.lane_batch, self.workers) if self.dealt else None
        world_batch, mine, lane = self.world_size * self.batch_size, self.rank * self.batch_size, self.lane_batch
        for begin in range(max(skip, 0) * self.batch_size, len(order), CHUNK):  # a chunk's lists at a time
            indices = order[begin:begin + CHUNK]
            for number, index, place in zip(range(begin, len(order)), indices.tolist(),
                                            places_of(indices, where, self.block_size).tolist()):
                step, within = divmod(number, self.batch_size)
                if following is not None and not number % lane:
                    index = self._hint(order, following, number, index)
                yield Draw(index, position + step * world_batch + mine + within, self.seed, epoch, (epoch, place))

    def _hint(self, order: np.ndarray, following: np.ndarray, number: int, index: int) -> int:
        """``index``, first of a batch at ``number`` of ``order``, as an ``Ahead`` where it begins a
        run of its worker's batches in a block (``following``: :func:`next_blocks`)."""
        batch = number // self.lane_batch
        if batch >= len(following) or following[batch] < 0:
            return index
        start = int(following[batch]) * self.lane_batch
        first = order[start:start + self.lane_batch]
        return Ahead(index, (*first.tolist(), *block_rest(first, self.block_size, self.size)))

    def __len__(self) -> int:
        """This rank's indices of the epoch set by ``set_epoch`` (what is left of it under a new deal)."""
        if not self.size:
            return 0
        part = self._part(self.epoch)
        return rank_length(self.size if part is None else part.count, self.deal)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_before(self, epoch: int) -> int:
        """Global batches (steps) in the epochs before ``epoch``."""
        return self.passes().epoch_start(epoch) if self.size else 0

    def epoch_of_batch(self, number: int) -> tuple[int, int]:
        """Global batch ``number``'s epoch, and the batches of that epoch before it."""
        if not self.size:
            return 0, 0
        epoch = self.passes().epoch_of(number)
        return epoch, number - self.batches_before(epoch)

    def resume_at(self, batches: int) -> None:
        """Let the next iteration skip the first ``batches`` batches of its epoch, as if they had been drawn."""
        self._skip = batches
