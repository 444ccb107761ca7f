"""Where a rank's data stream stands, and how to place a sampler there without reading a sample.

A run's data position is the number of iterations done (mmengine's ``meta['iter']``) together
with the facts that turn it into a place in each rank's index stream (:class:`DataFacts`: batch
size, world size, dataset size, sampler kind and seed, samples per epoch). :func:`plan_resume`
compares the facts a checkpoint saved with the run's own, maps or refuses a change, and gives the
:class:`StartPoint` (epoch, indices to skip, first draw number). :class:`PositionedSampler` wraps the
loader's sampler: it skips those indices (in O(1) when the sampler has ``resume_at``, else by
drawing bare integers, never samples) and hands each index to the dataset as a :class:`Draw`,
an ``int`` that also carries its draw number and seed. The dataset keys a sample's randomness
(crop, caption dropout, replacements) on them, so that a resumed run gives the very samples an
uninterrupted one would, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, fields
from typing import Iterator

from mmengine.dataset import DefaultSampler, InfiniteSampler


class Draw(int):
    """A dataset index that also says which draw of its rank it is (``position``) under which
    sampler ``seed``. Offsetting it (as ``ConcatDataset`` does to find the index within a part)
    keeps both, so the part's ``__getitem__`` still sees them."""

    def __new__(cls, index: int, position: int, seed: int, rank: int):
        draw = super().__new__(cls, index)
        draw.position, draw.seed, draw.rank = position, seed, rank
        return draw

    def _like(self, index: int) -> 'Draw':
        return Draw(index, self.position, self.seed, self.rank)

    def __add__(self, other):
        return self._like(int(self) + other) if isinstance(other, int) else NotImplemented

    __radd__ = __add__

    def __sub__(self, other):
        return self._like(int(self) - other) if isinstance(other, int) else NotImplemented

    def __reduce__(self):
        return Draw, (int(self), self.position, self.seed, self.rank)

    def __repr__(self) -> str:
        return f'Draw({int(self)}, position={self.position})'


@dataclass(frozen=True)
class DataFacts:
    """What turns an iteration count into a place in each rank's index stream."""

    batch_size: int
    world_size: int
    dataset_size: int
    sampler: str
    seed: int | None
    samples_per_epoch: int | None  # per rank; None for an endless sampler
    data: str | None = None  # the dataset's fingerprint (its records, in order); None when it has none
    filters: object = None  # the dataset's filters (a list of the parts' for a mix); None: none, or not known

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> 'DataFacts':
        """The facts a checkpoint saved; those an older checkpoint lacks are None."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})


@dataclass(frozen=True)
class StartPoint:
    """Where the resumed stream starts: the sampler ``epoch``, the ``skip`` indices of that epoch
    already used, and the draw number of the first index given out."""

    epoch: int
    skip: int
    position: int
    note: str = ''


class ResumeError(RuntimeError):
    """The checkpoint's data position cannot be placed in this run; the message has the numbers."""


def is_endless(sampler) -> bool:
    return not isinstance(sampler, DefaultSampler)


def data_fingerprint(dataset) -> str | None:
    """What the records of ``dataset`` are, as a digest (``CaptionDataset.fingerprint``; the parts'
    in order for a ConcatDataset); None for a dataset that cannot say."""
    parts = getattr(dataset, 'datasets', None)
    if parts is not None:
        prints = [data_fingerprint(part) for part in parts]
        if any(fingerprint is None for fingerprint in prints):
            return None
        return hashlib.blake2b('|'.join(prints).encode(), digest_size=16).hexdigest()
    return getattr(dataset, 'fingerprint', None)


def data_filters(dataset):
    """The filters the records of ``dataset`` were chosen by (``CaptionDataset(filters=...)``; the
    parts' in order for a ConcatDataset), or None when there are none."""
    parts = getattr(dataset, 'datasets', None)
    if parts is not None:
        filters = [data_filters(part) for part in parts]
        return filters if any(part is not None for part in filters) else None
    return getattr(dataset, 'filters', None)


def records_moved(dataset, filters) -> tuple[int, int] | None:
    """How many records entered and left ``dataset`` against the same index under ``filters``
    (``dataset.records_moved``; summed over a mix's parts), or None where it cannot say."""
    parts = getattr(dataset, 'datasets', None)
    if parts is not None:
        old = filters if isinstance(filters, list) and len(filters) == len(parts) else [None] * len(parts)
        moves = [records_moved(part, part_filters) for part, part_filters in zip(parts, old)]
        return None if None in moves else tuple(map(sum, zip(*moves)))
    moved = getattr(dataset, 'records_moved', None)
    return None if moved is None else moved(filters)


def facts_of(loader, rank_world: tuple[int, int]) -> DataFacts:
    sampler = loader.batch_sampler.sampler
    sampler = getattr(sampler, 'inner', sampler)
    batch_size = loader.batch_sampler.batch_size
    return DataFacts(batch_size=batch_size, world_size=rank_world[1], dataset_size=len(loader.dataset),
                     sampler=type(sampler).__name__, seed=getattr(sampler, 'seed', None),
                     samples_per_epoch=None if is_endless(sampler) else len(sampler),
                     data=data_fingerprint(loader.dataset), filters=data_filters(loader.dataset))


def plan_resume(iteration: int, saved: DataFacts | None, now: DataFacts, drop_last: bool = False,
                allow_data_change: bool = False) -> StartPoint:
    """The start point of a run resumed after ``iteration`` iterations. ``saved`` is None for a
    checkpoint made by mmengine's own loop: the position is then derived as if nothing changed.
    Records other than the checkpoint's (same count, other or reordered ones) are refused, unless
    ``allow_data_change``: the position would silently land on other samples."""
    note = ''
    if saved is None:
        saved = now
        note = 'the checkpoint has no data position (made by another loop): derived from its iteration count'
    data_changed = saved.data is not None and now.data is not None and saved.data != now.data
    if data_changed and saved.filters != now.filters:
        if not allow_data_change:
            raise ResumeError(
                f'cannot resume the data position: the dataset\'s filters changed (filters {saved.filters} when the '
                f'checkpoint was made, {now.filters} now): the position would land on other records. Resume with '
                'the same filters, or set allow_data_change=True in train_cfg to go on from the same position in '
                'the records the new filters keep.')
        note = f'the filters changed ({saved.filters} -> {now.filters}); resumed at the same position, as asked'
    elif data_changed:
        if not allow_data_change:
            raise ResumeError(
                f'cannot resume the data position: the dataset holds other records than when the checkpoint was '
                f'made (fingerprint {saved.data} then, {now.data} now: other records, or the same ones in another '
                'order). Resume on the same index, or set allow_data_change=True in train_cfg to go on from the '
                'same position in the new records.')
        note = f'the records changed (fingerprint {saved.data} -> {now.data}); resumed at the same position, as asked'
    for name, what in (('batch_size', 'batch size'), ('dataset_size', 'dataset size'), ('sampler', 'sampler')):
        if name == 'dataset_size' and data_changed:  # allowed above: other records, maybe another count
            continue
        if getattr(saved, name) != getattr(now, name):
            raise ResumeError(f'cannot resume the data position: the checkpoint was made with {what} '
                              f'{getattr(saved, name)}, this run has {getattr(now, name)}. Resume with the same '
                              f'{what}, or start a new run (load_from instead of resume).')
    consumed = iteration * now.batch_size  # indices each rank drew
    if saved.world_size != now.world_size:
        total = consumed * saved.world_size
        if saved.samples_per_epoch is not None or now.sampler != 'InfiniteSampler' or total % now.world_size:
            raise ResumeError(
                f'cannot map the data position from {saved.world_size} ranks to {now.world_size}: '
                f'{iteration} iterations x batch {now.batch_size} x {saved.world_size} ranks = {total} samples, '
                f'{"not divisible by " + str(now.world_size) if total % now.world_size else "and sampler " + now.sampler} '
                '(only InfiniteSampler positions map, when the samples divide evenly). Resume with '
                f'{saved.world_size} ranks.')
        consumed = total // now.world_size
        note = (f'world size changed from {saved.world_size} to {now.world_size}: each rank resumes after '
                f'{consumed} of its samples, none skipped or repeated')
    if now.samples_per_epoch is None:
        return StartPoint(epoch=0, skip=consumed, position=consumed, note=note)
    per_epoch = now.samples_per_epoch
    batches_per_epoch = per_epoch // now.batch_size if drop_last else -(-per_epoch // now.batch_size)
    epoch, batches = divmod(iteration, batches_per_epoch)
    skip = batches * now.batch_size
    return StartPoint(epoch=epoch, skip=skip, position=epoch * per_epoch + skip, note=note)


class PositionedSampler:
    """``inner`` with its first ``start.skip`` indices skipped once, every index given out as a
    :class:`Draw` numbered from ``start.position`` on (over epochs too). Other attributes are the
    inner sampler's (``set_epoch``, ``seed``, ...)."""

    def __init__(self, inner, start: StartPoint, rank: int):
        self.inner = inner
        self.rank = rank
        self._skip = start.skip
        self._position = start.position

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def _indices(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        if skip and hasattr(self.inner, 'resume_at') and skip % self.inner.batch_size == 0:
            self.inner.resume_at(skip // self.inner.batch_size)  # computed, not drawn
            return iter(self.inner)
        return itertools.islice(iter(self.inner), skip, None)

    def __iter__(self) -> Iterator[Draw]:
        seed = getattr(self.inner, 'seed', 0) or 0
        for index in self._indices():
            position, self._position = self._position, self._position + 1
            yield Draw(index, position, seed, self.rank)


def restore_seed(sampler, seed: int | None) -> bool:
    """Give ``sampler`` the seed of the checkpointed run (a run with ``randomness.seed=None`` draws
    a new one, and mmengine restores it only after the dataloader is built). True when it changed."""
    if seed is None or getattr(sampler, 'seed', seed) == seed:
        return False
    sampler.seed = seed
    if isinstance(sampler, InfiniteSampler):
        sampler.indices = sampler._indices_of_rank()  # its stream is made once, from the seed
    return True
