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
from src.datasets.index.sample_index import SampleIndex
from src.datasets.storage.atomic import write_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def said():
    """What the project logs through mmengine's current logger, as one text (``said()``)."""
    from mmengine.logging import MMLogger

    class Kept(logging.Handler):
        lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())
    logger, handler = MMLogger.get_current_instance(), Kept()
    logger.addHandler(handler)
    yield lambda: '\n'.join(handler.lines)
    logger.removeHandler(handler)


def _records(n: int) -> list[dict]:
    return [{'image': f'images/{i:06d}.jpg', 'caption': f'a picture number {i} ' * 4} for i in range(n)]


# ---- 7: a full disk ------------------------------------------------------------------------------

def test_a_full_disk_during_the_index_cache_build_falls_back_to_memory_and_says_why(tmp_path, said):
    source = tmp_path / 'data.json'
    source.write_text(json.dumps(_records(20000)))  # its cache does not fit the disk below
    with tiny_disk(tmp_path / 'disk') as disk:
        index = SampleIndex.load(source, cache_dir=disk)
        assert index.cache is None and len(index) == 20000 and index[123]['image'] == 'images/000123.jpg'
        assert f'No space left on the file system mounted at {disk} while writing {disk}' in said()
        assert 'in memory' in said()
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


# ---- 9: tampered latents, latents.json, prepare_report.json ----------------------------------------

@pytest.fixture
def latent_dataset(tmp_path, tokenizer, prompt_template):
    """A dataset over 6 images and their latents ``tmp_path/latents/<i>.jpg.pt`` (zeros, 4 x 8 x 8)."""
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.synthetic.images import encode_image
    import torch
    (tmp_path / 'images').mkdir()
    (tmp_path / 'latents').mkdir()
    records = []
    for i in range(6):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120, 100, seed=i))
        torch.save(torch.zeros(4, 8, 8), tmp_path / 'latents' / f'{i}.jpg.pt')
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i}'})
    (tmp_path / 'data.json').write_text(json.dumps(records))

    def make(**options):
        return CaptionDataset(str(tmp_path / 'data.json'), image_folder=str(tmp_path / 'images'), tokenizer=tokenizer,
                              prompt_template=prompt_template, image_size=32, unconditional=0, seed=0,
                              image_latents_folder=str(tmp_path / 'latents'), **options)
    return make


def test_a_sparse_or_nan_latent_is_a_counted_skip_naming_the_file_and_collate_never_sees_it(latent_dataset, tmp_path):
    import torch
    from src.datasets.collate_functions import collate_func_gen_latents
    from src.datasets.errors import SampleError
    latents = tmp_path / 'latents'
    torch.save(torch.zeros(4, 8, 8).to_sparse(), latents / '1.jpg.pt')
    nan = torch.zeros(4, 8, 8)
    nan[0, 3, 3] = float('nan')
    torch.save(nan, latents / '2.jpg.pt')
    inf = torch.zeros(4, 8, 8)
    inf[1, 1, 1] = float('inf')
    torch.save(inf.to(torch.bfloat16), latents / '3.jpg.pt')
    torch.save(torch.zeros(4, 8, 8, dtype=torch.int64), latents / '4.jpg.pt')
    dataset = latent_dataset()
    for idx, reason, says in [(1, 'bad-tensor', 'a sparse_coo torch.float32 tensor'),
                              (2, 'bad-latent-values', '1 of its 256 values are NaN or infinite'),
                              (3, 'bad-latent-values', '1 of its 256 values are NaN or infinite'),
                              (4, 'bad-tensor', 'torch.int64 tensor, not a dense floating-point latent')]:
        with pytest.raises(SampleError, match=f'{idx}.jpg.pt: .*{says}') as err:
            dataset.prepare_data(idx)
        assert err.value.reason == reason
    batch = collate_func_gen_latents([dataset[i] for i in range(6)])  # replaced by good ones
    latents = batch['data']['image_latents']
    assert latents.shape == (6, 4, 8, 8) and torch.isfinite(latents).all()
    assert dataset.failures == {'bad-tensor': dataset.failures['bad-tensor'],
                                'bad-latent-values': dataset.failures['bad-latent-values']}
    assert dataset.failures['bad-tensor'] >= 2 and dataset.failures['bad-latent-values'] >= 2


@pytest.mark.parametrize('shapes', [{'32x32': 5}, {'32x32': [4, 'eight', 8]}, {'32x32': []}, {'32x32': [4, -8, 8]},
                                    {'32x32': {'a': 1}}, {'32x32': [4, True, 8]}])
def test_latents_json_with_no_shape_where_one_is_wanted_is_refused_naming_the_file(latent_dataset, tmp_path, shapes):
    from src.datasets.errors import IndexFormatError
    info = tmp_path / 'latents' / 'latents.json'
    info.write_text(json.dumps({'format': 1, 'vae': 'v', 'image_size': 32, 'buckets': None, 'shapes': shapes}))
    with pytest.raises(IndexFormatError, match=f'{info}: "shapes" maps \'32x32\' to .*, not a latent shape'):
        latent_dataset()


@pytest.mark.parametrize('report', [
    {'indexes': 5}, {'indexes': [3]}, {'indexes': [{'dropped': []}]}, {'indexes': [{'dropped': {'x': 4}}]},
    {'indexes': [{'dropped': {'x': {'count': 'many'}}}]}, {'members_refused': 'all'}, [1, 2], 'text'])
def test_a_malformed_prepare_report_is_left_out_of_the_report_with_a_warning(tmp_path, report, caplog):
    from src.report.statistics import prepare_drops
    (tmp_path / 'prepare_report.json').write_text(json.dumps(report))
    with caplog.at_level(logging.WARNING):
        assert prepare_drops(str(tmp_path / 'data.json')) == {}
    if isinstance(report, dict):
        assert str(tmp_path / 'prepare_report.json') in caplog.text


def test_a_well_formed_prepare_report_gives_its_drop_counts(tmp_path):
    from src.report.statistics import prepare_drops
    (tmp_path / 'prepare_report.json').write_text(json.dumps({
        'indexes': [{'dropped': {'no image': {'count': 3}}}, {'dropped': {'no image': {'count': 2}}}],
        'members_refused': {'link': {'count': 1}}}))
    assert prepare_drops(str(tmp_path / 'data.json')) == {'no image': 5, 'member refused: link': 1}


def test_a_full_disk_while_storing_prompt_ids_tokenizes_as_read_and_names_the_disk(tmp_path, tokenizer,
                                                                                    prompt_template, said):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.synthetic.images import encode_image
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(4):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120, 100, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i} ' * 40})
    (tmp_path / 'data.json').write_text(json.dumps(records))
    with tiny_disk(tmp_path / 'disk', 128) as disk:
        def make(**options):
            return CaptionDataset(str(tmp_path / 'data.json'), image_folder=str(tmp_path / 'images'), tokenizer=tokenizer,
                                  prompt_template=prompt_template, image_size=32, unconditional=0, seed=0,
                                  index_cache_dir=str(disk), **options)
        plain = make()
        fill(disk)
        stored = make(pretokenize=True)
        assert stored.prompt_ids is None
        assert f'No space left on the file system mounted at {disk} while writing {disk}' in said()
        assert [stored[i]['input_ids'].tolist() for i in range(4)] == [plain[i]['input_ids'].tolist() for i in range(4)]
        assert not [p for p in disk.iterdir() if '.tmp' in p.name]
