"""Tar shards read in place vs extracted, on a midjourney-like layout (raw/images/<group>/*.tar
of 256 KB images on average, raw/table-1.parquet).

Preparation: tools/prepare_midjourney23m's library with extraction (safe, staged extraction of every
shard into images/, then data.json) against ``--no-extract`` (one header pass per shard, the
combined member index, then the same data.json); the guide's own ``tar -xf`` loop is timed too.
Reading: one sample's bytes from a loose extracted file (open + read) against ``TarMemberIndex.read``
(hash lookup + one pread), for the same random paths, page cache warm for both.

    PYTHONPATH=. .venv/bin/python bench/bench_tar.py [--small] [--mean-kb N]
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from multiprocessing import Pool

import pyarrow as pa
import pyarrow.parquet as pq

from src.datasets.tar_index import INDEX_MEMBERS, INDEX_NAME, TarMemberIndex
from src.prepare.datasets import prepare_midjourney23m
from src.prepare.extract import EXTRACT


def make_layout(root: str, groups: int, tars_per_group: int, members: int, mean_size: int) -> int:
    """Shards of incompressible 'images' of varied size and their table; returns the bytes written."""
    rng = random.Random(0)
    total = 0
    names = []
    for g in range(groups):
        os.makedirs(os.path.join(root, 'raw', 'images', f'{g:04d}'))
        for t in range(tars_per_group):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode='w') as tar:
                for m in range(members):
                    data = rng.randbytes(rng.randint(mean_size // 2, mean_size * 3 // 2))
                    info = tarfile.TarInfo(f'{g:04d}{t:06d}{m:05d}.jpg')
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    total += len(data)
                    names.append(info.name)
            # One large write, as a download leaves the file: the page cache then holds it in large
            # folios, as it does a file read back from disk (tarfile's small writes would not).
            with open(os.path.join(root, 'raw', 'images', f'{g:04d}', f'{t:06d}.tar'), 'wb') as f:
                f.write(buffer.getbuffer())
    pq.write_table(pa.table({'filename': names, 'prompt': [f'a prompt for {n}' for n in names],
                             'width': [1024.0] * len(names), 'height': [1024.0] * len(names)}),
                   os.path.join(root, 'raw', 'table-1.parquet'))
    return total


def extract_one(tar_and_dest: tuple[str, str]) -> None:
    tar_path, dest = tar_and_dest
    subprocess.run(['tar', '-xf', tar_path, '-C', dest, '--no-same-owner'], check=True)


def extract_like_the_guide(root: str, num_processes: int) -> None:
    tars = sorted(glob.glob(os.path.join(root, 'raw', 'images', '**', '*.tar'), recursive=True))
    dest = os.path.join(root, 'images')
    os.makedirs(dest, exist_ok=True)
    with Pool(num_processes) as pool:
        pool.map(extract_one, [(t, dest) for t in tars])


def prepare(root: str, step, num_processes: int) -> float:
    seconds, report = timed(prepare_midjourney23m, root, step=step, num_processes=num_processes)
    assert report.exit_code() == 0, report.summary()
    return seconds


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def per_read_seconds(read, paths: list[str], repeats: int) -> float:
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            read(path)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best


def read_loose(root: str):
    def read(relpath: str) -> bytes:
        with open(os.path.join(root, relpath), 'rb') as f:
            return f.read()
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true', help='a quick run on a small layout')
    parser.add_argument('--num-processes', type=int, default=2)
    parser.add_argument('--workdir', default=None, help='where to build the layout (default: a temp dir)')
    parser.add_argument('--mean-kb', type=int, default=None,
                        help='mean member size (default: 256, 64 with --small); extraction cost grows '
                             'with it, indexing does not')
    args = parser.parse_args()
    groups, tars_per_group, members, mean_kb = (2, 2, 100, 64) if args.small else (4, 4, 200, 256)
    mean_size = (args.mean_kb or mean_kb) * 1000

    workdir = tempfile.mkdtemp(prefix='bench_tar_', dir=args.workdir)
    try:
        layouts = {kind: os.path.join(workdir, kind, 'midjourney-23m') for kind in ('guide', 'extract', 'index')}
        for root in layouts.values():
            total = make_layout(root, groups, tars_per_group, members, mean_size)
        n_members = groups * tars_per_group * members
        print(f'layout: {groups * tars_per_group} tars, {n_members} members, {total / 2 ** 20:.0f} MiB, '
              f'{args.num_processes} processes')

        t_guide, _ = timed(extract_like_the_guide, layouts['guide'], args.num_processes)
        t_extract = prepare(layouts['extract'], EXTRACT, args.num_processes)
        t_index = prepare(layouts['index'], INDEX_MEMBERS, args.num_processes)
        t_rerun = prepare(layouts['index'], INDEX_MEMBERS, args.num_processes)

        root = layouts['extract']
        index = TarMemberIndex.open(os.path.join(layouts['index'], INDEX_NAME))
        assert len(index) == n_members
        paths = random.Random(1).sample(index.paths(), min(2000, n_members))
        assert all(index.read(p) == read_loose(root)(p) for p in paths[:50])
        t_loose = per_read_seconds(read_loose(root), paths, repeats=5)
        t_tar = per_read_seconds(index.read, paths, repeats=5)

        rows = [('prepare: guide (tar -xf loop, no data.json)', f'{t_guide:.2f} s', ''),
                ('prepare: tool, extracting', f'{t_extract:.2f} s', ''),
                ('prepare: tool, --no-extract', f'{t_index:.2f} s', f'{t_extract / t_index:.1f}x faster '
                 f'than extracting ({t_index / n_members * 1e6:.0f} us per member)'),
                ('prepare: tool, --no-extract, re-run', f'{t_rerun:.2f} s', ''),
                ('read one sample: loose file', f'{t_loose * 1e6:.1f} us', ''),
                ('read one sample: from tar (index)', f'{t_tar * 1e6:.1f} us',
                 f'{t_loose / t_tar:.2f}x the speed of loose')]
        width = max(len(r[0]) for r in rows)
        for name, value, ratio in rows:
            print(f'{name:<{width}}  {value:>10}  {ratio}')
    finally:
        shutil.rmtree(workdir)


if __name__ == '__main__':
    main()
