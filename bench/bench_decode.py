"""Per-sample decode time: the upstream image path vs ``image_io.load_pixel_values``.

Both read the file, take a random square crop of side min(w, h) and resize it to image_size x
image_size, and return a [3, S, S] float tensor in [-1, 1]. Naive is upstream OpenUni's path: full
decode, convert('RGB'), crop, resize, numpy -> tensor. Ours decodes JPEGs at a reduced DCT scale
and crops + resizes in one pass. Single process; one warm-up pass of each is excluded.

    PYTHONPATH=. .venv/bin/python bench/bench_decode.py [--small]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.datasets.sample.image_io import load_pixel_values, random_square_box
from src.synthetic.images import encode_image


def naive_pixel_values(path: Path, image_size: int, rng: random.Random) -> torch.Tensor:
    img = Image.open(path)
    img = img.convert('RGB')
    img = img.crop(random_square_box(img.size, rng))
    img = img.resize((image_size, image_size))
    pixels = torch.from_numpy(np.array(img)).float() / 255 * 2 - 1
    return pixels.permute(2, 0, 1)


def our_pixel_values(path: Path, image_size: int, rng: random.Random) -> torch.Tensor:
    return load_pixel_values(path.read_bytes(), str(path), image_size, rng)


def make_files(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        width, height = (2048, 1536) if i % 2 == 0 else (1536, 2048)
        path = folder / f'{i:03d}_{width}x{height}.jpg'
        path.write_bytes(encode_image(width, height, 'JPEG', 'RGB', seed=i, quality=90))
        paths.append(path)
    return paths


def ms_per_sample(load, paths: list[Path], image_size: int, rounds: int) -> tuple[float, float]:
    """Wall-clock and CPU ms per file: medians over ``rounds``, after one untimed warm-up pass.

    CPU time is what a data worker spends; it also holds steady when other jobs share the machine.
    """
    for i, path in enumerate(paths):
        load(path, image_size, random.Random(i))
    wall, cpu = [], []
    for _ in range(rounds):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for i, path in enumerate(paths):
            load(path, image_size, random.Random(i))
        wall.append((time.perf_counter() - wall_start) / len(paths) * 1e3)
        cpu.append((time.process_time() - cpu_start) / len(paths) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='10 files and 2 rounds: a quick check')
    parser.add_argument('--num-files', type=int, default=50)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--image-size', type=int, default=512)
    args = parser.parse_args()
    num_files, rounds = (10, 2) if args.small else (args.num_files, args.rounds)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), num_files)
        naive_ms = ms_per_sample(naive_pixel_values, paths, args.image_size, rounds)
        ours_ms = ms_per_sample(our_pixel_values, paths, args.image_size, rounds)
        # The same rng gives the same crop on both paths; compare in [0, 255] units.
        differences = [
            (naive_pixel_values(p, args.image_size, random.Random(i))
             - our_pixel_values(p, args.image_size, random.Random(i))).abs().mul(127.5)
            for i, p in enumerate(paths)]

    mean_abs = statistics.mean(float(d.mean()) for d in differences)
    print(f'{num_files} JPEGs 2048x1536 / 1536x2048 (quality 90) -> {args.image_size}x{args.image_size}, '
          f'median of {rounds} rounds, single process')
    print(f'{"path":<28}{"wall ms":>9}{"speed-up":>10}{"CPU ms":>9}{"speed-up":>10}')
    for label, (wall, cpu) in [('naive (upstream)', naive_ms), ('ours (load_pixel_values)', ours_ms)]:
        print(f'{label:<28}{wall:>9.2f}{naive_ms[0] / wall:>9.2f}x{cpu:>9.2f}{naive_ms[1] / cpu:>9.2f}x')
    print(f'mean |naive - ours| over the same crops: {mean_abs:.2f} / 255 '
          f'(worst file {max(float(d.mean()) for d in differences):.2f}, '
          f'99.9th percentile pixel {np.percentile(torch.cat([d.flatten() for d in differences]).numpy(), 99.9):.1f})')


if __name__ == '__main__':
    main()
