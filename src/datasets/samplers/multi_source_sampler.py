"""``FixedBatchMultiSourceSampler``, as OpenUni and Harmon use it: every batch is drawn from one
source of a ``ConcatDataset``, the sources taking turns ``repeat[s]`` batches at a time (so source
``s`` gives ``repeat[s] / sum(repeat)`` of the batches), each an endless shuffled stream split
across ranks.

Unlike upstream's, a position is cheap to reach: each source's stream is a sequence of seeded
per-epoch permutations, so the stream at any point is computed, not replayed, and
:meth:`resume_at` places the sampler after any number of batches without a sample being read. The
draw depends on the seed, rank and world size only, never on the number of DataLoader workers
(the sampler runs in the main process).

A source with aspect-ratio buckets (``CaptionDataset(buckets=...)``) keeps each of its batches in
one bucket: its turns take the next batches of its ``BucketBatches`` (every rank in the same
bucket, records carried across epochs, see ``bucket_sampler``), the other sources' as above.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator, Optional, Sized

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from src.datasets.samplers.bucket_sampler import BucketBatches


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
        self.shuffle = shuffle
        self.offsets = list(itertools.accumulate([0] + self.sizes[:-1]))
        self.turns = [s for s, r in enumerate(self.repeat) for _ in range(r)]  # sources of one round
        self.seed = sync_random_seed() if seed is None else seed
        self._start_batch = 0
        for batches in self.bucketed.values():
            print_log(batches.describe(), logger='current', level=logging.INFO)

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        self.bucketed = {source: self._bucket_batches(source) for source in set(self.turns)}
        self.bucketed = {source: batches for source, batches in self.bucketed.items() if batches is not None}

    def _bucket_batches(self, source: int) -> BucketBatches | None:
        parts = getattr(self.dataset, 'datasets', [self.dataset])
        part = parts[source]
        if getattr(part, 'bucket_ids', None) is None:
            return None
        names = [part.buckets.key(b) for b in range(len(part.buckets))]
        return BucketBatches(part.bucket_ids, names, self.batch_size, self.rank, self.world_size,
                             hash((self.seed, source)) & 0x7FFF_FFFF_FFFF_FFFF, self.shuffle, self.offsets[source],
                             what=f'FixedBatchMultiSourceSampler source {source}')

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """An endless sampler has no epochs (as upstream's)."""

    def resume_at(self, batches: int) -> None:
        """Let the next iteration start after ``batches`` batches of this rank, as if they had been drawn."""
        self._start_batch = batches

    def source_of_batch(self, batch: int) -> int:
        return self.turns[batch % len(self.turns)]

    def _batches_before(self, source: int, batch: int) -> int:
        """How many of this rank's first ``batch`` batches come from ``source``."""
        rounds, rest = divmod(batch, len(self.turns))
        return rounds * self.repeat[source] + self.turns[:rest].count(source)

    def _permutation(self, source: int, epoch: int) -> list[int]:
        size = self.sizes[source]
        if not self.shuffle:
            return list(range(size))
        generator = torch.Generator()
        generator.manual_seed(hash((self.seed, source, epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randperm(size, generator=generator).tolist()

    def _stream(self, source: int, start: int) -> Iterator[int]:
        """Source ``source``'s indices on this rank from its ``start``-th on: rank ``r`` takes global
        positions ``r, r + world, ...`` of the endless sequence of per-epoch permutations."""
        size = self.sizes[source]
        position = self.rank + start * self.world_size
        epoch, permutation = -1, []
        while True:
            if position // size != epoch:
                epoch = position // size
                permutation = self._permutation(source, epoch)
            yield permutation[position % size] + self.offsets[source]
            position += self.world_size

    def __iter__(self) -> Iterator[int]:
        start = self._start_batch
        streams = {source: (itertools.chain.from_iterable(self.bucketed[source].iter_from(
                                self._batches_before(source, start))) if source in self.bucketed else
                            self._stream(source, self._batches_before(source, start) * self.batch_size))
                   for source in set(self.turns)}
        for batch in itertools.count(start):
            stream = streams[self.source_of_batch(batch)]
            for _ in range(self.batch_size):
                yield next(stream)
