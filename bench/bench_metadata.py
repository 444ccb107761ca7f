"""midjourney-23m metadata build (raw/table-*.parquet -> data.json): the guide's process_metadata.py
(pandas iterrows, os.path.exists per row, json.dump with indent=2) against src/prepare/midjourney.py
(column-wise Arrow checks against one scan of images/, JSON text joined by Arrow kernels), in one
run on the same synthetic tables and empty image files; each runs --repeat times, alternating, and
its best time counts. Both outputs are loaded back and compared. --profile runs ours once more
under cProfile and prints where its time goes.

    PYTHONPATH=. .venv/bin/python bench/bench_metadata.py [--rows N] [--tables 5] [--repeat 3] [--small] [--profile]
"""
import argparse
import cProfile
import glob
import json
import os
import pstats
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.prepare.extract import EXTRACT
from src.prepare.midjourney import IMAGE_FOLDER, build_index
from src.prepare.report import Report
from src.prepare.runner import Files

WORDS = ('a red fox, an old lighthouse, ramen, cat, astronaut, mountain lake, vintage car, crane, '
         'street, 東京 at night, façade du café, --ar 3:2, --v 5.2, "quoted", photorealistic').split(', ')


def guide_process_metadata():
    """process_metadata.py of the guide, verbatim but for the tqdm bar and the prints."""
    parquet_files = sorted(glob.glob('raw/table-*.parquet'))
    all_data = []
    for parquet_file in parquet_files:
        df = pd.read_parquet(parquet_file)
        for idx, row in df.iterrows():
            filename = row['filename']
            prompt = row['prompt']
            width = row['width']
            height = row['height']
            image_path = f"images/{filename}"
            if os.path.exists(image_path):
                all_data.append({
                    'image': image_path,
                    'caption': prompt,
                    'width': int(width),
                    'height': int(height)
                })
    with open('data.json', 'w') as f:
        json.dump(all_data, f, indent=2)


def make_download(root: str, rows: int, tables: int, present: float, seed: int = 0) -> int:
    """``tables`` parquet tables of ``rows`` rows in all; ``present`` of the images exist (empty files)."""
    rng = np.random.default_rng(seed)
    names = np.array([f'{i % 256:02x}/{i:012x}.png' for i in range(rows)], dtype=object)
    prompts = np.array([' '.join(rng.choice(WORDS, 12)) for _ in range(min(rows, 5000))], dtype=object)
    table = pa.table({'filename': names, 'prompt': prompts[rng.integers(0, len(prompts), rows)],
                      'width': rng.integers(256, 2048, rows), 'height': rng.integers(256, 2048, rows)})
    os.makedirs(os.path.join(root, 'raw'))
    bounds = np.linspace(0, rows, tables + 1).astype(int)
    for t in range(tables):
        pq.write_table(table.slice(bounds[t], bounds[t + 1] - bounds[t]), os.path.join(root, f'raw/table-{t + 1}.parquet'))
    for d in range(256):
        os.makedirs(os.path.join(root, IMAGE_FOLDER, f'{d:02x}'))
    existing = names[rng.random(rows) < present]
    for name in existing:
        open(os.path.join(root, IMAGE_FOLDER, name), 'wb').close()
    return len(existing)


def ours(root: str) -> None:
    files = Files(root, EXTRACT.listing(root, [], [IMAGE_FOLDER]), EXTRACT)
    build_index(files, Report(dataset='midjourney23m', root=root))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=200_000)
    parser.add_argument('--tables', type=int, default=5)
    parser.add_argument('--present', type=float, default=0.95, help='share of rows whose image exists')
    parser.add_argument('--repeat', type=int, default=3, help='runs of each; the best time counts')
    parser.add_argument('--small', action='store_true', help='20k rows: a quick check')
    parser.add_argument('--dir', default=None, help='where to make the synthetic download (a temp dir)')
    parser.add_argument('--profile', action='store_true', help='then profile one more run of ours')
    args = parser.parse_args()
    rows = 20_000 if args.small else args.rows

    work = tempfile.mkdtemp(prefix='bench_metadata_', dir=args.dir)
    try:
        start = time.perf_counter()
        present = make_download(work, rows, args.tables, args.present)
        print(f'{rows} rows in {args.tables} tables, {present} images present '
              f'(made in {time.perf_counter() - start:.1f} s)')

        guide_json, our_json = os.path.join(work, 'guide.json'), os.path.join(work, 'data.json')
        guide_times, our_times = [], []
        for _ in range(args.repeat):
            cwd = os.getcwd()
            os.chdir(work)  # the guide runs from data/midjourney-23m
            try:
                guide_times.append(timed(guide_process_metadata))
            finally:
                os.chdir(cwd)
            os.replace(our_json, guide_json)
            our_times.append(timed(ours, work))
            os.rename(our_json, our_json + '.done')  # the next run of ours starts without a data.json too
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(ours, work)
            pstats.Stats(profile).sort_stats('cumulative').print_stats(25)
        os.replace(our_json + '.done', our_json)
        guide_s, ours_s = min(guide_times), min(our_times)

        with open(guide_json) as f:
            guide_out = json.load(f)
        with open(our_json) as f:
            assert json.load(f) == guide_out, 'the two data.json differ'
        sizes = [os.path.getsize(path) / 2 ** 20 for path in (guide_json, our_json)]

        print(f'best of {args.repeat} runs each')
        print(f'{"":32}{"guide":>12}{"ours":>12}{"ratio":>10}')
        print(f'{"data.json build (s)":32}{guide_s:12.2f}{ours_s:12.2f}{guide_s / ours_s:9.1f}x')
        print(f'{"rows per second":32}{rows / guide_s:12,.0f}{rows / ours_s:12,.0f}')
        print(f'{"data.json size (MiB)":32}{sizes[0]:12.1f}{sizes[1]:12.1f}')
        print(f'entries: {len(guide_out)} in both, identical after json.load')
    finally:
        shutil.rmtree(work)


if __name__ == '__main__':
    main()
