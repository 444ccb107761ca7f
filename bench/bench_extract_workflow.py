"""Midjourney preparation end to end: the guide's workflow (extract.py's ``tar -xf`` loop on N
processes, then process_metadata.py's ``iterrows`` loop and ``json.dump(indent=2)``) against
``tools/prepare_midjourney23m.py`` (safe extraction, GNU tar for the tars the header scan proves
clean, then data.json), on the same layout, until what each wrote is on disk.

Rounds alternate (guide, tool, guide, tool, ...) with the extracted images and caches dropped
between them, so that the write-back of one run does not fall on the next; medians are reported.

    PYTHONPATH=. .venv/bin/python bench/bench_extract_workflow.py [--tars 20 --members 1000 --mean-kb 16]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def drop_caches() -> None:
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3')  # root only; otherwise the rounds just alternate
    except OSError:
        pass


def guide(root: str, processes: int) -> None:
    from bench.bench_metadata import guide_process_metadata
    from bench.bench_tar import extract_like_the_guide
    extract_like_the_guide(root, processes)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        guide_process_metadata()
    finally:
        os.chdir(cwd)


def tool(root: str, processes: int) -> None:
    from src.prepare.datasets import prepare_midjourney23m
    assert prepare_midjourney23m(root, num_processes=processes).exit_code() == 0


def clean(root: str) -> None:
    for name in ('images', '.prepare'):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name in ('data.json', 'prepare_report.json'):
        Path(root, name).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tars', type=int, default=20)
    parser.add_argument('--members', type=int, default=1000)
    parser.add_argument('--mean-kb', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--num-processes', type=int, default=2)
    parser.add_argument('--small', action='store_true', help='4 tars x 200 images, 1 round: a quick check')
    args = parser.parse_args()
    if args.small:
        args.tars, args.members, args.rounds = 4, 200, 1
    from bench.bench_tar import make_layout
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, 'midjourney-23m')
        total = make_layout(root, args.tars, args.members, args.mean_kb * 1024)
        print(f'{args.tars} tars x {args.members} images of {args.mean_kb} KB on average ({total / 2 ** 20:.0f} MiB), '
              f'{args.num_processes} processes, {args.rounds} alternating rounds, seconds until on disk')
        times = {'guide (extract.py + process_metadata.py)': [], 'prepare_midjourney23m': []}
        for _ in range(args.rounds):
            for (name, runs), run in zip(times.items(), (guide, tool)):
                clean(root)
                drop_caches()
                start = time.perf_counter()
                run(root, args.num_processes)
                os.sync()
                runs.append(time.perf_counter() - start)
        for name, runs in times.items():
            print(f'  {name:42} median {statistics.median(runs):6.2f} s   (rounds: {", ".join(f"{r:.2f}" for r in runs)})')
        guide_s, tool_s = (statistics.median(runs) for runs in times.values())
        print(f'  tool / guide: {guide_s / tool_s:.2f}x the speed of the guide\'s workflow')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    sys.exit(main())
