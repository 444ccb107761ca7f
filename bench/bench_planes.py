"""uint8 pixels -> float planes in [-1, 1] (``planes.float_planes``: the compiled loop, and the numpy
one used where it is not built), against the ways it was done before and the torch one-liner, on
Pillow's own 4-byte pixels of a 512 px picture (as the dataset hands them over), one thread, as a
DataLoader worker runs. Every variant is checked bit for bit against ``x.float() / 127.5 - 1``;
medians of interleaved rounds.

    PYTHONPATH=. .venv/bin/python bench/bench_planes.py [--small]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.sample import image_io, planes  # noqa: E402

HALF, ONE = np.float32(127.5), np.float32(1)


def bytes_planes_whole(pixels: torch.Tensor) -> torch.Tensor:
    """Before: all three planes made while bytes (numpy's strided gather), then one division into
    the float planes and one subtraction over all of them."""
    planes = np.empty(pixels.shape, np.float32)
    np.divide(np.ascontiguousarray(pixels.numpy()), HALF, out=planes, dtype=np.float32)
    np.subtract(planes, ONE, out=planes)
    return torch.from_numpy(planes)


def divide_strided(pixels: torch.Tensor) -> torch.Tensor:
    """Before that: the division reads the 4-byte pixels where they are."""
    planes = np.empty(pixels.shape, np.float32)
    np.divide(pixels.numpy(), HALF, out=planes, dtype=np.float32)
    np.subtract(planes, ONE, out=planes)
    return torch.from_numpy(planes)


def torch_channels_last(pixels: torch.Tensor) -> torch.Tensor:
    """The one-liner: fast, but its result keeps the pixels' strides (the batch's stack then transposes)."""
    return pixels.float().div_(127.5).sub_(1)


def torch_planes(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(127.5).sub_(1).contiguous()


VARIANTS = {'one pass, the compiled loop (the code)': planes.float_planes,
            'numpy a plane at a time (the code without a C compiler)': planes._numpy_normalise,
            'bytes made planes, then divide + subtract (before)': bytes_planes_whole,
            'divide from the 4-byte pixels + subtract (before that)': divide_strided,
            'torch float().div_().sub_(), planes': torch_planes,
            'torch float().div_().sub_(), channels-last strides': torch_channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true', help='fewer rounds')
    args = parser.parse_args()
    rounds, repeats = (5, 5) if args.small else (30, 20)
    if planes._compiled_normalise is None:
        sys.exit('the compiled loop is not built (src/datasets/sample/_planes.c): run make, with a C compiler installed')
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    with warnings.catch_warnings():  # Pillow's memory is read-only, as in the dataset: nothing writes it
        warnings.simplefilter('ignore', UserWarning)
        pixels = torch.from_numpy(image_io._pixels_of(picture)).permute(2, 0, 1)[:3]  # [3, H, W] view
    reference = pixels.float() / 127.5 - 1
    for name, variant in VARIANTS.items():
        assert torch.equal(variant(pixels), reference), name
    times = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, variant in VARIANTS.items():
            start = time.perf_counter()
            for _ in range(repeats):
                variant(pixels)
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    print(f'512 x 512 px from Pillow 4-byte pixels {tuple(pixels.stride())}, CPU ms, one thread, '
          f'medians of {rounds} rounds of {repeats}')
    ours = statistics.median(times[next(iter(VARIANTS))])
    for name, values in times.items():
        median = statistics.median(values)
        print(f'  {name:54} {median:6.3f} ms  {median / ours:5.2f}x the code')


if __name__ == '__main__':
    main()
