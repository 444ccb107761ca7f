"""A tar shard in a bucket replaced by one of the same size (issue 37, class 8): its ETag is kept
when a machine first reads it and compared after, and every ranged GET asks for that ETag
(``If-Match``), so the records never change silently. moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import pytest

from src.datasets.storage.tar_index import StaleIndexError
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare.datasets import prepare_redcaps5m
from src.prepare.tar_members import INDEX_MEMBERS
from src.synthetic.downloads import MAKERS

pytestmark = pytest.mark.slow  # a server process of its own
ACCESS, SECRET = 'test-access-key', 'test-secret-key-never-printed'


@pytest.fixture
def bucket(tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f'http://{host}:{port}'
    client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          region_name='us-east-1')
    client.create_bucket(Bucket='data')
    config = tmp_path / 'petreloss.conf'
    config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = {ACCESS}\nsecret_key = {SECRET}\n'
                      f'host_base = {endpoint}\n')
    yield client, str(config)
    server.stop()


def _same_size_other_bytes(data: bytes) -> bytes:
    """The shard with the bytes of its first member's data changed, its size and headers kept."""
    body = bytearray(data)
    for i in range(512, 1024):  # the first member's data follows its 512-byte header
        body[i] ^= 0x5A
    return bytes(body)


def test_a_shard_replaced_by_one_of_the_same_size_is_refused_naming_it(bucket, tmp_path, tokenizer, prompt_template):
    client, config = bucket
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=4, faults=False, shards=1)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    for path in packed.root.rglob('*'):
        if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
            client.put_object(Bucket='data', Key=f'packed/{path.relative_to(packed.root).as_posix()}',
                              Body=path.read_bytes())

    def make():
        return CaptionDataset('s3://data/packed/redcaps5m_data.json', tokenizer=tokenizer,
                              prompt_template=prompt_template, ceph_folder='s3://data/packed/raw', ceph_config=config,
                              tar_index='s3://data/packed/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'),
                              image_size=64, cap_source='re_caption', seed=0, unconditional=0)

    running = make()
    before = running.prepare_data(0)  # this machine sees the shard's ETag
    shard = client.get_object(Bucket='data', Key='packed/raw/00000.tar')['Body'].read()
    client.put_object(Bucket='data', Key='packed/raw/00000.tar', Body=_same_size_other_bytes(shard))

    with pytest.raises(StaleIndexError, match='00000.tar: replaced in .* while it was being read'):
        running.prepare_data(1)  # a run that read it already: its GETs ask for the ETag it saw
    with pytest.raises(StaleIndexError, match=r'00000.tar was replaced in the bucket after this machine first read '
                                              r'it \(its ETag was .*; the same \d+ bytes\)'):
        make().prepare_data(0)  # a later run on this machine

    client.put_object(Bucket='data', Key='packed/raw/00000.tar', Body=shard)  # put back: read as before
    assert make().prepare_data(0)['input_ids'].tolist() == before['input_ids'].tolist()
