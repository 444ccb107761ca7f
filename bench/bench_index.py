"""The sample index against upstream's json.load and mmengine's serialize_data, on a midjourney-like
data.json ({"image", "caption" of 100-200 characters, "width", "height"} per record).

Each measurement runs in a fresh process, so that peaks do not mix:
1. start-up: naive ``json.load`` into a list of dicts; mmengine ``BaseDataset`` with
   ``serialize_data=True`` (json.load, then one numpy buffer of pickles); ``SampleIndex.load``
   building its cache; ``SampleIndex.load`` opening that cache. Time and peak RSS increase.
2. 4 DataLoader workers (fork), each reading every record once; the sum of their USS and PSS at
   the end of the pass (what the workers cost beyond the pages they share).
The page cache is warm for every reader (the files were just written).

    PYTHONPATH=. .venv/bin/python bench/bench_index.py [--n 1000000 | --small]
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

# Imported by every child before its baseline, as a training process has them loaded anyway.
import torch
from mmengine.dataset import BaseDataset

from bench._mem import peak_rss, private_and_proportional, reset_peak
from src.datasets.index.sample_index import SampleIndex

WORKERS = 4
WORDS = ('a cinematic portrait of an astronaut cat in a neon city, ultra detailed, volumetric '
         'light, octane render, 8k, trending on artstation, soft pastel palette, studio ghibli '
         'style landscape with mountains and rivers at dawn, hyperrealistic photo').split()


def write_data_json(path: str, n: int) -> None:
    """Streams n midjourney-like records into a JSON array (never holding them all)."""
    rng = random.Random(0)
    with open(path, 'w') as out:
        out.write('[')
        for i in range(n):
            words, length = [], 0
            target = rng.randint(100, 200)
            while length < target:
                words.append(rng.choice(WORDS))
                length += len(words[-1]) + 1
            record = {'image': f'images/{i // 10000:04d}/{i:08d}.png',
                      'caption': ' '.join(words)[:target],
                      'width': rng.choice((512, 768, 1024, 1344)),
                      'height': rng.choice((512, 768, 1024, 1344))}
            out.write((',\n' if i else '\n') + json.dumps(record))
        out.write('\n]\n')


# ----------------------------------------------------------------- what runs in a child process

def load_naive(path: str, cache_dir: str):
    with open(path) as f:
        return json.load(f)


def load_mmengine(path: str, cache_dir: str):
    class JsonListDataset(BaseDataset):
        def load_data_list(self):
            with open(self.ann_file) as f:
                return json.load(f)

    dataset = JsonListDataset(ann_file=path, serialize_data=True)
    return _Records(dataset.get_data_info, len(dataset))


def load_ours(path: str, cache_dir: str):
    return SampleIndex.load(path, cache_dir=cache_dir)


LOADERS = {'naive': load_naive, 'mmengine': load_mmengine, 'ours-build': load_ours,
           'ours-cached': load_ours}


class _Records:
    """Indexable view of mmengine's serialized records (get_data_info unpickles one)."""

    def __init__(self, get, length):
        self.get, self.length = get, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.get(i)


class _ReadAllPerWorker:
    """A dataset of WORKERS items; item k is one worker reading every record, then measuring."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return WORKERS

    def __getitem__(self, k):
        start = time.perf_counter()
        checksum = 0
        for i in range(len(self.records)):
            record = self.records[i]  # every field used, as a dataset's __getitem__ would
            checksum += len(record['image']) + len(record['caption']) + record['width'] + \
                record['height']
        seconds = time.perf_counter() - start
        uss, pss = private_and_proportional()
        return {'uss': uss, 'pss': pss, 'seconds': seconds, 'checksum': checksum}


def child(kind: str, phase: str, path: str, cache_dir: str) -> dict:
    baseline = reset_peak()
    start = time.perf_counter()
    records = LOADERS[kind](path, cache_dir)
    result = {'seconds': time.perf_counter() - start, 'peak_increase': peak_rss() - baseline}
    if phase == 'workers':
        loader = torch.utils.data.DataLoader(_ReadAllPerWorker(records), batch_size=None,
                                             num_workers=WORKERS, multiprocessing_context='fork')
        passes = list(loader)
        result.update(uss=sum(p['uss'] for p in passes), pss=sum(p['pss'] for p in passes),
                      us_per_record=1e6 * max(p['seconds'] for p in passes) / len(records),
                      checksum=passes[0]['checksum'])
    return result


# ------------------------------------------------------------------------------------ the driver

def run_child(kind: str, phase: str, path: str, cache_dir: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', kind, phase, path,
                           cache_dir], env=env, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{kind} {phase} failed:\n{done.stderr}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=1_000_000, help='records in data.json')
    parser.add_argument('--small', action='store_true', help='100k records (quick run)')
    parser.add_argument('--child', nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    n = 100_000 if args.small else args.n
    mib = 2 ** 20
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'data.json')
        write_data_json(path, n)
        cache_dir = os.path.join(tmp, 'cache')
        print(f'data.json: {n} records, {os.path.getsize(path) / mib:.0f} MiB')

        start = {kind: run_child(kind, 'start', path, cache_dir) for kind in LOADERS}
        cache_size = sum(os.path.getsize(os.path.join(cache_dir, f))
                         for f in os.listdir(cache_dir) if f.endswith('.arrow'))
        print(f'cache: {cache_size / mib:.0f} MiB (Arrow IPC, memory-mapped)\n')
        print('1. start-up, main process        seconds   peak RSS increase (MiB)')
        labels = {'naive': 'naive json.load (list of dicts)', 'mmengine': 'mmengine serialize_data',
                  'ours-build': 'ours: first build (writes cache)',
                  'ours-cached': 'ours: cached open (mmap)'}
        for kind, label in labels.items():
            print(f'   {label:<33}{start[kind]["seconds"]:8.3f}   '
                  f'{start[kind]["peak_increase"] / mib:10.1f}')
        naive, cached = start['naive'], start['ours-cached']
        print(f'   json.load / ours cached: {naive["seconds"] / cached["seconds"]:.0f}x faster, '
              f'{naive["peak_increase"] / max(cached["peak_increase"], 1):.0f}x less peak '
              f'memory\n')

        workers = {kind: run_child(kind, 'workers', path, cache_dir)
                   for kind in ('naive', 'mmengine', 'ours-cached')}
        assert len({w['checksum'] for w in workers.values()}) == 1, 'readers disagree'
        print(f'2. {WORKERS} fork workers, each reads all    sum USS (MiB)  sum PSS (MiB)  '
              f'us/record')
        for kind in workers:
            w = workers[kind]
            print(f'   {labels[kind]:<33}{w["uss"] / mib:12.1f}  {w["pss"] / mib:13.1f}  '
                  f'{w["us_per_record"]:9.2f}')
        naive, ours = workers['naive'], workers['ours-cached']
        print(f'   naive / ours: USS {naive["uss"] / ours["uss"]:.0f}x less, '
              f'PSS {naive["pss"] / ours["pss"]:.1f}x less')


if __name__ == '__main__':
    main()
