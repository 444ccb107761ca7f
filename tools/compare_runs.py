"""Check a resume: the batches a stopped and resumed run trained on against an uninterrupted run's.

    .venv/bin/python tools/compare_runs.py work whole [--from 41]

Each iteration's log line holds a digest of its batch (ResumableTrainLoop logs it); the resumed run
must have drawn the very batches of the uninterrupted one. Exit status 0 when every iteration both
logged (from --from on) has the same digest, 1 at the first that differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from src.cli.run_logs import compare_batches, logged_iterations
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run', help="the resumed run's --work-dir")
    parser.add_argument('reference', help="the uninterrupted run's --work-dir")
    parser.add_argument('--from', dest='start', type=int, default=1, help='first iteration compared (default: 1)')
    args = parser.parse_args(argv)
    run, reference = logged_iterations(args.run), logged_iterations(args.reference)
    common, differs = compare_batches(run, reference, args.start)
    if not common:
        print(f'no iteration with a batch digest logged by both {args.run} and {args.reference}', file=sys.stderr)
        return 1
    if differs is not None:
        print(f'iteration {differs}: other batches than the uninterrupted run ({run[differs]["batch_digest"]} '
              f'against {reference[differs]["batch_digest"]})', file=sys.stderr)
        return 1
    print(f'iterations {common[0]}-{common[-1]}: the same {len(common)} batches in {args.run} as in {args.reference}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
