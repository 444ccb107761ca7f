"""The second generation's ``image_process`` (deepgen, Puffin): how a picture becomes ``pixel_values``.

- ``'crop2square'``: a random square crop resized to ``image_size`` (the first generation's way);
- ``'resize2square'``: the whole picture squeezed to ``image_size`` square;
- ``'dynamic'``: the whole picture resized so that its long side is ``image_size`` (a smaller one
  keeps its size), each side rounded up to a multiple of ``unit_image_size``;
- ``'fix_pixels'``: the whole picture resized to about ``image_size ** 2`` pixels, its aspect kept,
  each side rounded up to a multiple of ``unit_image_size``.

The shapes are the forks' own arithmetic (``math.ceil`` of the scaled side), so that a model trained
there sees the same shapes here; the decode itself is the project's (``image_io.load_pixels``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

IMAGE_PROCESSES = ('crop2square', 'resize2square', 'dynamic', 'fix_pixels')


def _up(side: float, unit: int) -> int:
    return math.ceil(side / unit) * unit


def dynamic_size(width: int, height: int, image_size: int, unit: int = 32) -> tuple[int, int]:
    """(width, height) of ``'dynamic'``: the long side at most ``image_size``, multiples of ``unit``."""
    if width >= height and width >= image_size:
        return image_size, _up(height * (image_size / width), unit)
    if height >= width and height >= image_size:
        return _up(width * (image_size / height), unit), image_size
    return _up(width, unit), _up(height, unit)


def fix_pixels_size(width: int, height: int, image_size: int, unit: int = 32) -> tuple[int, int]:
    """(width, height) of ``'fix_pixels'``: about ``image_size ** 2`` pixels, multiples of ``unit``."""
    ratio = image_size / ((height * width) ** 0.5)
    return _up(width * ratio, unit), _up(height * ratio, unit)


@dataclass(frozen=True)
class ImageProcess:
    """One ``image_process`` for one ``image_size`` and ``unit_image_size``: whether the picture is
    cropped, and the (height, width) it becomes, given its (width, height)."""
    name: str
    image_size: int
    unit_image_size: int = 32

    def __post_init__(self):
        if self.name not in IMAGE_PROCESSES:
            raise ValueError(f'image_process={self.name!r}: one of {IMAGE_PROCESSES}')

    @property
    def crop(self) -> bool:
        return self.name == 'crop2square'

    def target(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the picture of ``size`` = (width, height)."""
        if self.name == 'dynamic':
            width, height = dynamic_size(*size, self.image_size, self.unit_image_size)
        elif self.name == 'fix_pixels':
            width, height = fix_pixels_size(*size, self.image_size, self.unit_image_size)
        else:
            width = height = self.image_size
        return height, width


def pixel_shape(image_process: str | None, image_size: int, unit_image_size: int = 32,
                buckets=None) -> ImageProcess | None:
    """The dataset's ``ImageProcess`` (None: the project's own square crops, or its buckets)."""
    if image_process is None:
        return None
    if buckets is not None:
        raise ValueError(f'image_process={image_process!r} and buckets both set the pictures\' shapes: give one')
    return ImageProcess(image_process, image_size, unit_image_size)
