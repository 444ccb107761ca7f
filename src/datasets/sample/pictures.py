"""A sample's picture at its target shape (height, width): pixels decoded from its image, its
stored latent, or its image tokens; and its ``Placement`` (where the pixels come from in the
picture), which the sample carries as SDXL-style micro-conditioning where its buckets ask for it.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from src.datasets.errors import SampleError
from src.datasets.sample.files import SampleFiles
from src.datasets.sample.image_io import Placement, load_pixels
from src.datasets.storage.latent_store import LatentShapes

PIXEL_DTYPES = ('float32', 'uint8')
PLACEMENT_KEYS = ('original_size', 'crop_coords')


def placement_values(placement: Placement) -> dict:
    """The sample's ``original_size`` and ``crop_coords`` tensors of ``placement``."""
    return dict(original_size=torch.tensor(placement.original_size), crop_coords=torch.tensor(placement.crop_coords))


@dataclass(frozen=True)
class PictureLoader:
    """The pictures of one dataset's options: ``read_image(image_file) -> bytes`` and the files
    (latents, tokens); ``pixel_shape`` (``image_process``: a shape that follows the picture's);
    ``crop_mode`` (random or centred crops); ``min_image_size`` and ``max_aspect`` (pictures refused
    as upstream refuses them); ``pixel_dtype`` (float32 in [-1, 1], or uint8)."""

    read_image: Callable[[str], bytes]
    files: SampleFiles
    pixel_shape: object = None
    crop_mode: str = 'random'
    min_image_size: int = 80
    max_aspect: float = 10.0
    pixel_dtype: str = 'float32'

    def pixels(self, image_file: str, rng: random.Random, target: tuple[int, int],
               crop: bool) -> tuple[torch.Tensor, Placement]:
        """``[3, height, width]`` of ``image_file`` covering ``target``, cropped (or squeezed whole:
        ``crop=False``), and its placement."""
        if self.pixel_shape is not None:  # image_process: the shape follows the picture's
            target, crop = self.pixel_shape.target, self.pixel_shape.crop
        return load_pixels(
            self.read_image(image_file), self.files.path(self.files.image_root, image_file), target, rng,
            crop_mode=self.crop_mode, min_image_size=self.min_image_size, max_aspect=self.max_aspect,
            crop=crop, normalise=self.pixel_dtype == 'float32')

    def tokens(self, folder: str, image_file: str) -> dict:
        return dict(image_tokens=self.files.load_tensor(folder, image_file).long())

    def latent(self, image_file: str, target: tuple[int, int], shapes: LatentShapes, placed: bool) -> dict:
        """The stored latent of ``image_file`` (``image_latents``), checked against the shape its
        folder records for ``target``; a bucketed latent (a dict, see ``latent_store``; ``placed``)
        adds its ``original_size`` and ``crop_coords``."""
        path, stored = self.files.load_stored(self.files.latent_root, image_file)
        if isinstance(stored, dict) and placed:
            placement = {key: stored.get(key) for key in PLACEMENT_KEYS}
            latent = stored.get('latent')
            if not isinstance(latent, torch.Tensor) or not all(
                    isinstance(v, torch.Tensor) and v.shape == (2,) for v in placement.values()):
                raise SampleError('bad-tensor', f'{path}: a bucketed latent holds a "latent" tensor, "original_size" '
                                                f'and "crop_coords" (2 numbers each); this one holds {sorted(stored)}')
            data = dict(image_latents=latent, **{key: value.long() for key, value in placement.items()})
        elif isinstance(stored, torch.Tensor):
            data = dict(image_latents=stored)
        else:
            raise SampleError('bad-tensor', f'{path}: holds a {type(stored).__name__}, not a tensor'
                              + (' (latents cached with buckets: give the dataset the same buckets)'
                                 if isinstance(stored, dict) else ''))
        shapes.check(data['image_latents'], path, *target)
        return data


def first_latents(files: SampleFiles, image_files):
    """The latents stored for ``image_files`` (an iterable of paths), those that load: what a
    latent folder without a record of its shapes is judged by."""
    for image_file in image_files:
        with contextlib.suppress(SampleError):
            _, stored = files.load_stored(files.latent_root, image_file)
            latent = stored.get('latent') if isinstance(stored, dict) else stored
            if isinstance(latent, torch.Tensor):
                yield latent
