"""Aspect-ratio buckets: train on whole pictures at their own shape instead of square crops.

A bucket is a target shape ``(height, width)``; every record is assigned, once, to the bucket whose
aspect ratio is nearest its own (in log space: 2:1 and 1:2 are equally far from 1:1), and its
picture is resized to cover the bucket and the remainder cropped. A batch holds one bucket
(``src.datasets.samplers.bucket_sampler``).

Options (``CaptionDataset(buckets=...)``):

- ``dict(table='pixart-256' | 'pixart-512' | 'pixart-1024')``: the aspect tables PixArt-Sigma and
  Sana train with: 40 shapes from 1:4 to 4:1 of about ``N x N`` pixels, sides multiples of
  ``N / 16`` (64 px at 1024);
- ``dict(area=512 * 512, divisor=32, max_aspect=4.0)``: generated equal-area buckets: for each
  width that is a multiple of ``divisor``, the largest height (a multiple of ``divisor`` too) whose
  area stays within ``area``, from 1:``max_aspect`` to ``max_aspect``:1 (``divisor`` 32 for DC-AE's
  f32 latents, 8 or 16 for other autoencoders);
- and with either: ``crop_mode`` ``'random'`` (default) or ``'center'``, and ``max_aspect``: records
  more elongated than that (long side over short) fit no bucket and are dropped, counted (default:
  the most elongated bucket's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# PixArt-Sigma's and Sana's aspect table at 1024 px: the square and 20 portrait shapes, in units of
# 64 px (height, width), each also used turned (landscape) but for 11x21, whose turn the table
# lacks. The 512 and 256 px tables are it halved and quartered.
_PIXART_UNITS = ((16, 16), (8, 32), (8, 31), (8, 30), (8, 29), (9, 28), (9, 27), (9, 26), (10, 25),
                 (10, 24), (11, 23), (11, 22), (11, 21), (12, 21), (12, 20), (13, 19), (13, 18),
                 (14, 18), (14, 17), (15, 17), (15, 16))
_PIXART_UNTURNED = {(11, 21)}
TABLES = {f'pixart-{side}': side for side in (256, 512, 1024)}
CROP_MODES = ('random', 'center')
OPTIONS = ('table', 'area', 'divisor', 'max_aspect', 'crop_mode')


def pixart_shapes(side: int) -> list[tuple[int, int]]:
    """The (height, width) of PixArt's ``ASPECT_RATIO_<side>`` table, from 1:4 to 4:1."""
    unit = side // 16
    units = set(_PIXART_UNITS) | {(w, h) for h, w in _PIXART_UNITS if (h, w) not in _PIXART_UNTURNED}
    return sorted(((h * unit, w * unit) for h, w in units), key=lambda shape: shape[0] / shape[1])


def equal_area_shapes(area: int, divisor: int, max_aspect: float) -> list[tuple[int, int]]:
    """(height, width) with both sides multiples of ``divisor``, area at most ``area``, as large as
    that allows for each width, from 1:``max_aspect`` to ``max_aspect``:1; and the square."""
    side = int(math.sqrt(area)) // divisor * divisor
    shapes = {(side, side)}
    for width in range(divisor, int(math.sqrt(area * max_aspect)) + divisor, divisor):
        height = area // width // divisor * divisor
        if height >= divisor and max(height / width, width / height) <= max_aspect:
            shapes |= {(height, width), (width, height)}
    return sorted(shapes, key=lambda shape: shape[0] / shape[1])


@dataclass(frozen=True)
class Buckets:
    """The shapes, how a picture is cropped to one, and which pictures fit none."""

    shapes: tuple[tuple[int, int], ...]  # (height, width), by aspect ratio
    crop_mode: str = 'random'
    max_aspect: float = 4.0
    options: tuple = ()  # the options as given, sorted: what a latent folder records

    @classmethod
    def from_options(cls, options: dict, image_size: int | None = None) -> 'Buckets':
        """``CaptionDataset(buckets=...)``; ``image_size`` is checked against a named table."""
        options = dict(options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f'buckets={options!r}: unknown option(s) {unknown}; the options are {list(OPTIONS)}')
        crop_mode = options.get('crop_mode', 'random')
        if crop_mode not in CROP_MODES:
            raise ValueError(f"buckets crop_mode={crop_mode!r}: one of {CROP_MODES}")
        if 'table' in options:
            table = options['table']
            if table not in TABLES or {'area', 'divisor'} & set(options):
                raise ValueError(f'buckets={options!r}: table is one of {sorted(TABLES)} (and takes no area or '
                                 'divisor: give those without a table to generate buckets)')
            if image_size is not None and image_size != TABLES[table]:
                raise ValueError(f'buckets table {table!r} is for image_size {TABLES[table]}, the dataset has '
                                 f'image_size={image_size}: set image_size={TABLES[table]}, or use the table '
                                 f'pixart-{image_size}' + ('' if f'pixart-{image_size}' in TABLES else
                                                           ' (there is none: generate buckets with area=...)'))
            shapes = pixart_shapes(TABLES[table])
        elif 'area' in options:
            area, divisor = int(options['area']), int(options.get('divisor', 32))
            aspect = float(options.get('max_aspect', 4.0))
            if area < divisor * divisor or divisor <= 0 or aspect < 1:
                raise ValueError(f'buckets={options!r}: needs area >= divisor ** 2, divisor > 0, max_aspect >= 1')
            shapes = equal_area_shapes(area, divisor, aspect)
        else:
            raise ValueError(f"buckets={options!r}: give table='pixart-512' (or 256, 1024), or "
                             "area=..., divisor=..., max_aspect=...")
        widest = max(max(h / w, w / h) for h, w in shapes)
        max_aspect = float(options.get('max_aspect', widest))
        return cls(tuple(shapes), crop_mode, max_aspect, tuple(sorted(options.items())))

    @classmethod
    def square(cls, image_size: int) -> 'Buckets':
        """Square crops of ``image_size``: the table of one bucket that every picture fits, whatever
        its size (its records need none). It is what a dataset without ``buckets`` trains on."""
        return cls(((image_size, image_size),), 'random', math.inf, ())

    @property
    def placed(self) -> bool:
        """Whether records are assigned by their pictures' sizes and samples carry their placement
        (``original_size``, ``crop_coords``): a configured table's are and do; the square table's,
        as upstream's square crops, are not and do not (and it is recorded as no buckets)."""
        return bool(self.options)

    def bucket_of(self, bucket_ids, idx) -> int:
        """The bucket of record ``idx`` (``bucket_ids``: each record's; a table of one needs none)."""
        return int(bucket_ids[int(idx)]) if len(self.shapes) > 1 else 0

    def __len__(self) -> int:
        return len(self.shapes)

    def assign(self, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Per picture (upright width, height): the index of its bucket (nearest aspect ratio in log
        space), -1 where it fits none (more elongated than ``max_aspect``) and -2 where its size is
        unknown (NaN or not positive)."""
        widths, heights = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
        known = (widths > 0) & (heights > 0)
        with np.errstate(divide='ignore', invalid='ignore'):
            log_aspect = np.where(known, np.log(heights / widths), 0.0)
        bucket_logs = np.log([h / w for h, w in self.shapes])
        midpoints = (bucket_logs[1:] + bucket_logs[:-1]) / 2
        assigned = np.searchsorted(midpoints, log_aspect).astype(np.int16)
        assigned[np.abs(log_aspect) > math.log(self.max_aspect) + 1e-9] = -1
        assigned[~known] = -2
        return assigned

    def label(self) -> str:
        """A short name of these buckets, for a folder: the table's, or ``area<A>-d<D>-a<max aspect>``."""
        options = dict(self.options)
        if not self.placed:
            return f'square{self.shapes[0][0]}'
        if 'table' in options:
            return str(options['table'])
        return f"area{options['area']}-d{options.get('divisor', 32)}-a{self.max_aspect:g}"

    def record(self) -> dict | None:
        """What a latent folder (and a selection) records of these buckets: what decides each
        record's latent shape; None for the square table, as for a dataset without buckets."""
        if not self.placed:
            return None
        return {'shapes': [self.key(b) for b in range(len(self))], 'max_aspect': self.max_aspect}

    def key(self, bucket: int) -> str:
        height, width = self.shapes[bucket]
        return f'{height}x{width}'


def kept_area(width: float, height: float, target: tuple[int, int]) -> float:
    """The share of a ``width`` x ``height`` picture that covering ``target`` (height, width) and
    cropping the rest keeps (a square crop: ``target`` square)."""
    target_h, target_w = target
    scale = max(target_w / width, target_h / height)
    return (target_w / scale) * (target_h / scale) / (width * height)
