"""Aspect-ratio buckets against square crops: the picture area a sample keeps, and what a sample costs.

1. Area kept, over picture sizes like the seeds' datasets: DALL-E 3's three sizes (1024x1024,
   1792x1024, 1024x1792, in equal shares) and a Midjourney-like spread of aspect ratios (the shares
   below are an assumption, not a count of the 23M records); square crops against the PixArt/Sana
   tables at 512 and 1024, and generated equal-area buckets (divisor 32, max aspect 4).
2. Per-sample cost: ``CaptionDataset.__getitem__`` on JPEGs of that mix to 512 px, square crops
   (512 x 512) against ``buckets=dict(table='pixart-512')`` (about as many pixels a sample), CPU ms
   of one thread as a DataLoader worker runs, medians of interleaved rounds; the goal is 1.1x at
   most. Beside it, what buckets add to construction: the first one (every image header read, in
   parallel, and stored) and the later ones (the stored sizes), and to each process's memory.

    PYTHONPATH=. .venv/bin/python bench/bench_buckets.py [--small]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._mem import peak_rss, reset_peak  # noqa: E402
from src.datasets.sample.buckets import Buckets, kept_area  # noqa: E402

DALLE3 = {(1024, 1024): 1, (1792, 1024): 1, (1024, 1792): 1}
# (width, height): share. Midjourney's --ar choices as its downloads hold them (an assumed spread).
MIDJOURNEY = {(1024, 1024): 0.40, (1456, 816): 0.16, (816, 1456): 0.07, (1232, 928): 0.09, (928, 1232): 0.08,
              (1344, 896): 0.08, (896, 1344): 0.07, (1536, 640): 0.03, (640, 1536): 0.02}
BUCKETS = {'square crop': None, 'pixart-512': dict(table='pixart-512'), 'pixart-1024': dict(table='pixart-1024'),
           'equal area 512^2, /32, 4:1': dict(area=512 * 512, divisor=32, max_aspect=4.0)}


def area_kept() -> None:
    print('1. picture area a sample keeps (mean over the mix, weighted by share)')
    print(f'   {"buckets":<28}{"DALL-E 3":>10}{"Midjourney-like":>17}')
    for label, options in BUCKETS.items():
        row = []
        for mix in (DALLE3, MIDJOURNEY):
            sizes, shares = np.array(list(mix), np.float64), np.array(list(mix.values()), np.float64)
            if options is None:
                kept = [kept_area(w, h, (1, 1)) for w, h in sizes]
            else:
                buckets = Buckets.from_options(options)
                assigned = buckets.assign(sizes[:, 0], sizes[:, 1])
                kept = [kept_area(w, h, buckets.shapes[b]) for (w, h), b in zip(sizes, assigned)]
            row.append(float(np.average(kept, weights=shares)))
        print(f'   {label:<28}{row[0]:>10.1%}{row[1]:>17.1%}')


def make_data(folder: Path, per_shape: int) -> Path:
    from src.synthetic.images import encode_image
    (folder / 'images').mkdir(parents=True)
    records = []
    shapes = list(DALLE3) + [s for s in MIDJOURNEY if s not in DALLE3]
    for i in range(per_shape * len(shapes)):
        width, height = shapes[i % len(shapes)]
        name = f'{i:04d}.jpg'
        (folder / 'images' / name).write_bytes(encode_image(width, height, 'JPEG', seed=i, quality=90))
        records.append({'image': name, 'caption': f'a picture of {width} by {height}, number {i}'})
    (folder / 'data.json').write_text(json.dumps(records))
    return folder


def build(folder: Path, tokenizer, template, buckets):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    return CaptionDataset(str(folder / 'data.json'), image_folder=str(folder / 'images'), tokenizer=tokenizer,
                          prompt_template=template, image_size=512, unconditional=0.0, seed=0, buckets=buckets)


def per_sample(folder: Path, rounds: int) -> None:
    from mmengine.config import Config
    from transformers import AutoTokenizer

    from src.synthetic.tokenizer import build_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder / 'tokenizer'))
    template = Config.fromfile(str(ROOT / 'configs' / 'processors.py')).prompt_template.to_dict()
    build(folder, tokenizer, template, None)  # the index cache, made once for both

    print('\n2. construction and memory (the index cached; the image sizes not yet)')
    timings = {}
    for label, options in (('square crop', None), ('pixart-512, first', dict(table='pixart-512')),
                           ('pixart-512, later', dict(table='pixart-512'))):
        baseline = reset_peak()
        start = time.perf_counter()
        datasets = build(folder, tokenizer, template, options)
        timings[label] = datasets
        print(f'   {label:<22}{(time.perf_counter() - start) * 1e3:9.1f} ms   peak RSS +{(peak_rss() - baseline) / 2**20:.1f} MiB')
    square, bucketed = timings['square crop'], timings['pixart-512, later']

    torch.set_num_threads(1)
    n = len(square)
    times = {'square crop': [], 'pixart-512': []}
    for round_ in range(rounds + 1):
        spent = dict.fromkeys(times, 0.0)
        for i in range(n):
            order = [('square crop', square), ('pixart-512', bucketed)]
            for label, dataset in (order if (i + round_) % 2 else order[::-1]):
                start = time.process_time()
                dataset[i]
                spent[label] += time.process_time() - start
        if round_:
            for label in times:
                times[label].append(spent[label] / n * 1e3)
    pixels = {'square crop': 512 * 512,
              'pixart-512': float(np.mean([np.prod(bucketed.target_of(i)) for i in range(n)]))}
    print(f'\n3. __getitem__, {n} JPEGs of the mix to 512 px: CPU ms per sample (one thread), medians of {rounds} rounds')
    for label, values in times.items():
        print(f'   {label:<22}{statistics.median(values):9.2f} ms   {pixels[label] / 1e3:6.0f} k pixels a sample')
    ratio = statistics.median(b / a for a, b in zip(times['square crop'], times['pixart-512']))
    print(f'   buckets / square: {ratio:.2f}x per sample (goal: at most 1.1x)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='one picture a size and 2 rounds: a quick check')
    parser.add_argument('--per-shape', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    area_kept()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_data(Path(tmp), 1 if args.small else args.per_shape)
        per_sample(folder, 2 if args.small else args.rounds)


if __name__ == '__main__':
    main()
