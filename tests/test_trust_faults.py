"""Faults and silent wrongs (issue 37, classes 7-9): a full disk, stale caches, tampered sidecars
and stores. Each ends in a clear error naming the file, a rebuild, or a counted skip."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from full_disk import fill, tiny_disk
from src.datasets.errors import WriteError
from src.datasets.sample_index import SampleIndex
from src.prepare.atomic import write_json

REPO = Path(__file__).resolve().parents[1]


def _records(n: int) -> list[dict]:
    return [{'image': f'images/{i:06d}.jpg', 'caption': f'a picture number {i} ' * 4} for i in range(n)]


# ---- 7: a full disk ------------------------------------------------------------------------------

def test_a_full_disk_during_the_index_cache_build_falls_back_to_memory_and_says_why(tmp_path, capfd):
    source = tmp_path / 'data.json'
    source.write_text(json.dumps(_records(20000)))  # its cache does not fit the disk below
    with tiny_disk(tmp_path / 'disk') as disk:
        index = SampleIndex.load(source, cache_dir=disk)
        assert index.cache is None and len(index) == 20000 and index[123]['image'] == 'images/000123.jpg'
        said = capfd.readouterr().out
        assert f'No space left on the file system mounted at {disk} while writing {disk}' in said
        assert 'in memory' in said
        # the build's temp files are gone: the disk is left as it was found
        assert [p.name for p in disk.iterdir() if not p.name.endswith('.lock')] == []


def test_a_full_disk_keeps_the_previous_report_whole_and_names_the_file(tmp_path):
    with tiny_disk(tmp_path / 'disk', 64) as disk:
        report = disk / 'prepare_report.json'
        write_json(report, {'indexes': [], 'note': 'the first run'})
        before = report.read_bytes()
        fill(disk)
        with pytest.raises(WriteError, match=f'No space left on the file system mounted at {disk} while writing {report}'):
            write_json(report, {'indexes': [], 'note': 'x' * 200_000})
        assert report.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ['filler', 'prepare_report.json']  # no temp file left


def test_a_full_disk_in_the_prepare_tool_keeps_the_report_and_says_so(tmp_path, caplog):
    from src.prepare.report import Report
    with tiny_disk(tmp_path / 'disk', 64) as disk:
        Report('midjourney23m', str(disk)).finish()
        before = (disk / 'prepare_report.json').read_bytes()
        fill(disk)
        report = Report('midjourney23m', str(disk))
        report.index_skipped = 'x' * 200_000
        with caplog.at_level(logging.INFO):
            report.finish()
        assert (disk / 'prepare_report.json').read_bytes() == before
        assert f'report not saved: No space left on the file system mounted at {disk}' in caplog.text


@pytest.fixture
def midjourney(tmp_path, monkeypatch):
    from src.prepare.datasets import prepare_midjourney23m
    from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
    root = tmp_path / DEFAULT_ROOTS['midjourney23m']
    MAKERS['midjourney23m'](root, n=10)
    assert prepare_midjourney23m(str(root), num_processes=1).exit_code() == 0
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['pt', 'shards'])
def test_a_full_disk_in_cache_latents_stops_with_the_file_named_and_keeps_what_is_whole(midjourney, tmp_path, fmt,
                                                                                        tokenizer_path):
    from src.synthetic.autoencoder import build_autoencoder
    vae = build_autoencoder(tmp_path / 'vae', 'AutoencoderKL')
    with tiny_disk(tmp_path / 'disk', 48) as disk:
        out = disk / 'latents'
        result = subprocess.run(
            [sys.executable, str(REPO / 'tools' / 'cache_latents.py'), str(REPO / 'configs/datasets/midjourney23m.py'),
             '--cfg-options', f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}', 'dataset.image_size=64',
             '--batch-size', '2', '--num-workers', '0', '--vae', vae, '--out', str(out), '--format', fmt],
            cwd=midjourney, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1'),
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        assert 'Traceback' not in result.stderr, result.stderr[-3000:]
        assert f'No space left on the file system mounted at {disk} while writing {out}' in result.stderr
        assert 'run the same command again' in result.stderr
        import torch
        for latent in out.rglob('*.pt'):  # what was written is whole
            torch.load(latent, weights_only=True)
        assert not [p for p in out.rglob('*') if '.tmp-' in p.name]


# ---- 8: stale caches -----------------------------------------------------------------------------

def _edit_keeping_size_and_mtime(path: Path, old: bytes, new: bytes) -> None:
    before = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("records", [100, 90_000])  # hashed whole; sampled (over 4 MiB)
def test_an_index_edited_with_the_same_size_and_mtime_is_read_again(tmp_path, records):
    source = tmp_path / 'data.json'
    source.write_text(json.dumps(_records(records)))
    assert (source.stat().st_size > 4 << 20) == (records > 100)
    middle = records // 2
    assert SampleIndex.load(source)[middle]['image'] == f'images/{middle:06d}.jpg'
    _edit_keeping_size_and_mtime(source, f'"images/{middle:06d}.jpg"'.encode(), b'"images/edited.jpg"')
    assert SampleIndex.load(source)[middle]['image'] == 'images/edited.jpg'
