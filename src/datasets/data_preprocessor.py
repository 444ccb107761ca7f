"""``T2IDataPreprocessor``: the model's ``data_preprocessor`` (mmengine's way) for batches of uint8
pixels (``CaptionDataset(pixel_dtype='uint8')``): the batch moved to the model's device, then its
pixels normalised there to upstream's float32 [-1, 1], bit for bit what the workers would have made.

A worker that hands uint8 pixels moves a quarter of the bytes of float32 ones and skips the
normalising pass; the device does it in one elementwise kernel. Float pixels (the default path)
pass unchanged, so the preprocessor may stay in a config whichever dtype the dataset gives.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import MODELS

PIXEL_KEYS = ('pixel_values', 'pixel_values_src')  # the project's batch keys that hold pixels


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: ``x.float() / 127.5 - 1``, the very floats of the default path."""
    return pixels.float().div_(127.5).sub_(1)


def normalise_batch(data, keys: Sequence[str] = PIXEL_KEYS):
    """``data`` (a batch, or any nesting of dicts and lists of them) with each uint8 tensor under
    ``keys`` normalised; other values as they were."""
    if isinstance(data, dict):
        return {key: normalise_pixels(value) if key in keys and isinstance(value, torch.Tensor)
                and value.dtype == torch.uint8 else normalise_batch(value, keys)
                for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(normalise_batch(value, keys) for value in data)
    return data


@MODELS.register_module()
class T2IDataPreprocessor(BaseDataPreprocessor):
    """mmengine's ``BaseDataPreprocessor`` (the batch cast to the model's device), then the uint8
    pixels under ``keys`` normalised on the device (:func:`normalise_pixels`). In a model config:
    ``data_preprocessor=dict(type=T2IDataPreprocessor)``."""

    def __init__(self, keys: Sequence[str] = PIXEL_KEYS, non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        self.keys = tuple(keys)

    def forward(self, data: dict, training: bool = False) -> dict:
        return normalise_batch(self.cast_data(data), self.keys)
