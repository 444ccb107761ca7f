"""uint8 pixels -> the float32 planes in [-1, 1] a sample holds, exactly ``x.float() / 127.5 - 1``.

The compiled loop (``_planes.c``) where the install built it, numpy a plane at a time otherwise: the
same floats either way.
"""
from __future__ import annotations

import numpy as np
import torch

try:  # built at install where a C compiler is found (setup.py); numpy otherwise, the same floats
    from src.datasets.sample._planes import normalise as _compiled_normalise
except ImportError:
    _compiled_normalise = None

_HALF_RANGE, _ONE = np.float32(127.5), np.float32(1.0)


def float_planes(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]`` in any layout -> contiguous float32 planes in [-1, 1], exactly
    ``x.float() / 127.5 - 1``.

    One pass in the compiled loop (``src/datasets/sample/_planes.c``: a table of the 256 results);
    without it, numpy a plane at a time (``_numpy_normalise``). numba did the one pass too, but
    cost every process that built a dataset a heavy import and a compilation (bench/RESULTS.md,
    "Float planes").
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[0] != 3:
        raise ValueError(f'float_planes takes uint8 [3, H, W] pixels, not {pixels.dtype} {list(pixels.shape)}')
    if _compiled_normalise is None:
        return _numpy_normalise(pixels)
    planes = np.empty(pixels.shape, np.float32)
    _compiled_normalise(pixels.numpy(), planes)
    return torch.from_numpy(planes)


def _numpy_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """``float_planes`` in numpy: five passes over each plane where the compiled loop makes one. Its
    bytes gathered, widened to float, divided and shifted in place, a plane at a time (closer to
    the cache than the whole). No exact formula needs fewer float passes: ``x / 127.5 - 1`` rounds
    twice, and every one-rounding form (``x * (1 / 127.5) - 1``, ``(x - 127.5) / 127.5``) differs
    from it on 111-174 of the 256 values. Pillow's and the resize's 4-byte pixels are read as one
    little-endian word each, a channel being a shift and a narrowing cast: faster than numpy's
    byte-strided gather."""
    planes = np.empty(pixels.shape, np.float32)
    plane = np.empty(pixels.shape[1:], np.uint8)
    for channel, out in zip(_channel_bytes(pixels), planes):
        np.copyto(plane, channel, casting='unsafe')  # a word's low byte, or the byte itself
        np.copyto(out, plane)
        np.divide(out, _HALF_RANGE, out=out)
        np.subtract(out, _ONE, out=out)
    return torch.from_numpy(planes)


def _channel_bytes(pixels: torch.Tensor):
    """The three channels of ``pixels``, one at a time, each an ``[H, W]`` array whose low byte is
    the channel: shifted 4-byte words where each pixel is 4 bytes (channel bytes first), else the
    channel's byte view."""
    array = pixels.numpy()
    height, width = pixels.shape[1:]
    stride_h, stride_w = pixels.stride(1), pixels.stride(2)
    last = pixels.storage_offset() + (height - 1) * stride_h + (width - 1) * stride_w + 3
    if (pixels.stride(0) != 1 or stride_h % 4 or stride_w % 4 or stride_h < 0 or stride_w < 0
            or last >= pixels.untyped_storage().nbytes()):
        yield from array
        return
    words = pixels.as_strided((height, width, 4), (stride_h, stride_w, 1)).numpy().view('<u4')[..., 0]
    shifted = np.empty((height, width), np.uint32)
    yield words
    for shift in (8, 16):
        yield np.right_shift(words, shift, out=shifted)
