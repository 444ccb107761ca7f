"""Tar shards read in place vs extracted, on a midjourney-like layout (raw/images/<group>/*.tar
of 256 KB images on average, raw/table-1.parquet).

Preparation: tools/prepare_midjourney23m's library with extraction (safe, staged extraction of every
shard into images/, then data.json) against ``--no-extract`` (one header pass per shard, the
combined member index, then the same data.json); the guide's own ``tar -xf`` loop is timed too.
The index step alone is also timed in this process, per member: tarfile's header pass against
the plain-ustar header scan that ``scan_tar`` uses.
Reading: one sample's bytes from a loose extracted file (open + read) against ``TarMemberIndex.read``
(hash lookup + one pread), for the same random paths, page cache warm for both.

Each preparation is timed twice: until the tool returns, and until what it wrote is on disk
(``os.sync``). This VM takes extracted files into the page cache without waiting for the disk, so
the first time leaves out most of extraction's cost; at the real scale (23M images, terabytes) no
page cache holds them and extraction runs at the disk's pace, which the second time measures.

The three runs share one copy of the tars (hard links), and the guide's extraction is deleted once
timed, so a layout needs about twice its size on disk.

    PYTHONPATH=. .venv/bin/python bench/bench_tar.py [--small] [--mean-kb N] [--tars N] [--members N]
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

from src.datasets.storage.tar_index import INDEX_NAME, TarMemberIndex
from src.prepare.tar_headers import scan_tar_headers, scan_tar_with_tarfile
from src.prepare.tar_members import INDEX_MEMBERS
from src.prepare.datasets import prepare_midjourney23m
from src.prepare.extract import EXTRACT

TARS_PER_FOLDER = 4


def make_layout(root: str, n_tars: int, members: int, mean_size: int) -> int:
    """Shards of incompressible 'images' of varied size in folders of four, and their table;
    returns the bytes written."""
    rng = random.Random(0)
    total = 0
    names = []
    for g in range(-(-n_tars // TARS_PER_FOLDER)):
        os.makedirs(os.path.join(root, 'raw', 'images', f'{g:04d}'))
        for t in range(min(TARS_PER_FOLDER, n_tars - g * TARS_PER_FOLDER)):
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


def link_layout(source: str, root: str) -> None:
    """The tars and table of ``source`` under ``root`` too, as hard links (no second copy)."""
    for folder, _, files in os.walk(source):
        os.makedirs(os.path.join(root, os.path.relpath(folder, source)))
        for name in files:
            os.link(os.path.join(folder, name), os.path.join(root, os.path.relpath(folder, source), name))


def per_member_scan_seconds(scan, tars: list[str], n_members: int, repeats: int = 3) -> float:
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        for tar in tars:
            scan(tar)
        best = min(best, time.perf_counter() - start)
    return best / n_members


def extract_one(tar_and_dest: tuple[str, str]) -> None:
    tar_path, dest = tar_and_dest
    subprocess.run(['tar', '-xf', tar_path, '-C', dest, '--no-same-owner'], check=True)


def extract_like_the_guide(root: str, num_processes: int) -> None:
    tars = sorted(glob.glob(os.path.join(root, 'raw', 'images', '**', '*.tar'), recursive=True))
    dest = os.path.join(root, 'images')
    os.makedirs(dest, exist_ok=True)
    with Pool(num_processes) as pool:
        pool.map(extract_one, [(t, dest) for t in tars])


def prepare(root: str, step, num_processes: int) -> tuple[float, float]:
    seconds, report = timed_to_disk(prepare_midjourney23m, root, step=step, num_processes=num_processes)
    assert report[0].exit_code() == 0, report[0].summary()
    return seconds, report[1]


def timed_to_disk(fn, *args, **kwargs) -> tuple[float, tuple[object, float]]:
    """Seconds until ``fn`` returns, and (its result, seconds until what it wrote is on disk)."""
    os.sync()  # what was written before (the layout) is not this step's cost
    seconds, result = timed(fn, *args, **kwargs)
    flush, _ = timed(os.sync)
    return seconds, (result, seconds + flush)


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
    parser.add_argument('--tars', type=int, default=None, help='number of tars (default: 16, 4 with --small)')
    parser.add_argument('--members', type=int, default=None,
                        help='members per tar (default: 200, 100 with --small)')
    args = parser.parse_args()
    n_tars, members, mean_kb = (4, 100, 64) if args.small else (16, 200, 256)
    n_tars, members = args.tars or n_tars, args.members or members
    mean_size = (args.mean_kb or mean_kb) * 1000

    workdir = tempfile.mkdtemp(prefix='bench_tar_', dir=args.workdir)
    try:
        layouts = {kind: os.path.join(workdir, kind, 'midjourney-23m') for kind in ('guide', 'extract', 'index')}
        total = make_layout(layouts['guide'], n_tars, members, mean_size)
        for kind in ('extract', 'index'):
            link_layout(layouts['guide'], layouts[kind])
        n_members = n_tars * members
        print(f'layout: {n_tars} tars, {n_members} members, {total / 2 ** 20:.0f} MiB, '
              f'{args.num_processes} processes')

        t_guide, (_, d_guide) = timed_to_disk(extract_like_the_guide, layouts['guide'], args.num_processes)
        shutil.rmtree(os.path.join(layouts['guide'], 'images'))
        t_extract, d_extract = prepare(layouts['extract'], EXTRACT, args.num_processes)
        t_index, d_index = prepare(layouts['index'], INDEX_MEMBERS, args.num_processes)
        t_rerun, d_rerun = prepare(layouts['index'], INDEX_MEMBERS, args.num_processes)
        tars = sorted(glob.glob(os.path.join(layouts['index'], 'raw', 'images', '**', '*.tar'), recursive=True))
        s_tarfile = per_member_scan_seconds(scan_tar_with_tarfile, tars, n_members)
        s_headers = per_member_scan_seconds(scan_tar_headers, tars, n_members)

        root = layouts['extract']
        index = TarMemberIndex.open(os.path.join(layouts['index'], INDEX_NAME))
        assert len(index) == n_members
        paths = random.Random(1).sample(index.paths(), min(2000, n_members))
        assert all(index.read(p) == read_loose(root)(p) for p in paths[:50])
        t_loose = per_read_seconds(read_loose(root), paths, repeats=5)
        t_tar = per_read_seconds(index.read, paths, repeats=5)

        rows = [('prepare: guide (tar -xf loop, no data.json)', f'{t_guide:.2f} s', f'{d_guide:.2f} s', ''),
                ('prepare: tool, extracting', f'{t_extract:.2f} s', f'{d_extract:.2f} s', ''),
                ('prepare: tool, --no-extract', f'{t_index:.2f} s', f'{d_index:.2f} s',
                 f'{t_extract / t_index:.1f}x / {d_extract / d_index:.1f}x faster than extracting '
                 f'({t_index / n_members * 1e6:.0f} us per member)'),
                ('prepare: tool, --no-extract, re-run', f'{t_rerun:.2f} s', f'{d_rerun:.2f} s', '')]
        width = max(len(r[0]) for r in rows)
        print(f'{"":<{width}}  {"returns":>10}  {"on disk":>10}')
        for name, returned, on_disk, ratio in rows:
            print(f'{name:<{width}}  {returned:>10}  {on_disk:>10}  {ratio}')
        for name, seconds, ratio in [('index one tar, per member: tarfile', s_tarfile, ''),
                                     ('index one tar, per member: header scan', s_headers,
                                      f'{s_tarfile / s_headers:.1f}x faster than tarfile'),
                                     ('read one sample: loose file', t_loose, ''),
                                     ('read one sample: from tar (index)', t_tar,
                                      f'{t_loose / t_tar:.2f}x the speed of loose')]:
            print(f'{name:<{width}}  {seconds * 1e6:>7.1f} us  {ratio}')
    finally:
        shutil.rmtree(workdir)


if __name__ == '__main__':
    main()
