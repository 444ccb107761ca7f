"""ceph_folder / latents_ceph_folder / ceph_config as upstream uses them, over S3: a real
S3-protocol server (moto's standalone server) on 127.0.0.1, started and stopped by the tests."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from src.datasets.errors import SampleError
from src.datasets.storage.object_store import ObjectFolder, StorageConfigError
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare.datasets import prepare_redcaps5m
from src.synthetic.downloads import MAKERS

pytestmark = pytest.mark.slow  # a server process of its own
ACCESS, SECRET = 'test-access-key', 'test-secret-key-never-printed'


@pytest.fixture(scope='module')
def s3():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3
    client = boto3.client('s3', endpoint_url=f'http://{host}:{port}', aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name='us-east-1')
    yield f'http://{host}:{port}', client
    server.stop()


def petrel_config(path: Path, endpoint: str, **section) -> str:
    values = {**dict(access_key=ACCESS, secret_key=SECRET, host_base=endpoint), **section}
    lines = ['[DEFAULT]', 'default_cluster = cluster1', '', '[cluster1]']
    lines += [f'{key} = {value}' for key, value in values.items() if value is not None]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@pytest.fixture(scope='module')
def uploaded(s3, tmp_path_factory):
    """A prepared redcaps5m download, its raw/ uploaded to s3://data/redcaps5m/raw."""
    endpoint, client = s3
    root = tmp_path_factory.mktemp('s3data') / 'redcaps5m'
    expected = MAKERS['redcaps5m'](root, n=6, faults=False)
    assert prepare_redcaps5m(str(root), num_processes=1).exit_code() == 0
    client.create_bucket(Bucket='data')
    for path in (root / 'raw').rglob('*'):
        if path.is_file() and path.suffix != '.tar':
            client.put_object(Bucket='data', Key=f'redcaps5m/raw/{path.relative_to(root / "raw")}', Body=path.read_bytes())
    return expected


def dataset(expected, tokenizer, prompt_template, **keywords) -> CaptionDataset:
    return CaptionDataset(str(expected.root / 'redcaps5m_data.json'), tokenizer=tokenizer,
                          prompt_template=prompt_template, image_size=64, cap_source='re_caption', seed=0,
                          unconditional=0, **keywords)


def test_samples_from_the_bucket_equal_those_from_the_local_copy(uploaded, s3, tmp_path, tokenizer, prompt_template):
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    local = dataset(uploaded, tokenizer, prompt_template, image_folder=str(uploaded.root / 'raw'),
                    cap_folder=str(uploaded.root / 'raw'))
    remote = dataset(uploaded, tokenizer, prompt_template, ceph_folder='cluster1:s3://data/redcaps5m/raw',
                     ceph_config=config)
    assert len(remote) == len(local) == len(uploaded.samples)
    for idx in range(len(local)):
        ours, theirs = remote.prepare_data(idx), local.prepare_data(idx)
        assert torch.equal(ours['pixel_values'], theirs['pixel_values'])
        assert torch.equal(ours['input_ids'], theirs['input_ids'])


def test_a_missing_object_is_a_counted_missing_file(uploaded, s3, tmp_path, tokenizer, prompt_template):
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    remote = dataset(uploaded, tokenizer, prompt_template, ceph_folder='s3://data/redcaps5m/raw', ceph_config=config)
    image = remote.data_list[0]['image']
    s3[1].delete_object(Bucket='data', Key=f'redcaps5m/raw/{image}')
    try:
        with pytest.raises(SampleError, match='no such object') as err:
            remote.prepare_data(0)
        assert err.value.reason == 'missing-file'
        assert remote[0]['image_file'] != image and set(remote.failures) == {'missing-file'}  # replaced, counted
    finally:
        s3[1].put_object(Bucket='data', Key=f'redcaps5m/raw/{image}',
                         Body=(uploaded.root / 'raw' / image).read_bytes())


def test_latents_come_from_latents_ceph_folder(uploaded, s3, tmp_path, tokenizer, prompt_template):
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    written = {}
    for i, record in enumerate(dataset(uploaded, tokenizer, prompt_template,
                                       image_folder=str(uploaded.root / 'raw')).data_list):
        written[record['image']] = torch.full((4, 2, 2), float(i), dtype=torch.bfloat16)
        buf = io.BytesIO()
        torch.save(written[record['image']], buf)
        s3[1].put_object(Bucket='data', Key=f'latents/{record["image"]}.pt', Body=buf.getvalue())
    remote = dataset(uploaded, tokenizer, prompt_template, cap_folder=str(uploaded.root / 'raw'),
                     latents_ceph_folder='s3://data/latents', ceph_config=config)
    for idx in range(len(remote)):
        sample = remote.prepare_data(idx)
        assert torch.equal(sample['image_latents'], written[sample['image_file']])
    batch = remote.__getitems__(list(range(len(remote))))  # a batch's latents fetched at once
    assert all(torch.equal(sample['image_latents'], written[sample['image_file']]) for sample in batch)
    assert len(batch) == len(remote) and len(remote.latent_files._kept) == 0  # each handed out once


@pytest.mark.parametrize('change, words', [
    (dict(folder='s3://no-such-bucket/x'), 'bucket no-such-bucket): the bucket does not exist'),
    (dict(endpoint='http://127.0.0.1:1'), 'the endpoint cannot be reached'),
    (dict(secret_key=None), 'section [cluster1] has no secret_key'),
    (dict(folder='other:s3://data/x'), "cluster 'other' is not in ceph_config"),
    (dict(folder='data/x'), 'is not [cluster:]s3://bucket/prefix'),
])
def test_a_wrong_setting_fails_at_start_up_naming_it_and_no_secret(s3, tmp_path, monkeypatch, change, words):
    for name in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL'):
        monkeypatch.delenv(name, raising=False)
    section = {key: value for key, value in change.items() if key in ('secret_key',)}
    config = petrel_config(tmp_path / 'petreloss.conf', change.get('endpoint', s3[0]), **section)
    with pytest.raises(StorageConfigError) as err:
        ObjectFolder(change.get('folder', 's3://data/redcaps5m/raw'), config).check()
    assert words in str(err.value) and SECRET not in str(err.value) and ACCESS not in str(err.value)


def test_an_upstream_style_config_builds_and_reads_from_the_bucket(uploaded, s3, tmp_path, tokenizer_path):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from config_helpers import CONFIGS
    from src.synthetic.local_config import localize
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    cfg = Config.fromfile(str(CONFIGS / 'redcaps5m.py'))
    loader_cfg = localize(cfg, tokenizer_path, dataset_overrides=dict(
        data_path=str(uploaded.root / 'redcaps5m_data.json'), image_folder=None, cap_folder=None, image_size=64,
        ceph_folder='cluster1:s3://data/redcaps5m/raw', ceph_config=config), batch_size=3, num_workers=2,
        pin_memory=False)
    batch = next(iter(Runner.build_dataloader(loader_cfg, seed=0)))
    assert batch['data']['pixel_values'].shape == (3, 3, 64, 64)
    assert os.environ.get('AWS_SECRET_ACCESS_KEY') != SECRET  # nothing leaked into the environment


def test_throttling_and_dropped_connections_are_survived_with_bounded_retries(uploaded, s3, tmp_path, tokenizer,
                                                                              prompt_template):
    from flaky_proxy import FlakyProxy
    local = dataset(uploaded, tokenizer, prompt_template, image_folder=str(uploaded.root / 'raw'),
                    cap_folder=str(uploaded.root / 'raw'))
    with FlakyProxy(s3[0], throttle_every=3, cut_every=4) as proxy:
        config = petrel_config(tmp_path / 'petreloss.conf', proxy.url)
        remote = dataset(uploaded, tokenizer, prompt_template, ceph_folder='s3://data/redcaps5m/raw',
                         ceph_config=config)
        for idx in range(len(local)):
            assert torch.equal(remote.prepare_data(idx)['pixel_values'], local.prepare_data(idx)['pixel_values'])
    assert proxy.throttled > 0 and proxy.cut > 0  # both happened, and every sample still came whole


def test_upload_sends_a_prepared_folder_and_a_rerun_sends_nothing(s3, tmp_path):
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    expected = MAKERS['blip3o60k'](tmp_path / 'blip3o', n=4, faults=False)
    from src.prepare.datasets import prepare_blip3o60k
    assert prepare_blip3o60k(str(expected.root), num_processes=1).exit_code() == 0
    s3[1].create_bucket(Bucket='uploads')
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    command = [sys.executable, str(repo / 'tools' / 'upload.py'), str(expected.root), 's3://uploads/blip3o',
               '--ceph-config', config, '--workers', '4']
    env = dict(os.environ, PYTHONPATH=str(repo))
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    keys = {item['Key'] for item in s3[1].list_objects_v2(Bucket='uploads')['Contents']}
    local = {p.relative_to(expected.root).as_posix() for p in expected.root.rglob('*')
             if p.is_file() and '.prepare' not in p.parts and '.cache' not in p.parts}
    assert keys == {f'blip3o/{path}' for path in local}
    assert 'already there with the same size (skipped)' in first.stderr and ', 0 already there' in first.stderr
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and f'0 files uploaded (0.0 MiB), {len(local)} already there' in again.stderr


def upload_folder(client, bucket: str, root: Path, prefix: str) -> None:
    for path in root.rglob('*'):
        if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
            client.put_object(Bucket=bucket, Key=f'{prefix}/{path.relative_to(root).as_posix()}', Body=path.read_bytes())


def test_tar_shards_and_the_index_in_a_bucket_one_ranged_get_a_member(uploaded, s3, tmp_path, tokenizer,
                                                                    prompt_template):
    from flaky_proxy import FlakyProxy
    from src.prepare.tar_members import INDEX_MEMBERS
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=6, faults=False)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    upload_folder(s3[1], 'data', packed.root, 'packed')
    local = dataset(uploaded, tokenizer, prompt_template, image_folder=str(uploaded.root / 'raw'),
                    cap_folder=str(uploaded.root / 'raw'))
    with FlakyProxy(s3[0], throttle_every=0, cut_every=0) as proxy:
        config = petrel_config(tmp_path / 'petreloss.conf', proxy.url)
        remote = CaptionDataset('s3://data/packed/redcaps5m_data.json', tokenizer=tokenizer,
                                prompt_template=prompt_template, image_size=64, cap_source='re_caption', seed=0,
                                unconditional=0, ceph_folder='s3://data/packed/raw', ceph_config=config,
                                tar_index='s3://data/packed/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
        assert len(remote) == len(local)
        for idx in range(len(local)):
            record = remote.data_list[idx]
            assert record == local.data_list[idx]
            before = proxy.requests
            image = remote.read_image(record['image'])
            assert proxy.requests - before == 1  # one ranged GET: a shard's first also checks it, from its answer
            assert image == (uploaded.root / 'raw' / record['image']).read_bytes()
            # (the crops differ only because each dataset's random stream is keyed on its data_path)
            assert torch.equal(remote.prepare_data(idx)['input_ids'], local.prepare_data(idx)['input_ids'])

        # A sample's caption file and image lie side by side in its tar: one ranged GET for both.
        before = proxy.requests
        samples = [remote.prepare_data(idx) for idx in range(len(remote))]
        assert proxy.requests - before == len(remote)  # every shard's size was checked above
        assert [s['input_ids'].tolist() for s in samples] == [local.prepare_data(i)['input_ids'].tolist()
                                                              for i in range(len(local))]
        members = remote.ceph_files
        first, other = (f's3://data/packed/raw/{remote.data_list[i]["image"]}' for i in (0, len(remote) - 1))
        assert members.index.locate(first[len('s3://data/packed/'):])[0] != \
            members.index.locate(other[len('s3://data/packed/'):])[0]
        before = proxy.requests
        members.prefetch([[first, other, 's3://data/packed/raw/missing.jpg']])  # two shards: a GET each
        assert proxy.requests - before == 2
        assert members.read(first) == (uploaded.root / 'raw' / remote.data_list[0]['image']).read_bytes()
        assert proxy.requests - before == 2  # read from what was fetched
        with pytest.raises(SampleError, match='no such member'):
            members.read('s3://data/packed/raw/missing.jpg')

        # A batch, as the DataLoader asks for it: every sample's files fetched at once, in threads.
        proxy.latency, proxy.most_in_flight = 0.05, 0  # a real store's time to first byte
        before = proxy.requests
        batch = remote.__getitems__(list(range(len(remote))))
        shards = {members.index.locate(f'raw/{record["image"]}')[0] for record in remote.data_list}
        assert 1 < len(shards) < len(remote)  # the batch's neighbours in a shard: one GET for them all
        assert proxy.requests - before == len(shards) and proxy.most_in_flight > 1
        assert [s['input_ids'].tolist() for s in batch] == [s['input_ids'].tolist() for s in samples]


def test_an_index_in_the_bucket_is_fetched_once_per_machine(uploaded, s3, tmp_path, tokenizer, prompt_template):
    s3[1].put_object(Bucket='data', Key='indexes/redcaps5m_data.json',
                     Body=(uploaded.root / 'redcaps5m_data.json').read_bytes())
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    build = dict(tokenizer=tokenizer, prompt_template=prompt_template, ceph_folder='s3://data/redcaps5m/raw',
                 ceph_config=config, index_cache_dir=str(tmp_path / 'cache'))
    first = CaptionDataset('s3://data/indexes/redcaps5m_data.json', **build)
    copies = list((tmp_path / 'cache').rglob('redcaps5m_data.json'))
    assert len(first) == len(uploaded.samples) and len(copies) == 1
    mtime = copies[0].stat().st_mtime_ns
    CaptionDataset('s3://data/indexes/redcaps5m_data.json', **build)
    assert copies[0].stat().st_mtime_ns == mtime  # not fetched again
    with pytest.raises(StorageConfigError, match='no such object'):
        CaptionDataset('s3://data/indexes/missing.json', **build)


def test_a_gets_answer_says_the_whole_objects_size_or_nothing():
    """A shard's first ranged GET checks its size from ``Content-Range``; where a store leaves it
    unsaid, the reader asks with a HEAD rather than trusting the part's length."""
    from src.datasets.storage.object_store import whole_size
    assert whole_size({'ContentRange': 'bytes 10-19/1000', 'ContentLength': 10}, ranged=True) == 1000
    assert whole_size({'ContentRange': 'bytes 10-19/*', 'ContentLength': 10}, ranged=True) == -1
    assert whole_size({'ContentLength': 10}, ranged=True) == -1  # a ranged answer that does not say
    assert whole_size({'ContentLength': 1000}, ranged=False) == 1000


def test_a_shard_whose_size_differs_from_its_index_is_refused(uploaded, s3, tmp_path, tokenizer, prompt_template):
    from src.datasets.storage.tar_index import StaleIndexError
    from src.prepare.tar_members import INDEX_MEMBERS
    packed = MAKERS['redcaps5m'](tmp_path / 'stale', n=4, faults=False, shards=1)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    upload_folder(s3[1], 'data', packed.root, 'stale')
    s3[1].put_object(Bucket='data', Key='stale/raw/00000.tar', Body=b'\0' * 1024)  # another shard's bytes
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    remote = CaptionDataset('s3://data/stale/redcaps5m_data.json', tokenizer=tokenizer, prompt_template=prompt_template,
                            ceph_folder='s3://data/stale/raw', ceph_config=config,
                            tar_index='s3://data/stale/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(StaleIndexError, match='00000.tar has 1024 bytes in the bucket'):
        remote.prepare_data(0)

    s3[1].delete_object(Bucket='data', Key='stale/raw/00000.tar')  # gone: each sample a counted skip
    gone = CaptionDataset('s3://data/stale/redcaps5m_data.json', tokenizer=tokenizer, prompt_template=prompt_template,
                          ceph_folder='s3://data/stale/raw', ceph_config=config,
                          tar_index='s3://data/stale/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
    gone.ceph_files.prefetch([[f's3://data/stale/raw/{gone.data_list[0]["image"]}']])  # no error of its own
    with pytest.raises(SampleError, match='missing-file|no such object'):
        gone.prepare_data(0)


@pytest.mark.parametrize('name', list(MAKERS))
def test_every_dataset_reads_the_same_from_the_bucket_as_from_disk(name, s3, tmp_path, tokenizer_path):
    """Each prepared miniature download uploaded whole; its config with image_folder=None and
    ceph_folder in the bucket (captions in their own folder stay local, as upstream reads them)."""
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    from config_helpers import CONFIGS
    from src.prepare import datasets as prepare
    from src.synthetic.downloads import DEFAULT_ROOTS
    from src.synthetic.local_config import localize
    workdir = tmp_path / 'work'
    expected = MAKERS[name](workdir / DEFAULT_ROOTS[name], n=4, faults=False)
    assert getattr(prepare, f'prepare_{name}')(str(expected.root), num_processes=1).exit_code() == 0
    s3[1].create_bucket(Bucket=f'every-{name.lower()}')
    upload_folder(s3[1], f'every-{name.lower()}', expected.root, 'root')
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    os.chdir(workdir)
    try:
        local_cfg = localize(Config.fromfile(str(CONFIGS / f'{name}.py')), tokenizer_path,
                             dataset_overrides=dict(image_size=64, seed=0)).dataset
        local = DATASETS.build(local_cfg)
        image_folder = os.path.relpath(local_cfg.image_folder, DEFAULT_ROOTS[name])
        same_folder = local_cfg.get('cap_folder') in (None, local_cfg.image_folder)
        remote_cfg = localize(Config.fromfile(str(CONFIGS / f'{name}.py')), tokenizer_path, dataset_overrides=dict(
            image_size=64, seed=0, image_folder=None, ceph_config=config,
            ceph_folder=f's3://every-{name.lower()}/root/{image_folder}'.rstrip('/.'),
            cap_folder=None if same_folder else local_cfg.cap_folder)).dataset
        remote = DATASETS.build(remote_cfg)
        assert len(remote) == len(local) > 0
        for idx in range(len(local)):
            image = local.data_list[idx][local.image_key]
            assert remote.read_image(image) == local.read_image(image)
            record = local.data_list[idx]
            if 'annotation' in record:
                assert remote.read_annotation(record['annotation']) == local.read_annotation(record['annotation'])
    finally:
        os.chdir(Path(__file__).resolve().parents[1])


@pytest.fixture(scope='module')
def s3_with_auth():
    """A moto server that checks credentials (after the 4 set-up calls): an IAM user with a key."""
    import boto3

    from moto_server import moto_server
    with moto_server(env={'INITIAL_NO_AUTH_ACTION_COUNT': '4'}) as endpoint:
        anyone = dict(endpoint_url=endpoint, region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x')
        iam = boto3.client('iam', **anyone)
        iam.create_user(UserName='trainer')
        key = iam.create_access_key(UserName='trainer')['AccessKey']
        iam.put_user_policy(UserName='trainer', PolicyName='all', PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        boto3.client('s3', **anyone).create_bucket(Bucket='secured')
        yield endpoint, key['AccessKeyId'], key['SecretAccessKey']


# A HEAD answer has no body to say which key is wrong: both are 'access denied' naming both settings.
@pytest.mark.parametrize('keys, words', [('good', None), ('unknown', 'access denied: check access_key / secret_key'),
                                         ('wrong-secret', 'access denied: check access_key / secret_key')])
def test_wrong_keys_fail_at_start_up_without_printing_them(s3_with_auth, tmp_path, monkeypatch, keys, words):
    endpoint, access, secret = s3_with_auth
    access_key = {'unknown': 'AKIANOTAKEYATALL0000'}.get(keys, access)
    secret_key = {'wrong-secret': 'not-the-secret-' + secret[:4]}.get(keys, secret)
    config = petrel_config(tmp_path / 'petreloss.conf', endpoint, access_key=access_key, secret_key=secret_key)
    folder = ObjectFolder('s3://secured/x', config)
    if words is None:
        folder.check()  # the right keys pass
        return
    with pytest.raises(StorageConfigError) as err:
        folder.check()
    message = str(err.value)
    assert words in message and 'secured' in message, message
    assert secret_key not in message and access_key not in message


def test_a_subclass_written_against_upstream_reads_the_bucket(uploaded, s3, tmp_path, tokenizer, prompt_template):
    """Upstream's hooks (_read_image, _read_json, _read_ceph, _process_*) over object storage."""
    from test_family import UpstreamStyleReconstruct
    config = petrel_config(tmp_path / 'petreloss.conf', s3[0])
    options = dict(tokenizer=tokenizer, prompt_template=prompt_template, image_size=64, cap_source='re_caption',
                   seed=0, unconditional=0)
    data_path = str(uploaded.root / 'redcaps5m_data.json')
    remote = UpstreamStyleReconstruct(data_path, ceph_folder='cluster1:s3://data/redcaps5m/raw', ceph_config=config,
                                      **options)
    local = UpstreamStyleReconstruct(data_path, image_folder=str(uploaded.root / 'raw'),
                                     cap_folder=str(uploaded.root / 'raw'), **options)
    record = remote.data_list[0]
    assert remote._read_ceph(f'cluster1:s3://data/redcaps5m/raw/{record["annotation"]}').read() == \
        (uploaded.root / 'raw' / record['annotation']).read_bytes()
    for idx in range(len(local)):
        ours, theirs = remote[idx], local[idx]
        assert ours['image_file'] == theirs['image_file'] and torch.equal(ours['input_ids'], theirs['input_ids'])
        assert torch.equal(ours['pixel_values'], theirs['pixel_values'])


def test_prefetched_bytes_are_bounded_and_handed_out_once():
    from src.datasets.storage.object_store import Kept
    kept = Kept(limit=10)
    kept.put('a', b'123456')
    kept.put('b', b'abcdef')  # over the limit: the oldest goes
    assert 'a' not in kept and kept.take('b') == b'abcdef' and kept.take('b') is None and len(kept) == 0


def test_a_samples_members_close_together_in_one_tar_share_a_range():
    from src.datasets.storage.object_tars import MAX_GAP, member_spans
    located = {'s/1.json': ('0.tar', 10 ** 9, 2048, 100), 's/1.jpg': ('0.tar', 10 ** 9, 512, 1000),
               'far.jpg': ('0.tar', 10 ** 9, 2148 + MAX_GAP + 1, 10), 'other.jpg': ('1.tar', 5000, 512, 10)}
    assert member_spans(located) == [
        ('0.tar', 10 ** 9, 512, 2148, [('s/1.jpg', 512, 1000), ('s/1.json', 2048, 100)]),
        ('0.tar', 10 ** 9, 2148 + MAX_GAP + 1, 2148 + MAX_GAP + 11, [('far.jpg', 2148 + MAX_GAP + 1, 10)]),
        ('1.tar', 5000, 512, 522, [('other.jpg', 512, 10)])]
