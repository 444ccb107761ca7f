"""obstore in DataLoader workers (src.datasets.storage.obstore_client): made in each worker, never in the
parent, so workers forked after the parent read from the bucket read every sample whole; against
moto's standalone server, through a proxy that throttles and cuts bodies. The fork runs in a
process of its own under a timeout (a hang fails the test instead of stalling the suite)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a server process of its own
pytest.importorskip('obstore')
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
    """redcaps5m's miniature in a bucket twice: loose objects (``raw/``) and tar shards with their
    member index (``packed/``)."""
    import boto3

    from moto_server import moto_server
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import MAKERS
    base = tmp_path_factory.mktemp('obstore')
    loose = MAKERS['redcaps5m'](base / 'loose', n=8, faults=False)
    assert prepare_redcaps5m(str(loose.root), num_processes=1).exit_code() == 0
    packed = MAKERS['redcaps5m'](base / 'packed', n=8, faults=False)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    with moto_server() as endpoint:
        client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='k', aws_secret_access_key='s',
                              region_name='us-east-1')
        client.create_bucket(Bucket='data')
        for path in (loose.root / 'raw').rglob('*'):
            if path.is_file() and path.suffix != '.tar':
                client.put_object(Bucket='data', Key=f'raw/{path.relative_to(loose.root / "raw").as_posix()}',
                                  Body=path.read_bytes())
        for path in packed.root.rglob('*'):
            if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
                client.put_object(Bucket='data', Key=f'packed/{path.relative_to(packed.root).as_posix()}',
                                  Body=path.read_bytes())
        yield endpoint, loose, packed


def run_forked(tmp_path, tokenizer_path, endpoint: str, *options, **dataset) -> dict:
    config = tmp_path / 'petreloss.conf'
    config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = k\nsecret_key = s\n'
                      f'host_base = {endpoint}\n')
    out = tmp_path / 'out.json'
    dataset = dict(dataset, ceph_config=str(config), image_size=32, cap_source='re_caption', seed=0,
                   index_cache_dir=str(tmp_path / 'cache'))
    command = [sys.executable, str(REPO / 'tests' / 'obstore_fork_run.py'), '--out', str(out),
               '--tokenizer', tokenizer_path, '--dataset', json.dumps(dataset), *options]
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM='false')
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail('DataLoader workers forked after the parent read hung')
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def digests(expected) -> list[str]:
    records = json.loads((expected.root / 'redcaps5m_data.json').read_text())
    return [hashlib.sha256((expected.root / 'raw' / r['image']).read_bytes()).hexdigest() for r in records]


@pytest.mark.parametrize('layout', ['objects', 'tar shards'])
def test_workers_forked_after_the_parent_read_read_every_sample_with_obstore(bucket, tmp_path, tokenizer_path,
                                                                             layout):
    from flaky_proxy import FlakyProxy
    endpoint, loose, packed = bucket
    with FlakyProxy(endpoint, throttle_every=5, cut_every=7) as proxy:
        if layout == 'objects':
            dataset = dict(data_path=str(loose.root / 'redcaps5m_data.json'), ceph_folder='s3://data/raw')
        else:
            dataset = dict(data_path='s3://data/packed/redcaps5m_data.json', ceph_folder='s3://data/packed/raw',
                           tar_index='s3://data/packed/tar_index.arrow')
        result = run_forked(tmp_path, tokenizer_path, proxy.url, **dataset)
    assert [s['client'] for s in result['parent']] == ['boto3']  # the parent never makes obstore
    workers = sorted(result['workers'], key=lambda s: s['idx'])
    assert [s['idx'] for s in workers] == list(range(len(loose.samples)))
    assert {s['client'] for s in workers} == {'obstore'} and len({s['pid'] for s in workers}) == 2
    # Every file whole, through throttling and cuts (both layouts are made from one seed: the same images).
    assert [s['image'] for s in workers] == digests(loose)
    assert result['parent'][0]['image'] == workers[0]['image']
    assert proxy.throttled > 0 and (proxy.cut > 0 or layout == 'tar shards')  # (the proxy cuts 200s, not 206s)


def test_without_obstore_workers_read_with_boto3(bucket, tmp_path, tokenizer_path):
    endpoint, loose, _ = bucket
    result = run_forked(tmp_path, tokenizer_path, endpoint, '--without-obstore',
                        data_path=str(loose.root / 'redcaps5m_data.json'), ceph_folder='s3://data/raw')
    workers = sorted(result['workers'], key=lambda s: s['idx'])
    assert {s['client'] for s in workers} == {'boto3'} and [s['image'] for s in workers] == digests(loose)


def test_outside_a_worker_there_is_no_obstore_store():
    from src.datasets.storage.object_store import Cluster
    from src.datasets.storage.obstore_client import worker_store
    assert worker_store(Cluster('c', 'http://127.0.0.1:1', 'k', 's'), 'b') is None
