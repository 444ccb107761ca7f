"""The demo runs end to end on its smallest setting, and refuses to clear a folder it did not make."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from noise import noise

REPO = Path(__file__).resolve().parents[1]


def run_demo(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'demo.py'), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_smallest_setting(tmp_path):
    workdir = tmp_path / 'demo'
    result = run_demo('--workdir', str(workdir), '--samples', '3', '--batches', '2', '--batch-size', '2',
                      '--image-size', '64', '--num-workers', '0')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split('samples/s', 1)[1]
    for name in ('midjourney23m', 'laion6m', 'dalle3', 'redcaps5m', 'blip3o60k', 'megalith10m_reconstruct',
                 'laion6m_recap', 'redcaps5m_recap', 'cc3m_image2text', 'mix'):
        assert f'\n{name} ' in table
        assert '[2, 3, 64, 64]' in table
    assert 'demo OK' in result.stdout
    assert noise(result.stdout + result.stderr) == []
    assert (workdir / 'tokenizer' / 'tokenizer.json').exists() and (workdir / 'tiny-vae' / 'config.json').exists()
    with Image.open(workdir / 'preview.png') as preview:
        assert preview.width > 2 * 256 and preview.height > 5 * 256


def test_demo_will_not_clear_a_foreign_folder(tmp_path):
    (tmp_path / 'precious.txt').write_text('keep me')
    result = run_demo('--workdir', str(tmp_path))
    assert result.returncode == 1
    assert 'was not made by the demo' in result.stderr
    assert (tmp_path / 'precious.txt').read_text() == 'keep me'
