"""What a checkpoint records about a run's data, to place its position in another run (``positions.py``):
batch size, world size, dataset size, sampler kind and seed, samples per epoch, and digests of the
records, their buckets and filters, read from the loader, its sampler and its dataset."""
from __future__ import annotations

import hashlib
from dataclasses import MISSING, asdict, dataclass, fields

from mmengine.dataset import DefaultSampler


@dataclass(frozen=True)
class DataFacts:
    """What turns an iteration count into a place in the global sample stream (a few hundred bytes)."""

    batch_size: int
    world_size: int
    dataset_size: int
    sampler: str
    seed: int | None
    samples_per_epoch: int | None  # per rank; None for an endless sampler
    data: str | None = None  # the dataset's fingerprint (its records, in order); None when it has none
    buckets: str | None = None  # the sampler's buckets' fingerprint (each record's bucket); None without
    repeat: list | None = None  # a mix's weights (FixedBatchMultiSourceSampler)
    origin: list | None = None  # where the mix's turns of ``repeat`` started: [batch, [batches per source]]
    history: list | None = None  # the global batch's changes: [batch, global batch(, batches per source)]
    filters: object = None  # the dataset's filters (a list of the parts' for a mix); None: none, or not known
    deals: list | None = None  # a block shuffle's deals: [batch, world size, batch size, workers, block, lanes]

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> 'DataFacts':
        """The facts a checkpoint saved (those an older checkpoint lacks are None), checked: a
        checkpoint from others is untrusted, and its numbers drive loops (:func:`checked_position`)."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in checked_position(saved).items() if key in known})


class ResumeError(RuntimeError):
    """The checkpoint's data position cannot be placed in this run; the message has the numbers."""


RANKS = 1 << 16  # ranks, workers: far more than any cluster, few enough to replay one by one
COUNT = 1 << 48  # samples, batches, iterations
CHANGES = 1 << 12  # entries of a history: one per resume that changed something


def _number(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _numbers(value, low: int, high: int, most: int) -> bool:
    return isinstance(value, list) and len(value) <= most and all(_number(v, low, high) for v in value)


def _steps(entries, shape: list, fewest: int) -> bool:
    """A history-like list: at most CHANGES entries, each of ``fewest`` to ``len(shape)`` fields
    as ``shape`` says (a check per field), their first fields (the global batch each took over at)
    non-decreasing, the first at 0."""
    if not isinstance(entries, list) or not 0 < len(entries) <= CHANGES:
        return False
    for entry in entries:
        if not isinstance(entry, list) or not fewest <= len(entry) <= len(shape):
            return False
        if not all(check(value) for check, value in zip(shape, entry)):
            return False
    starts = [entry[0] for entry in entries]
    return starts[0] == 0 and starts == sorted(starts)


def _count(value) -> bool:
    return _number(value, 0, COUNT)


def _ranks(value) -> bool:
    return _number(value, 1, RANKS)


def _positive(value) -> bool:
    return _number(value, 1, COUNT)


_FIELDS = {
    'batch_size': _positive, 'world_size': _ranks, 'dataset_size': _count,
    'sampler': lambda v: isinstance(v, str) and v.isidentifier(),
    'seed': lambda v: v is None or _number(v, 0, (1 << 63) - 1),  # numpy's seeds are not negative; torch adds epochs
    'samples_per_epoch': lambda v: v is None or _count(v),
    'data': lambda v: v is None or (isinstance(v, str) and len(v) <= 1 << 16),  # count, digest, filters
    'buckets': lambda v: v is None or (isinstance(v, str) and len(v) <= 128),
    'repeat': lambda v: v is None or (_numbers(v, 0, RANKS, RANKS) and 0 < sum(v) <= RANKS),  # a turn is sum(v)
    'origin': lambda v: v is None or (isinstance(v, list) and len(v) == 2 and _count(v[0])
                                      and _numbers(v[1], 0, COUNT, RANKS)),
    'history': lambda v: v is None or _steps(v, [_count, _positive, lambda n: _numbers(n, 0, COUNT, RANKS)], 2),
    # [batch, ranks, batch size, workers, block, lanes' batch]
    'deals': lambda v: v is None or _steps(v, [_count, _ranks, _positive, _ranks, _positive, _positive], 3),
    'filters': lambda v: len(repr(v)) <= 1 << 16,
}


def checked_position(saved) -> dict:
    """``saved``, a checkpoint's data position, when every fact is of its kind and within bounds
    (counts, ranks, a mix's turn, entries of a history); else ``ResumeError`` naming the fact. A
    checkpoint from others could otherwise make a turn of 10^12 batches, a loop over 10^12 ranks or
    a division by zero of its numbers."""
    if not isinstance(saved, dict):
        raise ResumeError(f'the checkpoint\'s data position is a {type(saved).__name__}, not a mapping: resume '
                          'from a checkpoint this project wrote, or start a new run (load_from instead of resume)')
    missing = [field.name for field in fields(DataFacts) if field.default is MISSING and field.name not in saved]
    if missing:
        raise ResumeError(f'the checkpoint\'s data position lacks {", ".join(map(repr, missing))}: resume from a '
                          'checkpoint this project wrote, or start a new run (load_from instead of resume)')
    for name, value in saved.items():
        check = _FIELDS.get(name)
        if check is not None and not check(value):
            raise _malformed(name)
    wrong = _mix_counts_wrong(saved)
    if wrong:
        raise _malformed(wrong[0])
    history = saved.get('history')
    if history and history[-1][1] != saved['batch_size'] * saved['world_size']:  # the run's own global batch last
        raise _malformed('history')
    return saved


def _mix_counts_wrong(saved: dict) -> list[str]:
    """The facts of a mix (``repeat`` and ``origin`` given) whose batches per source are not one per
    source, or do not add up to the batch they were counted at (each of the first ``b`` global
    batches came from one source): the samplers index their sources' lists with them."""
    repeat, origin, history = saved.get('repeat'), saved.get('origin'), saved.get('history')
    if repeat is None or origin is None:
        return []

    def wrong(batch, counts) -> bool:
        return len(counts) != len(repeat) or sum(counts) != batch

    return ((['origin'] if wrong(*origin) else [])
            + (['history'] if history and any(len(entry) < 3 or wrong(entry[0], entry[2]) for entry in history) else []))


def checked_iteration(saved: 'DataFacts | None', iteration) -> None:
    """A checkpoint's ``iteration`` (mmengine's ``meta['iter']``, untrusted as its position) a count,
    and no change of ``saved``'s history or mix after it (a negative place in the stream); else
    ``ResumeError`` naming the fact."""
    if not _count(iteration):
        raise _malformed('iteration')
    if saved is None:
        return
    if saved.history and saved.history[-1][0] > iteration:
        raise _malformed('history')
    if saved.origin is not None and saved.origin[0] > iteration:
        raise _malformed('origin')


def _malformed(name: str) -> ResumeError:
    return ResumeError(f'the checkpoint\'s data position has a malformed {name!r} (not of its kind, or beyond its '
                       'bounds): resume from another checkpoint, or start a new run (load_from instead of resume)')


def is_endless(sampler) -> bool:
    """Whether ``sampler`` draws without epochs (mmengine's ``InfiniteSampler`` and the like)."""
    return not (isinstance(sampler, DefaultSampler) or hasattr(sampler, 'epoch_of_batch'))


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


def bucket_fingerprint(sampler) -> str | None:
    """Which bucket each record is in, as a digest, for a sampler that batches by bucket; else None."""
    streams = [getattr(sampler, 'batches', None)] if hasattr(sampler, 'batches') else [
        getattr(sampler, 'streams', {}).get(source) for source in sorted(getattr(sampler, 'bucketed', ()))]
    if not streams or streams[0] is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for batches in streams:
        digest.update('|'.join(batches.names).encode())
        for array in (batches.counts, batches.members):
            digest.update(array.astype('<i8').tobytes())
    return digest.hexdigest()


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
    """The facts of ``loader`` on a run of ``rank_world`` (rank, world size), as a checkpoint saves them."""
    sampler = loader.batch_sampler.sampler
    sampler = getattr(sampler, 'inner', sampler)
    batch_size = loader.batch_sampler.batch_size
    origin = getattr(sampler, 'origin', None)
    return DataFacts(batch_size=batch_size, world_size=rank_world[1], dataset_size=len(loader.dataset),
                     sampler=type(sampler).__name__, seed=getattr(sampler, 'seed', None),
                     samples_per_epoch=None if is_endless(sampler) else len(sampler),
                     data=data_fingerprint(loader.dataset), buckets=bucket_fingerprint(sampler),
                     repeat=getattr(sampler, 'repeat', None), origin=None if origin is None else list(origin),
                     filters=data_filters(loader.dataset))
