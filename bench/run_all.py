"""Run every benchmark, one after another (each measures a pair of approaches side by side).

    PYTHONPATH=. .venv/bin/python bench/run_all.py [--small]

``--small`` runs each on its quick setting; without it each runs at the size whose results
bench/RESULTS.md records (several minutes in all on 2 cores).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = ['bench_construct.py', 'bench_index.py', 'bench_decode.py', 'bench_sample.py', 'bench_planes.py',
              'bench_handoff.py',
              'bench_buckets.py', 'bench_scale.py',
              'bench_decoders.py', 'bench_metadata.py', 'bench_tar.py', 'bench_resume.py',
              'bench_large_png.py', 'bench_latents.py', 'bench_object_store.py', 'bench_loaders.py',
              'bench_litdata.py', 'bench_s3_clients.py',
              'bench_extract_workflow.py', 'bench_grey_pictures.py']


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true', help='the quick setting of each benchmark')
    args = parser.parse_args()
    failed = []
    for name in BENCHMARKS:
        command = [sys.executable, str(BENCH / name)] + (['--small'] if args.small else [])
        print(f'\n### {" ".join(command[1:])}', flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    if failed:
        print(f'\nfailed: {", ".join(failed)}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
