"""What a latent folder holds, as its writer recorded it: ``latents.json`` beside the latents
(``tools/cache_latents.py`` writes it; upstream's script does not).

    {"format": 1, "vae": "<hub id or folder>", "vae_kind": "AutoencoderDC", "image_size": 512,
     "buckets": null, "shapes": {"512x512": [32, 16, 16]}}

With aspect-ratio buckets, ``buckets`` is their record (``Buckets.record()``: the shapes and the
largest aspect ratio), ``shapes`` has one entry per bucket, each latent file holds a dict
(``latent``, ``original_size``, ``crop_coords``: the crop is fixed when the latent is made), and
``sizes`` names ``image_sizes.npy``: every record's picture size (``int32 [rows, 2]``, by row of
the index whose image-path digest it gives), from which a dataset reading the latents alone
assigns the same buckets.

``shapes`` maps the pixel size an image was cropped to (``<height>x<width>``: one square, or one per
aspect-ratio bucket) to the shape of its latent. A dataset reading the folder refuses, at start-up,
options that disagree with it (another ``image_size`` or bucket table), and each latent whose shape
is not the one recorded for its size: latents of another VAE or resolution would otherwise reach
``collate`` and fail there, naming no file.
"""
from __future__ import annotations

import itertools
import json
import os
from collections import Counter

import numpy as np
import torch

from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.storage.stored_arrays import load_array

INFO_NAME = 'latents.json'
SIZES_NAME = 'image_sizes.npy'
FORMAT = 1


def size_key(height: int, width: int) -> str:
    return f'{height}x{width}'


def read_info(read, folder: str) -> dict | None:
    """The info of ``folder`` through ``read(path) -> bytes`` (the folder's reader: files, shards or
    objects), or None when it has none."""
    path = os.path.join(folder, INFO_NAME)
    try:
        data = read(path)
    except SampleError as err:
        if err.reason == 'missing-file':
            return None
        raise IndexFormatError(f'{path}: {err}') from None
    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        raise IndexFormatError(f'{path}: not readable JSON: the latent folder\'s record of what it holds') from None
    if not isinstance(info, dict) or not isinstance(info.get('shapes'), dict):
        raise IndexFormatError(f'{path}: not a latent folder record (no "shapes")')
    for key, shape in info['shapes'].items():
        if not (isinstance(shape, list) and shape and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                          for n in shape)):
            raise IndexFormatError(f'{path}: "shapes" maps {key!r} to {type(shape).__name__} {_short(shape)}, not a '
                                   'latent shape (a list of positive integers)')
    return info


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + '...'


def check_options(info: dict, folder: str, image_size: int, buckets) -> None:
    """Refuse a dataset whose image size or buckets are not those the latents were made with."""
    recorded = {'image_size': info.get('image_size'), 'buckets': info.get('buckets')}
    wanted = {'image_size': image_size, 'buckets': buckets}
    if recorded['buckets'] is None and wanted['buckets'] is None:
        recorded.pop('buckets'), wanted.pop('buckets')
    else:
        recorded.pop('image_size'), wanted.pop('image_size')  # the buckets decide every size
    if recorded != wanted:
        if recorded.get('buckets') is not None and wanted.get('buckets') is not None:
            raise ValueError(f'{os.path.join(folder, INFO_NAME)}: the latents were made with other buckets '
                             f'({_describe(recorded["buckets"])}; vae {info.get("vae")}) than the dataset asks for '
                             f'({_describe(wanted["buckets"])}): cache the latents again with the dataset\'s '
                             'buckets, or set them as the latents were made')
        raise ValueError(f'{os.path.join(folder, INFO_NAME)}: the latents were made with {recorded} (vae '
                         f'{info.get("vae")}), the dataset asks for {wanted}: cache the latents again with the '
                         "dataset's options, or point image_latents_folder at latents made with them")


def _describe(record: dict) -> str:
    shapes = record.get('shapes', [])
    return f'{len(shapes)} shapes from {shapes[0]} to {shapes[-1]}, max_aspect {record.get("max_aspect")}' \
        if shapes else repr(record)


def read_sizes(read, folder: str, index_digest: str, rows: int) -> np.ndarray | None:
    """The picture sizes the folder stored (``SIZES_NAME``) for the index whose image-path digest is
    ``index_digest``, or None (none stored, or stored for another index)."""
    info = read_info(read, folder)
    recorded = (info or {}).get('sizes')
    if not isinstance(recorded, dict) or recorded.get('index') != index_digest:
        return None
    path = os.path.join(folder, SIZES_NAME)
    try:
        sizes = load_array(read(path), name=path)
    except (SampleError, ValueError, OSError) as err:  # DamagedArray is a ValueError
        raise IndexFormatError(f'{path}: unreadable ({err}); {INFO_NAME} says it holds the image sizes') from None
    if sizes.dtype != np.int32 or sizes.shape != (rows, 2):
        raise IndexFormatError(f'{path}: a {sizes.dtype} array of shape {sizes.shape}, not int32 [{rows}, 2] '
                               'for the index\'s records')
    return sizes


PROBED = 5  # latents looked at in a folder without a record


class LatentShapes:
    """The latent shape expected for each image size of a latent folder, and the check of one latent."""

    def __init__(self, folder: str, info: dict | None, shapes: dict[str, tuple], source: str):
        self.folder, self.info, self.shapes, self.source = folder, info, shapes, source

    @classmethod
    def of_folder(cls, folder: str, read, image_size: int, buckets, first_latents) -> 'LatentShapes':
        """From the folder's record (``read(path) -> bytes`` is its reader), its options checked
        against the dataset's; a folder without one (upstream's script made it) expects the shape
        most of ``first_latents`` (an iterable of tensors, read lazily) have."""
        info = read_info(read, folder)
        if info is not None:
            check_options(info, folder, image_size, buckets)
            if info['shapes']:
                return cls(folder, info, {key: tuple(shape) for key, shape in info['shapes'].items()},
                           f'recorded in {os.path.join(folder, INFO_NAME)}')
        counts = Counter()
        for latent in itertools.islice(first_latents, PROBED):
            counts[tuple(latent.shape)] += 1
        square = {size_key(image_size, image_size): counts.most_common(1)[0][0]} if counts and buckets is None else {}
        return cls(folder, info, square, f'the shape most of the first latents of {folder} have; it records none')

    def check(self, latent, path: str, height: int, width: int) -> None:
        """``SampleError('bad-latent-shape')`` naming ``path`` when ``latent`` is not of the shape
        expected for an image of ``height`` x ``width``."""
        if latent.layout != torch.strided or not latent.is_floating_point():
            raise SampleError('bad-tensor', f'{path}: a {str(latent.layout).replace("torch.", "")} {latent.dtype} '
                                            'tensor, not a dense floating-point latent')
        bad = int(latent.numel() - torch.isfinite(latent).sum())
        if bad:
            raise SampleError('bad-latent-values', f'{path}: {bad} of its {latent.numel()} values are NaN or infinite')
        expected = self.shapes.get(size_key(height, width))
        if expected is not None and tuple(latent.shape) != expected:
            raise SampleError('bad-latent-shape', f'{path}: a latent of shape {list(latent.shape)}, not '
                                                  f'{list(expected)} ({self.source})')
