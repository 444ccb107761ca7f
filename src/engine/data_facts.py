"""What a checkpoint records about a run's data, to place its position in another run (``positions.py``):
batch size, world size, dataset size, sampler kind and seed, samples per epoch, and digests of the
records, their buckets and filters, read from the loader, its sampler and its dataset."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

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
        """The facts a checkpoint saved; those an older checkpoint lacks are None."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})


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
