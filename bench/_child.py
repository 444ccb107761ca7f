"""Running one measurement in a fresh Python process (nothing imported or cached from an earlier
one): the bench script again with ``--child ARGS``, its last output line read back as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(script), '--child', *args],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM='false'),
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{Path(script).name} --child {" ".join(args)} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def records_parser(doc: str, child_args: int):
    """The options of a bench over a generated data.json: ``--n`` records (``--small``: 100k), and
    the hidden ``--child`` that ``run_child`` passes."""
    import argparse
    parser = argparse.ArgumentParser(description=doc.split('\n')[0])
    parser.add_argument('--n', type=int, default=1_000_000, help='records in data.json')
    parser.add_argument('--small', action='store_true', help='100k records (quick run)')
    parser.add_argument('--child', nargs=child_args, help=argparse.SUPPRESS)
    return parser
