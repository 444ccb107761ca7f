"""A checkpoint cut short (a full disk, a job killed while saving): ``--resume`` goes on from the
previous whole one, saying so, instead of a traceback from inside torch.load (issue 37, class 9)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.engine.resume import NoCheckpoint, damage, latest_whole_checkpoint
from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, step: int, mtime: int) -> Path:
    torch.save({'meta': {'iter': step}, 'state_dict': {'w': torch.arange(1000.0)}}, path)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def work(tmp_path) -> Path:
    for step in (2, 4, 6):
        _checkpoint(tmp_path / f'iter_{step}.pth', step, 1_700_000_000 + step)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    return tmp_path


@pytest.mark.parametrize('cut', [lambda data: data[:len(data) // 2], lambda data: data[:-10], lambda data: b'',
                                 lambda data: data[:2000] + bytes([data[2000] ^ 0xFF]) + data[2001:]])
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_one(work, cut, caplog):
    latest = work / 'iter_6.pth'
    latest.write_bytes(cut(latest.read_bytes()))
    assert damage(str(latest)) is not None
    with caplog.at_level(logging.WARNING):
        assert latest_whole_checkpoint(str(work)) == str(work / 'iter_4.pth')
    assert f'not resuming from {latest}' in caplog.text and 'resuming from the previous checkpoint' in caplog.text


def test_a_whole_latest_checkpoint_is_taken_and_none_at_all_is_a_fresh_start(work, tmp_path):
    assert latest_whole_checkpoint(str(work)) == str(work / 'iter_6.pth')
    (tmp_path / 'empty').mkdir()
    assert latest_whole_checkpoint(str(tmp_path / 'empty')) is None


def test_only_damaged_checkpoints_is_a_clear_error_naming_them(work):
    for path in work.glob('*.pth'):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NoCheckpoint, match=r'no whole checkpoint in .*iter_6.pth: not a whole archive'):
        latest_whole_checkpoint(str(work))


@pytest.mark.slow
def test_train_resume_goes_on_from_the_previous_checkpoint_when_the_last_is_cut(tmp_path, tokenizer_path):
    MAKERS['midjourney23m'](tmp_path / DEFAULT_ROOTS['midjourney23m'], n=8)
    assert prepare_midjourney23m(str(tmp_path / DEFAULT_ROOTS['midjourney23m']), num_processes=1).exit_code() == 0

    def train(*args):
        return subprocess.run(
            [sys.executable, str(REPO / 'tools' / 'train.py'), str(REPO / 'configs/examples/tiny_t2i.py'),
             '--tokenizer', tokenizer_path, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
             'default_hooks.checkpoint.interval=2', *args],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1'),
            capture_output=True, text=True, timeout=300)

    first = train('train_cfg.max_iters=4')
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / 'work' / 'iter_4.pth'
    last.write_bytes(last.read_bytes()[:-4096])  # the job was killed while saving it
    resumed = train('train_cfg.max_iters=6', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert 'Traceback' not in said
    assert f'not resuming from {last}' in said and str(tmp_path / 'work' / 'iter_2.pth') in said
    assert (tmp_path / 'work' / 'iter_6.pth').is_file()
