"""``BucketSampler``: batches of one aspect-ratio bucket, the same bucket on every rank at every step.

The records of a bucketed dataset (``CaptionDataset(buckets=...)``, its ``bucket_ids``) are grouped
by bucket. Each bucket is an endless stream: its records in a seeded permutation per pass
(``seed``, bucket, pass), pass after pass. A *global* batch takes the next ``G = batch_size x
world_size`` positions of one bucket's stream, and rank ``r`` its ``r``-th slice of
``batch_size``: every rank is in the same bucket at every step, and no record is read twice by
two ranks in one pass.

Epochs. Epoch ``e`` holds the global batches that its pass of each bucket *completes*: bucket
``b`` (``n_b`` records) gives ``floor((e + 1) n_b / G) - floor(e n_b / G)`` batches in epoch ``e``.
What is left of a pass when its last batch cannot be filled is carried into the next epoch and
completes that epoch's first batch of the bucket: no record is dropped, and each is read once per
pass. Every epoch's length is known in advance (the first's is logged at construction with each
bucket's count; later ones differ by at most one batch a bucket), and the same on every rank.
The batches of an epoch are visited in an order shuffled by (``seed``, epoch), so that buckets are
drawn in proportion to their size. A bucket smaller than a global batch completes a batch only
every few epochs, and that batch holds some records more than once; such buckets are named in a
warning at construction (merge them away with the buckets' ``max_aspect``, or a smaller batch).
A batch size no bucket can fill is an error at construction.

An iteration of ``BucketSampler`` yields one epoch, the one set by ``set_epoch`` (``len()``
indices, then it ends), so that epoch-based loops end their epochs and every rank ends each on the
same step; the bucket streams run on across epochs, so what an epoch leaves is still carried. Each
index is a ``Draw`` carrying its position in the global stream (global batch ``t``'s positions are
``t G`` to ``(t + 1) G - 1``, rank ``r`` holding ``r b`` to ``(r + 1) b - 1`` of them) and, as the
key of its randomness (crop, flip, caption dropout), its place in its bucket's stream: (source,
bucket, pass, slot in the pass's permutation). That place does not depend on how records are
batched, so a record drawn at it gets the same crop and dropout on any number of ranks, and also
after a resume with another global batch.

Resume: the position after ``t`` global batches is computed, not replayed (:meth:`epoch_of_batch`
and :meth:`resume_at`): the epoch by a binary search over the closed form above, the bucket's pass
by division. Everything depends on the seed and the global batch, never on the number of
DataLoader workers, nor on how the global batch is split into ranks. A resume with another global
batch starts a new :class:`Origin` (:meth:`BucketBatches.rebased`): each bucket's stream goes on
from the position it reached, and the epoch the change falls in ends where its passes do.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.draws import Draw, keyed, placed


def bucket_ids_of(dataset: Sized) -> tuple[np.ndarray, list[str]]:
    """The bucket of every index of ``dataset`` and the buckets' names: a bucketed dataset's own,
    or a ConcatDataset's parts' (a bucket of each part kept apart: a batch holds one dataset's
    samples, whatever their shapes)."""
    parts = getattr(dataset, 'datasets', None) if hasattr(dataset, 'cumulative_sizes') else None
    ids, names = [], []
    for number, part in enumerate(parts if parts is not None else [dataset]):
        part_ids = getattr(part, 'bucket_ids', None)
        if part_ids is None:
            raise ValueError(f'BucketSampler: {type(part).__name__} '
                             f'{getattr(part, "data_path", "")} has no buckets: give it buckets=dict(...)')
        prefix = f'{number}:' if parts is not None else ''
        ids.append(part_ids.astype(np.int64) + len(names))
        names += [prefix + part.buckets.key(b) for b in range(len(part.buckets))]
    return np.concatenate(ids), names


@dataclass(frozen=True)
class Origin:
    """Where a stream of global batches of one size starts: global batch ``batch`` (in ``epoch``,
    whose first ``done`` batches came before), each bucket having given ``consumed`` positions of its
    stream, at ``position`` of the global sample stream. A run's start is all zeros; a resume with
    another global batch starts a new one (:meth:`BucketBatches.rebased`)."""

    batch: int = 0
    epoch: int = 0
    done: int = 0
    consumed: tuple = ()
    position: int = 0


class BucketBatches:
    """The endless sequence of global batches of bucketed records, and this rank's share of each;
    see the module. ``offset`` is added to every index (a source's place in a ConcatDataset)."""

    def __init__(self, bucket_ids: np.ndarray, names: list[str], batch_size: int, rank: int, world_size: int,
                 seed: int, shuffle: bool = True, offset: int = 0, what: str = 'BucketSampler',
                 require_full: bool = True, source: int = 0):
        self.seed, self.shuffle, self.offset, self.what = seed, shuffle, offset, what
        self.source = source  # the first part of a draw's randomness key (a mix's source number)
        order = np.argsort(bucket_ids, kind='stable')
        present, starts, counts = np.unique(bucket_ids[order], return_index=True, return_counts=True)
        self.members = order.astype(np.int32 if len(order) < 2 ** 31 else np.int64)
        self.buckets = present.astype(np.int64)  # the ids of the buckets holding records
        self.names = [names[b] for b in self.buckets]
        self.starts, self.counts = starts.astype(np.int64), counts.astype(np.int64)
        self.require_full = require_full
        self._passes = {}  # bucket position -> {pass: permutation}, the last two passes
        self._split(batch_size, rank, world_size, Origin(consumed=(0,) * len(self.counts)))

    def _split(self, batch_size: int, rank: int, world_size: int, origin: Origin) -> None:
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.origin, self._consumed = origin, np.asarray(origin.consumed, np.int64)
        self._epoch_cache = (None, None, None)
        if self.require_full and (not len(self.counts) or self.counts.max() < self.global_batch):
            raise ValueError(f'{self.what}: a global batch of {self.global_batch} (batch_size {batch_size} x '
                             f'{world_size} ranks) is more than any bucket holds (the largest: '
                             f'{int(self.counts.max()) if len(self.counts) else 0} records): use a smaller batch_size')

    # ---- the closed form -------------------------------------------------------------------------
    def _after(self, epoch: int) -> np.ndarray:
        """Per bucket: its batches from the origin to the start of ``epoch`` (at or after the origin's)."""
        if epoch <= self.origin.epoch:
            return np.zeros(len(self.counts), np.int64)
        return (epoch * self.counts - self._consumed) // self.global_batch

    def batches_before(self, epoch: int) -> int:
        """Global batches in the epochs before ``epoch``."""
        if epoch < self.origin.epoch:
            raise ValueError(f'{self.what}: epoch {epoch} is before this run\'s start (epoch {self.origin.epoch})')
        if epoch == self.origin.epoch:
            return self.origin.batch - self.origin.done
        return self.origin.batch + int(self._after(epoch).sum())

    def _first_from_origin(self, epoch: int) -> int:
        """The number of epoch ``epoch``'s first batch made by this stream (the origin's, in its epoch)."""
        return self.origin.batch if epoch == self.origin.epoch else self.batches_before(epoch)

    def epoch_length(self, epoch: int) -> int:
        return self.batches_before(epoch + 1) - self.batches_before(epoch)

    def epoch_of(self, batch: int) -> int:
        """The epoch that global batch number ``batch`` falls in."""
        low = self.origin.epoch
        high = low + (batch - self.origin.batch + len(self.counts)) * self.global_batch // int(self.counts.sum()) + 2
        while low < high:  # the last epoch e with batches_before(e) <= batch
            middle = (low + high + 1) // 2
            if self.batches_before(middle) <= batch:
                low = middle
            else:
                high = middle - 1
        return low

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s batches from the origin on, in order: their bucket positions and each
        one's batch number within its bucket's stream (counted from the origin)."""
        if self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        first = self._after(epoch)
        per_bucket = self._after(epoch + 1) - first  # the origin's epoch: what is left of it
        buckets = np.repeat(np.arange(len(self.counts)), per_bucket)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch] + ([self.origin.batch] if self.origin.batch else [])
                                  ).shuffle(buckets)
        # The k-th batch of a bucket in this epoch is its stream's batch first[b] + k.
        by_bucket = np.argsort(buckets, kind='stable')
        grouped = buckets[by_bucket]
        ranks = np.empty(len(buckets), np.int64)
        ranks[by_bucket] = first[grouped] + np.arange(len(buckets)) - np.searchsorted(grouped, grouped)
        self._epoch_cache = (epoch, buckets, ranks)
        return buckets, ranks

    # ---- indices -----------------------------------------------------------------------------------
    def _permutation(self, bucket: int, number: int) -> np.ndarray:
        passes = self._passes.setdefault(bucket, {})
        if number not in passes:
            records = self.members[self.starts[bucket]:self.starts[bucket] + self.counts[bucket]]
            if self.shuffle:
                records = np.random.default_rng([self.seed, int(self.buckets[bucket]), number]).permutation(records)
            passes[number] = records
            for old in [p for p in passes if p < number - 1]:
                del passes[old]
        return passes[number]

    def rank_batch(self, bucket: int, stream_batch: int) -> list[Draw]:
        """This rank's indices of the ``stream_batch``-th global batch (from the origin) of bucket
        position ``bucket``, each keyed on its place in the bucket's stream (see the module)."""
        count, name = int(self.counts[bucket]), int(self.buckets[bucket])
        first = int(self._consumed[bucket]) + stream_batch * self.global_batch + self.rank * self.batch_size
        indices = []
        for position in range(first, first + self.batch_size):
            number, at = divmod(position, count)
            indices.append(keyed(int(self._permutation(bucket, number)[at]) + self.offset,
                                 ('b', self.source, name, number, at)))
        return indices

    def position_of(self, number: int) -> int:
        """The global stream position of this rank's first sample of global batch ``number``."""
        return self.origin.position + (number - self.origin.batch) * self.global_batch + self.rank * self.batch_size

    def draws(self, indices: list[int], number: int, seed: int, epoch: int) -> list[Draw]:
        """This rank's ``indices`` of global batch ``number`` as draws at their global positions
        (each keeping its randomness key)."""
        first = self.position_of(number)
        return [placed(index, first + k, seed, epoch) for k, index in enumerate(indices)]

    def epoch_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[int, list[int]]]:
        """Epoch ``epoch``'s global batches after its first ``skip``: (number from the start, this
        rank's indices)."""
        start = self._first_from_origin(epoch)
        skip -= start - self.batches_before(epoch)  # the origin's epoch: batches made before it
        buckets, stream_batches = self._epoch(epoch)
        for at, (bucket, stream_batch) in enumerate(zip(buckets[skip:].tolist(), stream_batches[skip:].tolist())):
            yield start + skip + at, self.rank_batch(bucket, stream_batch)

    def batch(self, number: int) -> tuple[int, list[int]]:
        """Global batch ``number`` (counted from the start): its bucket position and this rank's indices."""
        epoch = self.epoch_of(number)
        buckets, ranks = self._epoch(epoch)
        at = number - self._first_from_origin(epoch)
        return int(buckets[at]), self.rank_batch(int(buckets[at]), int(ranks[at]))

    def iter_from(self, number: int) -> Iterator[list[int]]:
        """This rank's batches from global batch ``number`` on, endlessly."""
        while True:
            yield self.batch(number)[1]
            number += 1

    # ---- another global batch ----------------------------------------------------------------------
    def origin_at(self, number: int) -> Origin:
        """Where the streams stand before global batch ``number``: computed, O(buckets + epoch length)."""
        epoch = self.epoch_of(number)
        buckets, _ = self._epoch(epoch)
        made = np.bincount(buckets[:number - self._first_from_origin(epoch)], minlength=len(self.counts))
        consumed = self._consumed + (self._after(epoch) + made) * self.global_batch
        return Origin(number, epoch, number - self.batches_before(epoch), tuple(int(c) for c in consumed),
                      self.origin.position + (number - self.origin.batch) * self.global_batch)

    def rebased(self, number: int, batch_size: int, rank: int, world_size: int) -> 'BucketBatches':
        """These streams going on from global batch ``number`` with another global batch: each
        bucket from the position it reached, so every record of a pass is read once across the change."""
        other = copy.copy(self)
        other._split(batch_size, rank, world_size, self.origin_at(number))
        return other

    def with_history(self, history: list, batch_size: int, rank: int, world_size: int) -> 'BucketBatches':
        """These streams after the global batch changes of ``history`` (``[batch, global batch]``
        pairs from the run's start, as ``ResumableTrainLoop`` records them), split ``batch_size`` x
        ``world_size`` (the last global batch)."""
        batches = copy.copy(self)
        batches._split(history[0][1], 0, 1, self.origin)
        for number, size in history[1:]:
            batches = batches.rebased(number, size, 0, 1)
        batches._split(batch_size, rank, world_size, batches.origin)
        return batches

    # ---- what a person reads -----------------------------------------------------------------------
    def describe(self) -> str:
        global_batch = self.global_batch
        lines = [f'{self.what}: {int(self.counts.sum())} records in {len(self.counts)} buckets, global batch '
                 f'{global_batch} ({self.batch_size} x {self.world_size} ranks): an epoch is '
                 f'{self.epoch_length(0)} batches a rank (later epochs differ by at most one a bucket, as carried '
                 'records complete batches); per bucket: records, batches in epoch 0, records carried']
        for name, count in zip(self.names, self.counts):
            lines.append(f'  {name:>12}: {int(count):>9} records, {int(count) // global_batch:>6} batches, '
                         f'{int(count) % global_batch:>5} carried')
        return '\n'.join(lines)

    def small_buckets(self) -> list[str]:
        return [f'{name} ({int(count)})' for name, count in zip(self.names, self.counts) if count < self.global_batch]


@DATA_SAMPLERS.register_module()
class BucketSampler(Sampler):
    """``batch_size`` (per rank), ``shuffle``, ``seed`` (None: one drawn and shared by all ranks),
    over a bucketed ``dataset``; yields indices so that every ``batch_size`` consecutive ones are
    one batch of one bucket (use the DataLoader's ``batch_size`` equal to it). See the module."""

    def __init__(self, dataset: Sized, batch_size: int, shuffle: bool = True, seed: Optional[int] = None) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f'BucketSampler: batch_size must be a positive int, got {batch_size!r}')
        self.rank, self.world_size = get_dist_info()
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed = sync_random_seed() if seed is None else seed
        ids, names = bucket_ids_of(dataset)
        self._ids, self._names = ids, names
        self.epoch, self._skip, self.history = 0, 0, None
        self.batches = self._batches()
        print_log(self.batches.describe(), logger='current', level=logging.INFO)
        small = self.batches.small_buckets()
        if small:
            print_log(f'BucketSampler: {len(small)} buckets hold fewer records than a global batch of '
                      f'{self.batches.global_batch}: each completes a batch only every few epochs, with records repeated '
                      f'in it: {", ".join(small)}', logger='current', level=logging.WARNING)

    def _batches(self) -> BucketBatches:
        batches = BucketBatches(self._ids, self._names, self.batch_size, self.rank, self.world_size, self.seed,
                                self.shuffle)
        return batches.with_history(self.history, self.batch_size, self.rank, self.world_size) if self.history \
            else batches

    def set_history(self, history: list) -> None:
        """Go on after the global batch changes of ``history`` (``[batch, global batch]`` pairs,
        the first ``[0, G]``): each bucket from where its stream stood at each change."""
        self.history = [list(entry[:2]) for entry in history]
        self.batches = self._batches()

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        if hasattr(self, '_ids'):  # a resumed run restores the checkpoint's seed: the stream follows it
            self.batches = self._batches()

    def __len__(self) -> int:
        """The indices of this rank's share of the epoch set by ``set_epoch``."""
        return self.batches.epoch_length(self.epoch) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields (mmengine's loops call it before each)."""
        self.epoch = epoch

    def batches_before(self, epoch: int) -> int:
        """Global batches (steps) in the epochs before ``epoch``."""
        return self.batches.batches_before(epoch)

    def epoch_of_batch(self, number: int) -> tuple[int, int]:
        """Where global batch ``number`` (counted from the start) stands: its epoch, and the batches
        of that epoch before it."""
        epoch = self.batches.epoch_of(number)
        return epoch, number - self.batches.batches_before(epoch)

    def resume_at(self, batches: int) -> None:
        """Let the next iteration skip the first ``batches`` batches of its epoch, as if they had been drawn."""
        self._skip = batches

    def __iter__(self) -> Iterator[Draw]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        for number, indices in self.batches.epoch_batches(epoch, skip):
            yield from self.batches.draws(indices, number, self.seed, epoch)
