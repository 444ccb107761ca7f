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
