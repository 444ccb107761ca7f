"""Put this project's data layer into an OpenUni, Harmon or VGT checkout, whose own ``src`` package
(models included) would otherwise shadow this one: their configs then build with this project's
datasets, samplers, collate functions and ResumableTrainLoop, unchanged.

    .venv/bin/python tools/install_into.py /path/to/OpenUni            # src/datasets, src/engine linked here
    .venv/bin/python tools/install_into.py /path/to/OpenUni --copy     # copied instead (a self-contained tree)
    .venv/bin/python tools/install_into.py /path/to/OpenUni --undo     # theirs put back

Their src/datasets (and src/engine, if any) is moved aside, not deleted, and --undo restores it;
their models, runners and configs are left as they are. Their environment also needs this
project's core dependencies (the tool prints the pip command).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('upstream', help='the root of the upstream checkout (the folder holding src/ and configs/)')
    parser.add_argument('--copy', action='store_true', help='copy the packages instead of linking them')
    parser.add_argument('--undo', action='store_true', help='remove what an earlier install put there')
    args = parser.parse_args(argv)
    from src.cli.install import InstallError, install, requirements, undo
    try:
        done = undo(args.upstream) if args.undo else install(args.upstream, copy=args.copy)
    except InstallError as e:
        print(f'install_into: {e}', file=sys.stderr)
        return 2
    for line in done:
        print(line)
    if not args.undo:
        print('their environment also needs: pip install ' + ' '.join(f"'{r}'" for r in requirements()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
