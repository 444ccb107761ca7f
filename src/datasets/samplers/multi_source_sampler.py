"""``FixedBatchMultiSourceSampler``, as OpenUni and Harmon use it: every batch is drawn from one
source of a ``ConcatDataset``, the sources taking turns ``repeat[s]`` batches at a time (so source
``s`` gives ``repeat[s] / sum(repeat)`` of the batches), each a stream of seeded passes through
its records.

Each source's stream is split like ``BucketSampler``'s: a global batch (``batch_size`` x ranks) is
the next positions of the source's stream, rank ``r`` its ``r``-th slice; a source with aspect-ratio
buckets (``CaptionDataset(buckets=...)``) keeps each of its batches in one bucket (its turns take
the next batches of its ``BucketBatches``: every rank in the same bucket, records carried across
epochs, see ``bucket_sampler``). The streams run on across epochs; an iteration yields one epoch,
the one set by ``set_epoch``: ``ceil(len(dataset) / global batch)`` batches a rank, as many samples
as the mix holds (mmengine's ``DefaultSampler`` measure), so that epoch-based loops end.

Unlike upstream's, a position is cheap to reach: the stream at any batch is computed, not replayed
(:meth:`epoch_of_batch`, :meth:`resume_at`), and depends on the seed and the global batch only,
never on the number of ranks sharing it or of DataLoader workers. ``rebase`` lets a resumed run
take other ``repeat`` weights from where each source stood.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator, Optional, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.bucket_sampler import BucketBatches
from src.datasets.samplers.draws import Draw


def source_sizes(dataset: Sized, repeat) -> list[int]:
    """The sizes of the sources of ``dataset``: the parts of a ConcatDataset, or a plain dataset as
    the one source (Harmon's single-dataset configs) when ``repeat`` has one entry."""
    parts = getattr(dataset, 'datasets', None)
    if parts is None or not hasattr(dataset, 'cumulative_sizes'):
        if len(repeat) != 1:
            raise TypeError(f'FixedBatchMultiSourceSampler: repeat={list(repeat)} names {len(repeat)} sources, '
                            f'but the dataset is a {type(dataset).__name__}, not a ConcatDataset of them')
        return [len(dataset)]
    if len(repeat) != len(parts):
        raise ValueError(f'FixedBatchMultiSourceSampler: repeat={list(repeat)} has {len(repeat)} entries for the '
                         f'{len(parts)} datasets of the ConcatDataset')
    return [len(part) for part in parts]


def source_batches_at(repeat: list[int], origin: tuple[int, list[int]], batch: int) -> list[int]:
    """How many of the first ``batch`` global batches each source gave, its turns of ``repeat``
    having started at global batch ``origin[0]`` with source ``s`` at its ``origin[1][s]``-th batch."""
    turns = [s for s, r in enumerate(repeat) for _ in range(r)]
    rounds, rest = divmod(batch - origin[0], len(turns))
    return [done + rounds * r + turns[:rest].count(s) for s, (done, r) in enumerate(zip(origin[1], repeat))]


@DATA_SAMPLERS.register_module()
class FixedBatchMultiSourceSampler(Sampler):
    """Upstream's arguments: ``repeat`` (batches per turn, per source), ``dataset``, ``batch_size``,
    ``shuffle`` and ``seed`` (None: one drawn and shared by all ranks)."""

    def __init__(self, repeat, dataset: Sized, batch_size: int, shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f'FixedBatchMultiSourceSampler: batch_size must be a positive int, got {batch_size!r}')
        if not all(isinstance(r, int) and r >= 0 for r in repeat) or not sum(repeat):
            raise ValueError(f'FixedBatchMultiSourceSampler: repeat must be counts of batches, some positive, '
                             f'got {list(repeat)}')
        self.sizes = source_sizes(dataset, repeat)
        empty = [s for s, (size, r) in enumerate(zip(self.sizes, repeat)) if r and not size]
        if empty:
            raise ValueError(f'FixedBatchMultiSourceSampler: datasets {empty} are empty but have a repeat')
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.repeat = list(repeat)
        self.batch_size = batch_size
        self.global_batch = batch_size * self.world_size
        self.shuffle = shuffle
        self.offsets = list(itertools.accumulate([0] + self.sizes[:-1]))
        self.turns = [s for s, r in enumerate(self.repeat) for _ in range(r)]  # sources of one round
        self.epoch_length = -(-len(dataset) // self.global_batch)  # batches a rank, every epoch
        self.origin = (0, [0] * len(self.sizes))  # the turns start at this batch, the sources there
        self.epoch, self._skip = 0, 0
        parts = getattr(dataset, 'datasets', [dataset])
        self.bucketed = {s for s in set(self.turns) if getattr(parts[s], 'bucket_ids', None) is not None}
        self.seed = sync_random_seed() if seed is None else seed
        for source, batches in self.streams.items():
            if source in self.bucketed:
                print_log(batches.describe(), logger='current', level=logging.INFO)

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        self.streams = {source: self._source_batches(source) for source in set(self.turns)}

    def _source_batches(self, source: int) -> BucketBatches:
        """Source ``source``'s stream of global batches: by bucket where it has buckets, else as one bucket."""
        parts = getattr(self.dataset, 'datasets', [self.dataset])
        part = parts[source]
        seed = hash((self.seed, source)) & 0x7FFF_FFFF_FFFF_FFFF
        what = f'FixedBatchMultiSourceSampler source {source}'
        if getattr(part, 'bucket_ids', None) is None:
            return BucketBatches(np.zeros(self.sizes[source], np.int16), ['all'], self.batch_size, self.rank,
                                 self.world_size, seed, self.shuffle, self.offsets[source], what, require_full=False)
        names = [part.buckets.key(b) for b in range(len(part.buckets))]
        return BucketBatches(part.bucket_ids, names, self.batch_size, self.rank, self.world_size, seed,
                             self.shuffle, self.offsets[source], what)

    def __len__(self) -> int:
        """The indices of this rank's share of an epoch."""
        return self.epoch_length * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields (mmengine's loops call it before each)."""
        self.epoch = epoch

    def batches_before(self, epoch: int) -> int:
        """Global batches (steps) in the epochs before ``epoch``."""
        return epoch * self.epoch_length

    def epoch_of_batch(self, number: int) -> tuple[int, int]:
        """Global batch ``number``'s epoch, and the batches of that epoch before it."""
        return divmod(number, self.epoch_length)

    def resume_at(self, batches: int) -> None:
        """Let the next iteration skip the first ``batches`` batches of its epoch, as if they had been drawn."""
        self._skip = batches

    def rebase(self, batch: int, source_batches: list[int]) -> None:
        """Start the turns of ``repeat`` at global batch ``batch``, source ``s`` at its
        ``source_batches[s]``-th batch: a resume with other weights goes on from where each source stood."""
        self.origin = (batch, list(source_batches))

    def source_of_batch(self, batch: int) -> int:
        return self.turns[(batch - self.origin[0]) % len(self.turns)]

    def source_batches(self, batch: int) -> list[int]:
        """Each source's batches among the first ``batch`` global batches (what ``rebase`` takes)."""
        return source_batches_at(self.repeat, self.origin, batch)

    def _batch(self, number: int) -> list[int]:
        source = self.source_of_batch(number)
        stream, before = self.streams[source], self.source_batches(number)[source]
        return stream.batch(before)[1] if source in self.bucketed else stream.rank_batch(0, before)

    def __iter__(self) -> Iterator[Draw]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        first = self.batches_before(epoch)
        for number in range(first + skip, first + self.epoch_length):
            yield from self.streams[self.source_of_batch(number)].draws(self._batch(number), number, self.seed, epoch)
