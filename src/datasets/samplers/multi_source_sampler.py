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
        return BucketBatches(part.bucket_ids, names, self.batch_size_of(source), self.rank, self.world_size,
                             hash((self.seed, source)) & 0x7FFF_FFFF_FFFF_FFFF, self.shuffle, self.offsets[source],
                             what=f'FixedBatchMultiSourceSampler source {source}')

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """An endless sampler has no epochs (as upstream's)."""

    def resume_at(self, batches: int) -> None:
        """Let the next iteration start after ``batches`` batches of this rank, as if they had been drawn."""
        self._start_batch = batches

    def batch_size_of(self, source: int) -> int:
        """The size of source ``source``'s batches: one for all here."""
        return self.batch_size

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
                            self._stream(source, self._batches_before(source, start) * self.batch_size_of(source)))
                   for source in set(self.turns)}
        for batch in itertools.count(start):
            source = self.source_of_batch(batch)
            stream = streams[source]
            for _ in range(self.batch_size_of(source)):
                yield next(stream)


@DATA_SAMPLERS.register_module()
class MultiSourceSampler(FixedBatchMultiSourceSampler):
    """The second generation's sampler (deepgen, Puffin, UniPic-1): ``FixedBatchMultiSourceSampler``
    with a batch size per source, ``batch_sizes``, and its ``repeats``. ``batch_size`` is theirs: the
    mean size of a round's batches. Batch its indices with ``MultiSourceBatchSampler``."""

    def __init__(self, repeats, dataset: Sized, batch_sizes: list[int], shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        if not isinstance(batch_sizes, (list, tuple)) or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
            raise ValueError(f'MultiSourceSampler: batch_sizes must be a list of positive ints, got {batch_sizes!r}')
        if len(batch_sizes) != len(repeats):
            raise ValueError(f'MultiSourceSampler: {len(batch_sizes)} batch_sizes for {len(repeats)} repeats')
        self.batch_sizes, self.repeats = list(batch_sizes), list(repeats)
        mean = sum(b * r for b, r in zip(batch_sizes, repeats)) // max(sum(repeats), 1)
        super().__init__(repeats, dataset, mean, shuffle, seed)

    def batch_size_of(self, source: int) -> int:
        return self.batch_sizes[source]


@DATA_SAMPLERS.register_module()
class MultiSourceBatchSampler(Sampler):
    """The second generation's batch sampler: the indices of ``sampler`` cut into batches, each of its
    source's size, in the sampler's turns (a resumed sampler's too). ``batch_sizes`` and ``repeats``
    are the sampler's, as the configs repeat them; ``batch_size`` (mmengine's default argument) is
    ignored, as theirs."""

    def __init__(self, sampler, batch_sizes: list[int], repeats: list[int], **kwargs) -> None:
        inner = getattr(sampler, 'inner', sampler)
        for name, value in (('batch_sizes', batch_sizes), ('repeats', repeats)):
            if hasattr(inner, name) and list(getattr(inner, name)) != list(value):
                raise ValueError(f'MultiSourceBatchSampler: {name}={list(value)}, but its sampler has '
                                 f'{list(getattr(inner, name))}')
        self.sampler, self.batch_sizes, self.repeats = sampler, list(batch_sizes), list(repeats)

    @property
    def batch_size(self) -> int:
        return sum(b * r for b, r in zip(self.batch_sizes, self.repeats)) // max(sum(self.repeats), 1)

    def _sizes(self) -> Iterator[int]:
        """The size of each batch from the sampler's place on (read once it has started)."""
        inner = getattr(self.sampler, 'inner', self.sampler)
        if hasattr(inner, 'batch_size_of'):
            return (inner.batch_size_of(inner.source_of_batch(batch))
                    for batch in itertools.count(getattr(inner, '_start_batch', 0)))
        return itertools.cycle([b for b, r in zip(self.batch_sizes, self.repeats) for _ in range(r)])

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.sampler)
        first = list(itertools.islice(indices, 1))  # starts the sampler: a resumed one places itself
        indices = itertools.chain(first, indices)
        for size in self._sizes():
            batch = list(itertools.islice(indices, size))
            if not batch:
                return
            yield batch

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size
