"""Aspect-ratio buckets on a dataset (``CaptionDataset(buckets=...)``): which bucket each record
is in, known at construction, and the shape a record's sample takes.

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

from src.datasets.sample.buckets import Buckets
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
