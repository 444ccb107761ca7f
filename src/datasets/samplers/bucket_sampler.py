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
index is a ``Draw`` carrying its position in the global stream: global batch ``t``'s positions are
``t G`` to ``(t + 1) G - 1``, rank ``r`` holding ``r b`` to ``(r + 1) b - 1`` of them, so that a
record's position (and so its crop and caption dropout) depends on ``G`` only, not on how many
ranks share it.

Resume: the position after ``t`` global batches is computed, not replayed (:meth:`epoch_of_batch`
and :meth:`resume_at`): the epoch by a binary search over the closed form above, the bucket's pass
by division. Everything depends on the seed and the global batch, never on the number of
DataLoader workers, nor on how the global batch is split into ranks.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.draws import Draw


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


class BucketBatches:
    """The endless sequence of global batches of bucketed records, and this rank's share of each;
    see the module. ``offset`` is added to every index (a source's place in a ConcatDataset)."""

    def __init__(self, bucket_ids: np.ndarray, names: list[str], batch_size: int, rank: int, world_size: int,
                 seed: int, shuffle: bool = True, offset: int = 0, what: str = 'BucketSampler',
                 require_full: bool = True):
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.seed, self.shuffle, self.offset, self.what = seed, shuffle, offset, what
        order = np.argsort(bucket_ids, kind='stable')
        present, starts, counts = np.unique(bucket_ids[order], return_index=True, return_counts=True)
        self.members = order.astype(np.int32 if len(order) < 2 ** 31 else np.int64)
        self.buckets = present.astype(np.int64)  # the ids of the buckets holding records
        self.names = [names[b] for b in self.buckets]
        self.starts, self.counts = starts.astype(np.int64), counts.astype(np.int64)
        if require_full and (not len(self.counts) or self.counts.max() < self.global_batch):
            raise ValueError(f'{what}: a global batch of {self.global_batch} (batch_size {batch_size} x {world_size} '
                             f'ranks) is more than any bucket holds (the largest: '
                             f'{int(self.counts.max()) if len(self.counts) else 0} records): use a smaller batch_size')
        self._passes = {}  # bucket position -> {pass: permutation}, the last two passes
        self._epoch_cache = (None, None, None)

    # ---- the closed form -------------------------------------------------------------------------
    def batches_before(self, epoch: int) -> int:
        """Global batches in the epochs before ``epoch``."""
        return int((epoch * self.counts // self.global_batch).sum())

    def epoch_length(self, epoch: int) -> int:
        return self.batches_before(epoch + 1) - self.batches_before(epoch)

    def epoch_of(self, batch: int) -> int:
        """The epoch that global batch number ``batch`` falls in."""
        low, high = 0, (batch + len(self.counts)) * self.global_batch // int(self.counts.sum()) + 2
        while low < high:  # the last epoch e with batches_before(e) <= batch
            middle = (low + high + 1) // 2
            if self.batches_before(middle) <= batch:
                low = middle
            else:
                high = middle - 1
        return low

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s batches in order: their bucket positions and each one's batch number
        within its bucket's stream."""
        if self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        first = epoch * self.counts // self.global_batch
        per_bucket = (epoch + 1) * self.counts // self.global_batch - first
        buckets = np.repeat(np.arange(len(self.counts)), per_bucket)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(buckets)
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

    def rank_batch(self, bucket: int, stream_batch: int) -> list[int]:
        """This rank's indices of global batch ``stream_batch`` of bucket position ``bucket``."""
        count = int(self.counts[bucket])
        first = stream_batch * self.global_batch + self.rank * self.batch_size
        indices = []
        for position in range(first, first + self.batch_size):
            number, at = divmod(position, count)
            indices.append(int(self._permutation(bucket, number)[at]) + self.offset)
        return indices

    def draws(self, indices: list[int], number: int, seed: int, epoch: int) -> list[Draw]:
        """This rank's ``indices`` of global batch ``number`` as draws at their global positions."""
        first = number * self.global_batch + self.rank * self.batch_size
        return [Draw(index, first + k, seed, epoch) for k, index in enumerate(indices)]

    def epoch_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[int, list[int]]]:
        """Epoch ``epoch``'s global batches after its first ``skip``: (number from the start, this
        rank's indices)."""
        first = self.batches_before(epoch) + skip
        buckets, stream_batches = self._epoch(epoch)
        for at, (bucket, stream_batch) in enumerate(zip(buckets[skip:].tolist(), stream_batches[skip:].tolist())):
            yield first + at, self.rank_batch(bucket, stream_batch)

    def batch(self, number: int) -> tuple[int, list[int]]:
        """Global batch ``number`` (counted from the start): its bucket position and this rank's indices."""
        epoch = self.epoch_of(number)
        buckets, ranks = self._epoch(epoch)
        at = number - self.batches_before(epoch)
        return int(buckets[at]), self.rank_batch(int(buckets[at]), int(ranks[at]))

    def iter_from(self, number: int) -> Iterator[list[int]]:
        """This rank's batches from global batch ``number`` on, endlessly."""
        while True:
            yield self.batch(number)[1]
            number += 1

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
        self.epoch, self._skip = 0, 0
        self.batches = self._batches()
        print_log(self.batches.describe(), logger='current', level=logging.INFO)
        small = self.batches.small_buckets()
        if small:
            print_log(f'BucketSampler: {len(small)} buckets hold fewer records than a global batch of '
                      f'{self.batches.global_batch}: each completes a batch only every few epochs, with records repeated '
                      f'in it: {", ".join(small)}', logger='current', level=logging.WARNING)

    def _batches(self) -> BucketBatches:
        return BucketBatches(self._ids, self._names, self.batch_size, self.rank, self.world_size, self.seed,
                             self.shuffle)

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
