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
from src.datasets.samplers.draws import Draw, placed, stream_position


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


def epoch_origin(history: list, size: int) -> tuple[int, int, int, int]:
    """Where the last global batch of ``history`` took over, in epochs of ``size`` samples (each
    epoch ``ceil(size / G)`` batches of its global batch ``G``; an epoch the global batch changed in
    ends once its samples are drawn): (that batch, its epoch, the epoch's first batch, the epoch's
    samples drawn before it)."""
    batch, epoch, first, drawn = 0, 0, 0, 0
    for (start, global_batch), (end, _) in zip((entry[:2] for entry in history), (entry[:2] for entry in history[1:])):
        rest, length = -(-(size - drawn) // global_batch), -(-size // global_batch)
        if end - start < rest:
            drawn += (end - start) * global_batch
        else:
            done = end - start - rest
            epoch += 1 + done // length
            first, drawn = end - done % length, done % length * global_batch
        batch = end
    return batch, epoch, first, drawn


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
        self.epoch, self._skip, self.history = 0, 0, None
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
            batches = BucketBatches(np.zeros(self.sizes[source], np.int16), ['all'], self.batch_size_of(source),
                                    self.rank, self.world_size, seed, self.shuffle, self.offsets[source], what,
                                    require_full=False, source=source)
        else:
            names = [part.buckets.key(b) for b in range(len(part.buckets))]
            batches = BucketBatches(part.bucket_ids, names, self.batch_size_of(source), self.rank, self.world_size,
                                    seed, self.shuffle, self.offsets[source], what, source=source)
        if not self.history:
            return batches
        # The source's own batches at each change of the global batch.
        own = [[0, self.history[0][1]]] + [[entry[2][source], entry[1]] for entry in self.history[1:]]
        return batches.with_history(own, self.batch_size, self.rank, self.world_size)

    def set_history(self, history: list) -> None:
        """Go on after the global batch changes of ``history`` (``[batch, global batch, batches per
        source]`` entries, the first at batch 0): each source from where its stream stood at each."""
        self.history = [list(entry) for entry in history]
        self.seed = self.seed  # the streams again, from their positions

    def __len__(self) -> int:
        """The indices of this rank's share of the epoch set by ``set_epoch``."""
        return (self.batches_before(self.epoch + 1) - self.batches_before(self.epoch)) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields (mmengine's loops call it before each)."""
        self.epoch = epoch

    def _epochs(self) -> tuple[int, int, int, int]:
        """(batch, epoch, epoch's first batch, batches left in that epoch) where this global batch took over."""
        batch, epoch, first, drawn = epoch_origin(self.history or [[0, self.global_batch]], len(self.dataset))
        return batch, epoch, first, -(-(len(self.dataset) - drawn) // self.global_batch)

    def batches_before(self, epoch: int) -> int:
        """Global batches (steps) in the epochs before ``epoch``."""
        batch, since, first, rest = self._epochs()
        return first if epoch == since else batch + rest + (epoch - since - 1) * self.epoch_length

    def epoch_of_batch(self, number: int) -> tuple[int, int]:
        """Global batch ``number``'s epoch, and the batches of that epoch before it."""
        batch, since, first, rest = self._epochs()
        if number < batch + rest:
            return since, number - first
        epochs, done = divmod(number - batch - rest, self.epoch_length)
        return since + 1 + epochs, done

    def resume_at(self, batches: int) -> None:
        """Let the next iteration skip the first ``batches`` batches of its epoch, as if they had been drawn."""
        self._skip = batches

    def rebase(self, batch: int, source_batches: list[int]) -> None:
        """Start the turns of ``repeat`` at global batch ``batch``, source ``s`` at its
        ``source_batches[s]``-th batch: a resume with other weights goes on from where each source stood."""
        self.origin = (batch, list(source_batches))

    def batch_size_of(self, source: int) -> int:
        """The size of source ``source``'s batches on a rank: one for all here."""
        return self.batch_size

    def source_of_batch(self, batch: int) -> int:
        return self.turns[(batch - self.origin[0]) % len(self.turns)]

    def source_batches(self, batch: int) -> list[int]:
        """Each source's batches among the first ``batch`` global batches (what ``rebase`` takes)."""
        return source_batches_at(self.repeat, self.origin, batch)

    def _batch(self, number: int) -> list[int]:
        source = self.source_of_batch(number)
        stream, before = self.streams[source], self.source_batches(number)[source]
        return stream.batch(before)[1]

    def first_position(self, number: int) -> int:
        """This rank's first sample of global batch ``number``: its position in the global stream."""
        return stream_position(self.history or [[0, self.global_batch]], number) + self.rank * self.batch_size

    def iteration_batches(self) -> range:
        """The global batches the next iteration yields: its epoch's, less those ``resume_at`` skips."""
        return range(self.batches_before(self.epoch) + self._skip, self.batches_before(self.epoch + 1))

    def __iter__(self) -> Iterator[Draw]:
        self.current_batches, epoch = self.iteration_batches(), self.epoch  # what a batch sampler cuts
        self._skip = 0
        for number in self.current_batches:
            position = self.first_position(number)
            yield from (placed(index, position + k, self.seed, epoch) for k, index in enumerate(self._batch(number)))


@DATA_SAMPLERS.register_module()
class MultiSourceSampler(FixedBatchMultiSourceSampler):
    """The second generation's sampler (deepgen, Puffin, UniPic-1): ``FixedBatchMultiSourceSampler``
    with a batch size per source, ``batch_sizes``, and its ``repeats``. ``batch_size`` is theirs: the
    mean size of a round's batches. Batch its indices with ``MultiSourceBatchSampler``. A resume
    keeps the ranks' count and the batch sizes (another global batch is refused)."""

    def __init__(self, repeats, dataset: Sized, batch_sizes: list[int], shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        if not isinstance(batch_sizes, (list, tuple)) or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
            raise ValueError(f'MultiSourceSampler: batch_sizes must be a list of positive ints, got {batch_sizes!r}')
        if len(batch_sizes) != len(repeats):
            raise ValueError(f'MultiSourceSampler: {len(batch_sizes)} batch_sizes for {len(repeats)} repeats')
        self.batch_sizes, self.repeats = list(batch_sizes), list(repeats)
        mean = sum(b * r for b, r in zip(batch_sizes, repeats)) // max(sum(repeats), 1)
        super().__init__(repeats, dataset, max(mean, 1), shuffle, seed)

    def batch_size_of(self, source: int) -> int:
        return self.batch_sizes[source]

    def __len__(self) -> int:
        numbers = range(self.batches_before(self.epoch), self.batches_before(self.epoch + 1))
        return sum(self.batch_size_of(self.source_of_batch(number)) for number in numbers)

    def first_position(self, number: int) -> int:
        done = self.source_batches(number)  # the samples of the global batches before, source by source
        size = self.batch_size_of(self.source_of_batch(number))
        return self.world_size * sum(count * b for count, b in zip(done, self.batch_sizes)) + self.rank * size


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

    def __iter__(self) -> Iterator[list[int]]:
        inner = getattr(self.sampler, 'inner', self.sampler)
        indices = iter(self.sampler)
        first = list(itertools.islice(indices, 1))  # starts the sampler: a resumed one places itself
        indices = itertools.chain(first, indices)
        if hasattr(inner, 'current_batches'):
            sizes = (inner.batch_size_of(inner.source_of_batch(number)) for number in inner.current_batches)
        else:
            sizes = itertools.cycle([b for b, r in zip(self.batch_sizes, self.repeats) for _ in range(r)])
        for size in sizes:
            batch = list(itertools.islice(indices, size))
            if not batch:
                return
            yield batch

    def __len__(self) -> int:
        inner = getattr(self.sampler, 'inner', self.sampler)
        if hasattr(inner, 'iteration_batches'):
            return len(range(inner.batches_before(inner.epoch), inner.batches_before(inner.epoch + 1)))
        return len(self.sampler) // self.batch_size
