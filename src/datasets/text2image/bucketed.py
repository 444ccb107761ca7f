"""A dataset's records (``src.datasets.sample.records`` decides which are kept) and their
aspect-ratio buckets (``CaptionDataset(buckets=...)``; square crops: the square table of one
bucket): which bucket each record is in, known at construction, and the shape a record's sample takes.

Mixed into ``CaptionDataset``. At construction every usable record gets its bucket from its
picture's size (``src.datasets.index.image_sizes``: the index's width and height, the sizes stored beside
its latents, or the image header, read once); records that fit no bucket, or whose size cannot be
known, are counted drops like every other. ``bucket_ids`` (one ``int16`` per record) is what
``BucketSampler`` batches by; ``target_of(idx)`` is the (height, width) sample ``idx`` takes; a
sample that cannot be used is replaced by another of its bucket, so that a batch keeps one shape.
"""
from __future__ import annotations

import random

import numpy as np

from src.datasets.index import filters as record_filters
from src.datasets.index.sample_index import SampleIndex
from src.datasets.sample.buckets import Buckets
from src.datasets.sample.records import PictureSizes, RecordRules, keep_records
from src.datasets.errors import SampleError
from src.datasets.index.image_sizes import forget_sizes
# Registered in DATA_SAMPLERS with the datasets that need it: configs may name it by string.
from src.datasets.samplers import bucket_sampler  # noqa: F401

REJECTION_DRAWS = 32  # draws of a random record before a small bucket's members are listed


class BucketedRecords:
    """See the module. ``buckets``: the configured ``Buckets`` (None: square samples of ``image_size``,
    as upstream configs and tools read it); ``bucket_table``: the table samples take their shapes
    from, the square table of one bucket where none is configured."""

    buckets: Buckets | None = None
    bucket_ids: np.ndarray | None = None

    def _set_buckets(self, options) -> None:
        self.buckets = None if options is None else Buckets.from_options(options, self.image_size)
        self.bucket_table = self.buckets or Buckets.square(self.image_size)
        self._members = {}

    def load_index(self) -> SampleIndex:
        """The index (``_load_data``), without the records that cannot be used; each kind of drop is
        logged. Which records are kept is decided once per index cache and options, then mapped."""
        self._load_data(self.index_source)
        if not self.has_own_records and 'index' not in self.__dict__:
            self.data_list = []  # a subclass's _load_data that loads nothing: its records come later
        if self.has_own_records:  # a subclass's own data_list: its records as it made them
            return self.own_index()
        kept = keep_records(self.record_rules, self.index, self.picture_sizes, self.cap_keys, self.caption_of)
        self.bucket_ids, self.funnel = kept.bucket_ids, kept.funnel
        return kept.index

    @property
    def record_rules(self) -> RecordRules:
        """What decides which records are kept, besides the index itself."""
        cls = type(self)
        return RecordRules(self.data_path, f'{cls.__module__}.{cls.__qualname__}', self.image_key,
                           tuple(self.required_keys), tuple(self.path_keys), self.allow_outside_paths,
                           self.min_image_size, self.train_number_samples, self.filters, self.bucket_table)

    @property
    def picture_sizes(self) -> PictureSizes:
        """Where the records' picture sizes come from (buckets, size filters)."""
        reachable = self.decodes_images or self.image_root is not None or self.ceph_files is not None
        return PictureSizes(self.data_path, self.image_key, self.read_image if reachable else None,
                            self.latent_info_reader, self.latent_root)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """The record keys a sample cannot do without: the image path (``image_key``)."""
        return (self.image_key,)

    @property
    def fingerprint(self) -> str:
        """The records this dataset reads, as a resume checks them: their number and a digest of
        their image paths in order (another index, or the same one reordered, differs)."""
        digest = f'{len(self)}:{self.index.content_digest(self.image_key)}'
        return digest if not self.filters else f'{digest} filters={record_filters.describe(self.filters)}'

    def records_moved(self, filters) -> tuple[int, int]:
        """How many records entered and left this dataset against the same index chosen by ``filters``
        (a resume whose filters changed says so)."""
        return record_filters.records_moved(self, filters)

    def size_table(self) -> tuple[str, np.ndarray]:
        """The picture sizes of this dataset's records as a latent folder stores them: the index's
        image-path digest, and ``int32 [rows of the whole index, 2]`` (0 where unknown or not used)."""
        return self.picture_sizes.table(self.index)

    # ---- per sample -------------------------------------------------------------------------------
    def target_of(self, idx) -> tuple[int, int]:
        """The (height, width) of sample ``idx``: its bucket's shape."""
        return self.bucket_table.shapes[self.bucket_table.bucket_of(self.bucket_ids, idx)]

    def check_bucket(self, image_file: str, original_size: tuple[int, int], target: tuple[int, int] | None) -> None:
        """``SampleError('stale-size')`` for a picture whose size puts it in another bucket than the
        one it was given at start-up (``target``): it changed after its size was read, and its crop
        would be another picture's. The sizes kept beside the index, and the selections made from
        them, are dropped: the next start reads them again. No ``target``: no bucket to keep to."""
        if target is None:
            return
        height, width = original_size
        # Either way up: an index's width and height may be those before the picture's EXIF rotation.
        table = self.bucket_table
        buckets = table.assign(np.array([width, height]), np.array([height, width]))
        if any(bucket >= 0 and tuple(table.shapes[bucket]) == tuple(target) for bucket in buckets.tolist()):
            return
        forget_sizes(self.index.whole())
        raise SampleError('stale-size', f'{self.data_path_of(self.image_root, image_file)}: the picture is {width}x'
                                        f'{height} now, not of the size its bucket {target[1]}x{target[0]} was chosen '
                                        'from at start-up (the index\'s width and height, or the image sizes kept '
                                        'beside its cache, dropped now: read again at the next start)')

    def replacement(self, idx, rng: random.Random) -> int:
        """A random other record to read when sample ``idx`` cannot be used: of ``idx``'s bucket, so
        that its batch keeps one shape (a few random draws, then the bucket's own list)."""
        table, ids = self.bucket_table, self.bucket_ids
        bucket = table.bucket_of(ids, idx)
        for _ in range(REJECTION_DRAWS):
            other = rng.randrange(len(self))
            if table.bucket_of(ids, other) == bucket:
                return other
        members = self._members.get(bucket)
        if members is None:  # a small bucket: listed once in this process
            members = self._members[bucket] = np.flatnonzero(ids == bucket)
        return int(members[rng.randrange(len(members))])
