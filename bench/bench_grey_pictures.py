"""16-bit and float grey pictures to RGB (``image_io.to_rgb``): the float64 formula over the whole
picture, as before issue 37, against the conversion a band of rows at a time (the same pixels),
time and peak memory of the conversion alone, each in a fresh process.

    PYTHONPATH=. .venv/bin/python bench/bench_grey_pictures.py [--side 8192]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ('I;16', 'F')


def picture(mode: str, side: int):
    import numpy as np
    from PIL import Image
    ramp = np.arange(side * side, dtype=np.uint32).reshape(side, side)
    if mode == 'I;16':
        return Image.frombytes('I;16', (side, side), (ramp % 65536).astype('<u2').tobytes())
    return Image.fromarray((ramp / (side * side)).astype(np.float32), 'F')


def naive_rgb(img):
    """The conversion as it was: float64 copies of the whole picture."""
    import numpy as np
    from PIL import Image
    values = np.asarray(img, dtype=np.float64)
    scale = 255.0 if img.mode == 'F' else 255 / 65535
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), 'L').convert('RGB')


def child(mode: str, side: int, which: str) -> dict:
    import numpy as np
    from bench._mem import peak_rss, reset_peak
    from src.datasets.sample.image_io import to_rgb
    img = picture(mode, side)
    img.load()
    base = reset_peak()
    start = time.perf_counter()
    rgb = naive_rgb(img) if which == 'naive' else to_rgb(img)
    seconds = time.perf_counter() - start
    peak = (peak_rss() - base) / 2 ** 20
    return {'seconds': seconds, 'peak_mib': peak, 'checksum': int(np.asarray(rgb, np.uint64).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--side', type=int, default=8192)
    parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, side, which = args.child
        print(json.dumps(child(mode, int(side), which)))
        return 0
    print(f'{args.side} x {args.side} grey pictures -> RGB, median of 3 fresh processes')
    for mode in MODES:
        results = {}
        for which in ('naive', 'ours'):
            runs = [json.loads(subprocess.run([sys.executable, __file__, '--child', mode, str(args.side), which],
                                              capture_output=True, text=True, check=True,
                                              env=dict(os.environ, PYTHONPATH=str(REPO))).stdout.strip().splitlines()[-1])
                    for _ in range(3)]
            runs.sort(key=lambda run: run['seconds'])
            results[which] = runs[1]
        naive, ours = results['naive'], results['ours']
        assert naive['checksum'] == ours['checksum'], 'the pixels differ'
        print(f'{mode:5s} naive {naive["seconds"]:.2f} s, +{naive["peak_mib"]:.0f} MiB | ours {ours["seconds"]:.2f} s, '
              f'+{ours["peak_mib"]:.0f} MiB | {naive["seconds"] / ours["seconds"]:.1f}x faster, '
              f'{naive["peak_mib"] / max(ours["peak_mib"], 1):.1f}x less memory (same pixels)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
