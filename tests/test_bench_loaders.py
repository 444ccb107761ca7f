"""bench/bench_loaders.py at its smallest: the project, webdataset, wids and LitData read the same
tar shards, and each yields every sample written (its prompt ids) once, at 512 px. Behaviour only:
the bench's timings are not checked here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The peers are in the `bench` extra, which CI does not install (the Makefile's EXTRAS).
for module in ('webdataset', 'wids', 'litdata', 'psutil'):
    pytest.importorskip(module, reason=f"{module} is not installed: bench/bench_loaders.py's peers "
                                       "need pip install -e '.[bench,dev]'")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'bench'))

from bench_loaders import FLOOR, IMG_START, LOADERS, caption_of  # noqa: E402

IMAGES = 32


@pytest.mark.slow
def test_every_loader_yields_the_same_samples(tmp_path, tokenizer):
    out = tmp_path / 'results.json'
    done = subprocess.run([sys.executable, str(REPO / 'bench' / 'bench_loaders.py'), '--images', str(IMAGES),
                           '--rounds', '1', '--json', str(out), '--workdir', str(tmp_path)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, capture_output=True, text=True)
    results = json.loads(out.read_text())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    written = sorted(tokenizer.encode(caption_of(i) + IMG_START) for i in range(IMAGES))
    assert results['expected'] == written
    assert sorted(results['results']) == sorted(LOADERS + (FLOOR,))
    for name, (run,) in results['results'].items():
        assert run['prompts'] == written, name  # every caption once, none other
        assert run['shapes'] == [[3, 512, 512]], name
        assert run['cpu'] > 0 and run['rss'] > 0, name  # the workers' time and memory were read
    assert 'every loader yielded the same samples' in done.stdout
    for name in LOADERS[1:]:
        assert f'project / {name}:' in done.stdout
