"""One very large PNG (8000 x 8000, within the 8192^2 pixel bound) to a 256 px sample: upstream's
path (decode, convert, crop, resize) against ``load_pixel_values``, time and peak memory of the
sample alone, each in a fresh process. A PNG cannot be decoded at a reduced scale, so the decode is
the floor; what differs is what is done with the 64 megapixels after it.

    PYTHONPATH=. .venv/bin/python bench/bench_large_png.py [--side 8000 | --small]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(path: str, which: str) -> dict:
    import torch  # noqa: F401  (loaded before the baseline, as in a training worker)
    from bench._mem import peak_rss, reset_peak
    from bench.bench_decode import naive_pixel_values
    from src.datasets.sample.image_io import load_pixel_values
    data = Path(path).read_bytes()
    base = reset_peak()
    start = time.perf_counter()
    if which == 'naive':
        naive_pixel_values(Path(path), 256, random.Random(0))
    else:
        load_pixel_values(data, path, 256, random.Random(0))
    return {'seconds': time.perf_counter() - start, 'peak_mib': (peak_rss() - base) / 2 ** 20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--side', type=int, default=8000)
    parser.add_argument('--small', action='store_true', help='a 3000 px picture')
    parser.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    import numpy as np
    from PIL import Image
    side = 3000 if args.small else args.side
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, 'large.png')
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 200, side, dtype=np.uint8)[None, :, None]
        Image.fromarray((rng.random((side, side, 3)) * 40).astype(np.uint8) + ramp).save(path, compress_level=1)
        print(f'{side} x {side} RGB PNG ({os.path.getsize(path) / 2 ** 20:.0f} MiB) -> 256 x 256, median of 3 fresh processes')
        results = {}
        for which in ('naive', 'ours'):
            runs = [json.loads(subprocess.run([sys.executable, __file__, '--child', path, which], capture_output=True,
                                              text=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO))
                                              ).stdout.strip().splitlines()[-1]) for _ in range(3)]
            results[which] = {key: sorted(run[key] for run in runs)[1] for key in ('seconds', 'peak_mib')}
            print(f'{which:6} {results[which]["seconds"]:6.2f} s   peak +{results[which]["peak_mib"]:6.0f} MiB')
        print(f'naive / ours: {results["naive"]["seconds"] / results["ours"]["seconds"]:.2f}x faster, '
              f'{results["naive"]["peak_mib"] / results["ours"]["peak_mib"]:.2f}x less peak memory')
    return 0


if __name__ == '__main__':
    sys.exit(main())
