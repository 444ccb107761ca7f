"""The URL route of laion6m / redcaps5m: parquets of URLs served by a local HTTP server on 127.0.0.1,
fetched through img2dataset by the tools, indexed, and read through the *_recap configs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.prepare import datasets
from src.prepare.recap import DownloadOptions
from src.prepare.tar_members import INDEX_MEMBERS
from src.synthetic.downloads import DEFAULT_ROOTS, make_recap
from src.synthetic.url_server import UrlServer

from config_helpers import assert_reads_expected_samples, build

pytestmark = pytest.mark.slow  # img2dataset starts its own processes: a few seconds a run

REPO = Path(__file__).resolve().parents[1]
# The served timeout answers after 3 s: a 1 s client timeout makes it a failure, quickly. The server
# is on 127.0.0.1, which the URL rule refuses unless local URLs are allowed.
OPTIONS = DownloadOptions(timeout=1, samples_per_shard=4, thread_count=4, allow_local_urls=True)


@pytest.fixture
def server():
    with UrlServer() as running:
        yield running


def prepare(name, root, **options):
    return getattr(datasets, f'prepare_{name}')(str(root), download=OPTIONS, num_processes=1, **options)


def in_dir(path):
    class Chdir:
        def __enter__(self):
            self.cwd = os.getcwd()
            os.chdir(path)

        def __exit__(self, *exc):
            os.chdir(self.cwd)
    return Chdir()


@pytest.mark.parametrize('name', ['laion6m', 'redcaps5m'])
def test_urls_are_downloaded_indexed_and_read_by_the_recap_config(tmp_path, server, name, tokenizer_path,
                                                                  tokenizer, prompt_template):
    root = tmp_path / DEFAULT_ROOTS[name]
    expected = make_recap(name, root, server)

    report = prepare(name, root)

    assert report.finish() == 0, report.summary()
    rows = json.loads((root / 'data.json').read_text())
    pairs = [{'image': row['image'], 'annotation': row['annotation']} for row in rows]  # + img2dataset's columns
    assert pairs == [{'image': image, 'annotation': image[:-len('.jpg')] + '.json'}
                     for image in sorted(expected.samples)]
    download = report.download
    assert download['successes'] == len(expected.samples) and download['shards_unfinished'] == []
    failed = download['failed_by_reason']
    assert sum(failed.values()) == len(expected.faults) == 3
    assert any('404' in reason for reason in failed) and any('timed out' in reason for reason in failed)
    assert 'images downloaded: 8; failed: 3' in report.summary()
    for image in expected.samples:  # the json keeps every other column of the parquet
        meta = json.loads((root / 'raw' / image).with_suffix('.json').read_text())
        assert meta['re_caption'] == expected.samples[image]
        assert meta['caption'] == expected.other_captions['caption'][image] and 'aesthetic' in meta
    with in_dir(tmp_path):
        loader = build(f'{name}_recap', tokenizer_path)
        assert_reads_expected_samples(loader.dataset, expected.samples, tokenizer, prompt_template)

    # A second run downloads nothing and leaves the index as it was.
    fetched = server.fetched()
    again = prepare(name, root)
    assert server.fetched() == fetched and again.exit_code() == 0
    assert again.download['shards_now'] == 0 and again.download['shards_earlier'] == download['shards_total']
    assert not again.indexes[0].changed


def test_no_extract_keeps_shards_as_tars_and_reads_the_same_samples(tmp_path, server, tokenizer_path, tokenizer,
                                                                     prompt_template):
    root = tmp_path / DEFAULT_ROOTS['laion6m']
    expected = make_recap('laion6m', root, server)

    report = prepare('laion6m', root, step=INDEX_MEMBERS)

    assert report.finish() == 0, report.summary()
    assert sorted(p.name for p in (root / 'raw').glob('*.tar')) == ['00000.tar', '00001.tar', '00002.tar', '00003.tar']
    assert not list((root / 'raw').glob('*/*.jpg'))
    with in_dir(tmp_path):
        loader = build('laion6m_recap', tokenizer_path, dataset_overrides=dict(tar_index='data/laion6m/tar_index.arrow'))
        assert_reads_expected_samples(loader.dataset, expected.samples, tokenizer, prompt_template)
    switched = prepare('laion6m', root)  # the files route over a tar download is refused
    assert switched.exit_code() == 1 and 'downloaded as webdataset' in switched.index_error


def test_a_shard_killed_halfway_is_fetched_again_and_only_it(tmp_path, server):
    root = tmp_path / 'laion6m'
    expected = make_recap('laion6m', root, server, faults=False)
    assert prepare('laion6m', root).exit_code() == 0
    # A kill before img2dataset wrote the shard's stats: some files written, no stats.
    (root / 'raw' / '00001_stats.json').unlink()
    for path in sorted((root / 'raw' / '00001').iterdir())[1:]:
        path.unlink()
    fetched = server.fetched()

    report = prepare('laion6m', root)

    assert report.exit_code() == 0 and report.download['shards_now'] == 1
    assert server.fetched() - fetched == sum(1 for image in expected.samples if image.startswith('00001/'))
    assert sorted(row['image'] for row in json.loads((root / 'data.json').read_text())) == sorted(expected.samples)


def test_urls_that_all_fail_end_in_an_error_not_an_empty_success(tmp_path, server):
    root = tmp_path / 'redcaps5m'
    (root / 'parquets').mkdir(parents=True)
    pq.write_table(pa.table({'url': [server.url('/gone-1.jpg'), server.url('/gone-2.jpg')],
                             're_caption': ['a', 'b']}), root / 'parquets' / 'part-0.parquet')

    report = prepare('redcaps5m', root)

    assert report.exit_code() == 1
    assert report.download['failed_by_reason'] == {'HTTP Error 404: Not Found': 2}
    assert 'EMPTY INDEX' in report.summary() or 'nothing to prepare' in report.summary()


def test_a_parquet_without_the_url_column_is_an_error_listing_its_columns(tmp_path):
    root = tmp_path / 'laion6m'
    (root / 'parquets').mkdir(parents=True)
    pq.write_table(pa.table({'URL': ['http://127.0.0.1:9/a.jpg'], 're_caption': ['a']}),
                   root / 'parquets' / 'part-0.parquet')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / 'tools/prepare_laion6m.py'), '--root', str(root)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no URL column 'url'; its columns are ['URL', 're_caption']" in result.stderr
    assert '--url-col' in result.stderr and not (root / 'raw').exists()


def test_every_tool_on_an_empty_download_exits_non_zero_saying_where_it_looked(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in DEFAULT_ROOTS:
        root = tmp_path / name
        (root / '.cache' / 'huggingface').mkdir(parents=True)  # what a download that fetched nothing leaves
        (root / 'README.md').write_text('# card\n')
        result = subprocess.run([sys.executable, str(REPO / f'tools/prepare_{name}.py'), '--root', str(root)],
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (name, result.stderr)
        assert f'nothing to prepare in {root}' in result.stderr, (name, result.stderr)
        if name == 'midjourney23m':
            assert 'gated' in result.stderr and 'huggingface-cli login' in result.stderr
        shutil.rmtree(root)


def test_the_pyspark_distributor_without_pyspark_says_how_to_get_it(tmp_path):
    import importlib.util
    if importlib.util.find_spec('pyspark') is not None:
        pytest.skip('pyspark is installed here')
    root = tmp_path / 'laion6m'
    (root / 'parquets').mkdir(parents=True)
    pq.write_table(pa.table({'url': ['http://127.0.0.1:9/a.jpg'], 're_caption': ['a']}), root / 'parquets' / 'p.parquet')
    report = datasets.prepare_laion6m(str(root), download=DownloadOptions(distributor='pyspark'), num_processes=1)
    assert report.exit_code() == 1 and "pip install 't2i-data[spark]'" in report.index_error


def _spark_available() -> bool:
    import importlib.util
    return importlib.util.find_spec('pyspark') is not None and shutil.which('java') is not None


@pytest.mark.slow
@pytest.mark.skipif(not _spark_available(), reason="needs the 'spark' extra and Java (make installs both, as root)")
def test_the_pyspark_distributor_downloads_in_a_local_session_as_multiprocessing_does(tmp_path, server, monkeypatch):
    root = tmp_path / DEFAULT_ROOTS['laion6m']
    expected = make_recap('laion6m', root, server)
    by_processes = tmp_path / 'multiprocessing' / DEFAULT_ROOTS['laion6m']
    shutil.copytree(root, by_processes)  # the same URL parquets, before either download
    options = DownloadOptions(timeout=1, samples_per_shard=4, thread_count=4, distributor='pyspark',
                              allow_local_urls=True)

    # Executors whose Python lacks img2dataset: a clear error, not Spark's traceback.
    system_python = shutil.which('python3', path='/usr/bin')
    if system_python and subprocess.run([system_python, '-c', 'import img2dataset'],
                                        capture_output=True).returncode != 0:
        monkeypatch.setenv('PYSPARK_PYTHON', system_python)
        failed = datasets.prepare_laion6m(str(root), download=options, num_processes=1)
        assert failed.exit_code() == 1
        assert 'download (pyspark) failed' in failed.index_error and 'PYSPARK_PYTHON' in failed.index_error
        monkeypatch.delenv('PYSPARK_PYTHON')

    report = datasets.prepare_laion6m(str(root), download=options, num_processes=1)
    assert report.finish() == 0, report.summary()
    rows = json.loads((root / 'data.json').read_text())
    assert [row['image'] for row in rows] == sorted(expected.samples)
    assert report.download['distributor'] == 'pyspark' and report.download['successes'] == len(expected.samples)
    assert sum(report.download['failed_by_reason'].values()) == len(expected.faults)

    multiprocessing = datasets.prepare_laion6m(str(by_processes), num_processes=1, download=DownloadOptions(
        timeout=1, samples_per_shard=4, thread_count=4, distributor='multiprocessing', allow_local_urls=True))
    assert multiprocessing.finish() == 0, multiprocessing.summary()
    assert json.loads((by_processes / 'data.json').read_text()) == rows  # the same records, the same order
    assert multiprocessing.download['failed_by_reason'] == report.download['failed_by_reason']


def test_cc3m_urls_become_the_index_harmons_image2text_reads(tmp_path, server, tokenizer_path):
    from mmengine.runner import Runner

    from src.synthetic.downloads import FAMILY_ROOTS
    from src.synthetic.local_config import localize
    from config_helpers import load
    root = tmp_path / FAMILY_ROOTS['cc3m']
    expected = make_recap('cc3m', root, server, n=4)
    report = datasets.prepare_cc3m(str(root), download=DownloadOptions(url_col='image_url', timeout=1,
                                                                       samples_per_shard=4, thread_count=4,
                                                                       allow_local_urls=True),
                                   num_processes=1)
    assert report.finish() == 0, report.summary()
    rows = json.loads((root / 'cc3m_densecaps.json').read_text())
    assert sorted(row['image'] for row in rows) == sorted(expected.samples)
    with in_dir(tmp_path):
        loader = Runner.build_dataloader(localize(load('cc3m_image2text'), tokenizer_path,
                                                  dataset_overrides=dict(image_size=32, seed=0), batch_size=2,
                                                  num_workers=0, pin_memory=False), seed=0)
        batch = next(iter(loader))['data']
    assert set(batch) == {'input_ids', 'attention_mask', 'labels', 'pixel_values'}
    assert batch['pixel_values'].shape == (2, 3, 32, 32) and (batch['input_ids'] == -200).sum() == 2 * 256
