"""uint8 pixels -> the float32 planes in [-1, 1] that a sample holds, in one pass over memory.

numpy and torch take three passes for this (the planes out of the interleaved pixels, the division
into floats, the subtraction), each at the speed of memory: 0.9-1.25 ms for a 512 px square, the
largest cost of a sample after the decode. The loops below read each pixel once and write each
float once, 2.2x faster than numpy (bench/bench_pixel_planes.py). numba compiles them on the first
call in a process and caches the machine code on disk; ``CaptionDataset`` makes that call where it
is built, so that forked DataLoader workers share the code. FFCV builds its loaders' stages the
same way.

The values are exactly ``x.float() / 127.5 - 1``: a float32 division, then a float32 subtraction
(numba keeps IEEE semantics unless asked for fastmath).
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from mmengine.logging import print_log
from numba import njit

_HALF_RANGE, _ONE = np.float32(127.5), np.float32(1.0)


def _compiled(function):
    """``function`` compiled with numba, its machine code cached on disk where numba finds a
    writable folder (``NUMBA_CACHE_DIR``, beside this file, the user's cache folder); where none
    is (read-only code and home), compiled in each process instead: 2 s rather than 1."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available for file ..."
        _say_not_cached()
        return njit(nogil=True)(function)


@functools.cache
def _say_not_cached() -> None:
    print_log(f'numba finds no writable folder to cache the pixel loop of {__file__} in: it is compiled '
              'in each process. Set NUMBA_CACHE_DIR to a writable folder to keep it.',
              logger='current', level=logging.WARNING)


@_compiled
def _pixels_to_planes(row, step, r, g, b):
    # Called with a literal step (3 or 4): once inlined, the loads form an interleaved group of
    # constant stride, which LLVM vectorises; a step only known at run time keeps the loop scalar.
    for x in range(r.shape[0]):
        r[x] = np.float32(row[step * x]) / _HALF_RANGE - _ONE
        g[x] = np.float32(row[step * x + 1]) / _HALF_RANGE - _ONE
        b[x] = np.float32(row[step * x + 2]) / _HALF_RANGE - _ONE


@_compiled
def _plane_to_plane(row, out):
    for x in range(out.shape[0]):
        out[x] = np.float32(row[x]) / _HALF_RANGE - _ONE


@_compiled
def _fill(src, channel_stride, row_stride, pixel_stride, out):
    for y in range(out.shape[1]):
        start = y * row_stride
        if pixel_stride == 4:
            _pixels_to_planes(src[start:], 4, out[0, y], out[1, y], out[2, y])
        elif pixel_stride == 3:
            _pixels_to_planes(src[start:], 3, out[0, y], out[1, y], out[2, y])
        else:
            for c in range(3):
                _plane_to_plane(src[c * channel_stride + start:], out[c, y])


def float_planes(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> contiguous float32 ``[3, H, W]``, ``x / 127.5 - 1``.

    Read in place: pixels stored 3 or 4 bytes apart (Pillow's padded RGB, a decoded array, a crop
    of either, whatever its row stride) and planes with contiguous rows. Any other layout (an EXIF
    transpose) is packed into planes first.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[0] != 3:
        raise ValueError(f'float_planes takes uint8 [3, H, W] pixels, not {pixels.dtype} {list(pixels.shape)}')
    _, height, width = pixels.shape
    chw = pixels.numpy()
    channel_stride, row_stride, pixel_stride = chw.strides
    packed = channel_stride == 1 and pixel_stride in (3, 4) and row_stride >= pixel_stride * width
    planar = pixel_stride == 1 and row_stride >= width and channel_stride >= row_stride * height
    if not (packed or planar):
        chw = np.ascontiguousarray(chw)
        channel_stride, row_stride, pixel_stride = chw.strides
    # The bytes from the first value to the last as one flat view, which the loops index themselves.
    span = 2 * channel_stride + (height - 1) * row_stride + (width - 1) * pixel_stride + 1
    flat = np.lib.stride_tricks.as_strided(chw, shape=(max(span, 0),), strides=(1,), writeable=False)
    out = np.empty((3, height, width), np.float32)
    _fill(flat, channel_stride, row_stride, pixel_stride, out)
    return torch.from_numpy(out)
