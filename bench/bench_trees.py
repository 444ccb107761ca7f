"""One bench on two checkouts of the project, in one run: was a change within noise?

A refactoring should cost nothing: this runs the same bench script (``bench/bench_sample.py``,
``bench/bench_construct.py``, ...) in a checkout from before and in this one, alternately, several
times, and prints this checkout's output with each number followed by its ratio to the median of
the same number before (``1.00x``: equal). Runs alternate so a machine that gets busier slows both
alike; the bench must print the same lines in both checkouts (numbers may differ).

    git worktree add /tmp/before <commit>
    PYTHONPATH=. .venv/bin/python bench/bench_trees.py --before /tmp/before --runs 3 -- bench/bench_sample.py --small
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r'-?\d+(?:\.\d+)?')


def run(tree: Path, bench: list[str]) -> list[str]:
    """The bench's output lines, run from ``tree`` with ``tree`` first on the import path."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, *bench], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f'{bench[0]} failed in {tree}:\n{done.stderr[-3000:]}')
    return [line for line in done.stdout.splitlines() if line.strip()]


def medians(runs: list[list[str]]) -> list[list[float]]:
    """Per line, the median of each number over the runs (lines matched by position)."""
    lines = min(len(r) for r in runs)
    return [[statistics.median(values) for values in zip(*(map(float, NUMBER.findall(r[i])) for r in runs))]
            for i in range(lines)]


def annotate(line: str, now: list[float], before: list[float]) -> str:
    """``line`` with each number replaced by its median now, followed by its ratio to the median
    before (numbers with a decimal point: counts and sizes are left as they are)."""
    parts, last = [], 0
    for n, match in enumerate(NUMBER.finditer(line)):
        text = match.group()
        parts.append(line[last:match.start()])
        if '.' in text and n < len(now):
            decimals = len(text.split('.')[1])
            parts.append(f'{now[n]:.{decimals}f}')
            if n < len(before) and before[n]:
                parts.append(f' ({now[n] / before[n]:.2f}x)')
        else:
            parts.append(text)
        last = match.end()
    return ''.join(parts) + line[last:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--before', type=Path, required=True, help='a checkout of the commit to compare with')
    parser.add_argument('--runs', type=int, default=3, help='runs of the bench in each checkout, alternating')
    parser.add_argument('bench', nargs=argparse.REMAINDER, help='-- the bench script and its options')
    args = parser.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ['--'] else args.bench
    if not bench:
        parser.error('name the bench to run after --')
    before_runs, now_runs = [], []
    for n in range(args.runs):
        print(f'run {n + 1}/{args.runs}: before ({args.before}), then this checkout', flush=True)
        before_runs.append(run(args.before.resolve(), bench))
        now_runs.append(run(ROOT, bench))
    before, now = medians(before_runs), medians(now_runs)
    print(f'\n{" ".join(bench)}: this checkout, medians of {args.runs} runs; (ratio) = this / before, '
          'for each number with a decimal point')
    for i, line in enumerate(now_runs[0][:len(now)]):
        print(annotate(line, now[i], before[i]))


if __name__ == '__main__':
    main()
