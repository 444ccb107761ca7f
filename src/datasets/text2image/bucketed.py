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
from src.datasets.index.image_sizes import forget_sizes, header_size, record_sizes
from src.datasets.storage.latent_store import read_sizes
# Registered in DATA_SAMPLERS with the datasets that need it: configs may name it by string.
from src.datasets.samplers import bucket_sampler  # noqa: F401

REJECTION_DRAWS = 32  # draws of a random record before a small bucket's members are listed


class BucketedRecords:
    """See the module. ``buckets``: the ``Buckets`` (None: square samples of ``image_size``)."""

    buckets: Buckets | None = None
    bucket_ids: np.ndarray | None = None

    def _set_buckets(self, options) -> None:
        self.buckets = None if options is None else Buckets.from_options(options, self.image_size)
        self._members = {}

    def _assign_buckets(self, index, keep: np.ndarray, total: int) -> tuple[np.ndarray, dict]:
        """The bucket of each record of ``index`` (-1: none, or not kept) and the drops, by reason."""
        rows = np.flatnonzero(keep)
        view = index.select(rows)
        read = self._header_reader(view)
        widths, heights = record_sizes(view, read, self.data_path, self._latent_sizes(view))
        assigned = np.full(len(index), -1, np.int16)
        assigned[rows] = self.buckets.assign(widths, heights)
        no_size = keep & (assigned == -2)
        outside = keep & (assigned == -1)
        drops = {
            'without a size': self._log_dropped(
                no_size, total, 'have no size for their bucket: no width and height in the index, and their image '
                                'header unreadable' + ('' if read else ' or unreachable (no image_folder: give the '
                                                       'index width and height, or cache the latents with '
                                                       'tools/cache_latents.py, which stores them)')),
            'outside every bucket': self._log_dropped(
                outside, total, f'are more elongated than the buckets allow (max_aspect={self.buckets.max_aspect:g})'),
        }
        assigned[no_size | outside] = -1
        return assigned, drops

    def _header_reader(self, view):
        """``i -> (width, height)`` of record ``i``'s image, or None where the images are not reachable."""
        if not self.decodes_images and self.image_root is None and self.ceph_files is None:
            return None

        def read(i: int) -> tuple[int, int]:
            image_file = view[i].get(self.image_key)
            if not isinstance(image_file, str):
                raise SampleError('bad-record', f'record {i} has no image path')
            return header_size(self.read_image(image_file), image_file)
        return read

    def _latent_sizes(self, view) -> np.ndarray | None:
        """The sizes a latent folder stored for the whole index (``tools/cache_latents.py``), if any."""
        if self.latent_root is None:
            return None
        whole = view.whole()
        return read_sizes(self.latent_info_reader, self.latent_root, whole.content_digest(self.image_key), len(whole))

    def size_table(self) -> tuple[str, np.ndarray]:
        """The picture sizes of this dataset's records as a latent folder stores them: the index's
        image-path digest, and ``int32 [rows of the whole index, 2]`` (0 where unknown or not used)."""
        view = self.index
        widths, heights = record_sizes(view, self._header_reader(view), self.data_path, self._latent_sizes(view))
        whole = view.whole()
        table = np.zeros((len(whole), 2), np.int32)
        known = (widths > 0) & (heights > 0)
        table[view.table_rows()[known]] = np.stack([widths[known], heights[known]], 1).astype(np.int32)
        return whole.content_digest(self.image_key), table

    # ---- per sample -------------------------------------------------------------------------------
    def target_of(self, idx) -> tuple[int, int]:
        """The (height, width) of sample ``idx``: its bucket's shape, else ``image_size`` square."""
        if self.buckets is None:
            return self.image_size, self.image_size
        return self.buckets.shapes[int(self.bucket_ids[int(idx)])]

    def check_bucket(self, image_file: str, original_size: tuple[int, int], target: tuple[int, int] | None) -> None:
        """``SampleError('stale-size')`` for a picture whose size puts it in another bucket than the
        one it was given at start-up (``target``): it changed after its size was read, and its crop
        would be another picture's. The sizes kept beside the index, and the selections made from
        them, are dropped: the next start reads them again. No ``target``: no bucket to keep to."""
        if target is None:
            return
        height, width = original_size
        # Either way up: an index's width and height may be those before the picture's EXIF rotation.
        buckets = self.buckets.assign(np.array([width, height]), np.array([height, width]))
        if any(bucket >= 0 and tuple(self.buckets.shapes[bucket]) == tuple(target) for bucket in buckets.tolist()):
            return
        forget_sizes(self.index.whole())
        raise SampleError('stale-size', f'{self.data_path_of(self.image_root, image_file)}: the picture is {width}x'
                                        f'{height} now, not of the size its bucket {target[1]}x{target[0]} was chosen '
                                        'from at start-up (the index\'s width and height, or the image sizes kept '
                                        'beside its cache, dropped now: read again at the next start)')

    def replacement(self, idx, rng: random.Random) -> int:
        """A random other record to read when sample ``idx`` cannot be used: of ``idx``'s bucket, so
        that its batch keeps one shape (a few random draws, then the bucket's own list)."""
        if self.buckets is None:
            return rng.randrange(len(self))
        bucket = self.bucket_ids[int(idx)]
        for _ in range(REJECTION_DRAWS):
            other = rng.randrange(len(self))
            if self.bucket_ids[other] == bucket:
                return other
        members = self._members.get(int(bucket))
        if members is None:  # a small bucket: listed once in this process
            members = self._members[int(bucket)] = np.flatnonzero(self.bucket_ids == bucket)
        return int(members[rng.randrange(len(members))])
