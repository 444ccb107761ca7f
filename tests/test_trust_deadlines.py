"""A store that trickles its answers (a byte every 0.2 s: never idle for the read timeout) against
the one deadline of every object-store request (``src.datasets.storage.deadlines``): a tar member's
ranged GET through the dataset ends in a counted ``too-slow`` skip naming the object and the range,
with boto3 and with obstore in a DataLoader worker; a HEAD whose headers trickle ends too. A store
that sends no ETag is said once. moto's S3 server on 127.0.0.1, behind a proxy that misbehaves."""
from __future__ import annotations

import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import torch

from flaky_proxy import LocalServer, forwarded

from src.datasets.errors import SampleError
from src.datasets.storage import deadlines

pytestmark = pytest.mark.slow  # a server of its own, and a DataLoader worker
ACCESS, SECRET = 'test-access-key', 'test-secret-key-never-printed'
TRICKLE = 0.2  # seconds between two bytes of a trickled answer
NO_HANG = 30  # seconds: a read still going after this hangs (it should end after about 2 x the deadline)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up on a trickled answer


class Trickle(LocalServer):
    """A proxy in front of an S3 server: a ranged GET whose range holds one of ``slow_offsets``
    gets its headers, then its body a byte every 0.2 s, as does every GET of a key ending in one of
    ``slow_keys``; with ``slow_head``, a HEAD gets its headers so; with ``etags=False``, no answer
    carries an ETag."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.host, self.port = target.hostname, target.port
        self.slow_offsets, self.slow_head, self.etags, self.trickled = set(), False, True, 0
        self.slow_keys = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _forward(self):
                response, data = forwarded(self, proxy.host, proxy.port)
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in ('transfer-encoding', 'connection')
                        and (proxy.etags or k.lower() != 'etag')]
                if not any(k.lower() == 'content-length' for k, _ in kept):
                    kept.append(('Content-Length', str(len(data))))
                head = f'HTTP/1.1 {response.status} {response.reason}\r\n'.encode()
                head += b''.join(f'{k}: {v}\r\n'.encode() for k, v in kept) + b'\r\n'
                if self.command == 'HEAD' and proxy.slow_head:
                    return self._trickle(head)
                self.wfile.write(head)
                asked = re.fullmatch(r'bytes=(\d+)-(\d+)', self.headers.get('Range') or '')
                slow = asked and any(int(asked[1]) <= offset <= int(asked[2]) for offset in proxy.slow_offsets)
                slow = slow or any(self.path.split('?')[0].endswith(key) for key in proxy.slow_keys)
                if self.command == 'GET' and slow:
                    return self._trickle(data)
                if self.command != 'HEAD':
                    self.wfile.write(data)

            def _trickle(self, data: bytes) -> None:
                proxy.trickled += 1
                self.close_connection = True
                try:
                    for byte in data:  # until the client gives up
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(TRICKLE)
                except OSError:
                    pass

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        super().__init__(Handler, QuietServer)


@pytest.fixture
def store(tmp_path):
    """redcaps5m's miniature as one tar shard and its member index in moto's S3 server, behind a
    ``Trickle`` proxy; yields the proxy and a petrel config naming it."""
    import boto3
    from moto.server import ThreadedMotoServer
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import MAKERS
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=4, faults=False, shards=1)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client('s3', endpoint_url=f'http://{host}:{port}', aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name='us-east-1')
    client.create_bucket(Bucket='data')
    for path in packed.root.rglob('*'):
        if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
            client.put_object(Bucket='data', Key=f'packed/{path.relative_to(packed.root).as_posix()}',
                              Body=path.read_bytes())
    try:
        with Trickle(f'http://{host}:{port}') as proxy:
            config = tmp_path / 'petreloss.conf'
            config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = {ACCESS}\nsecret_key = {SECRET}\n'
                              f'host_base = {proxy.url}\n')
            yield proxy, str(config)
    finally:
        server.stop()


def tar_dataset(config: str, tmp_path, tokenizer, prompt_template):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    return CaptionDataset('s3://data/packed/redcaps5m_data.json', tokenizer=tokenizer, prompt_template=prompt_template,
                          ceph_folder='s3://data/packed/raw', ceph_config=config,
                          tar_index='s3://data/packed/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'),
                          image_size=32, cap_source='re_caption', seed=0, unconditional=0)


class Probe(torch.utils.data.Dataset):
    """Sample ``idx`` as a reader of the dataset meets it: what reading it raised, then what the
    dataset gives in its place (the skip counted), and which client read."""

    def __init__(self, dataset, idx: int):
        self.dataset, self.idx = dataset, idx

    def __len__(self):
        return 1

    def __getitem__(self, _):
        from src.datasets.storage.obstore_client import worker_store
        store = self.dataset.ceph_files.store
        try:
            self.dataset.prepare_data(self.idx)
            error = None
        except SampleError as e:
            error = (e.reason, str(e))
        sample = self.dataset[self.idx]
        return dict(error=error, image_file=sample['image_file'], failures=dict(self.dataset.failures),
                    client='obstore' if worker_store(store.cluster, store.bucket) is not None else 'boto3')


def within(seconds: float, call):
    """``call()``'s result, failing the test (not hanging it) when it has not returned in ``seconds``."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f'still reading after {seconds} s: a hung worker'
    return result['value']


def slow_member(dataset, proxy) -> tuple[str, str]:
    """Sample 0's image made to trickle: its image and the message's object and range."""
    image = dataset.data_list[0]['image']
    tar, _, offset, size = dataset.ceph_files.index.locate(f'raw/{image}')
    proxy.slow_offsets.add(offset)
    return image, rf's3://data/packed/{re.escape(tar)} bytes {offset}-{offset + size - 1}: the {size} bytes asked'


def assert_skipped(seen: dict, image: str, where: str) -> None:
    reason, message = seen['error']
    assert reason == 'too-slow'
    assert re.search(where + r' did not all come within [\d.]+ s from s3://data/packed .*: the store sends slower '
                             r'than a request may take \(REQUEST_DEADLINE = 1 s\); not asked again', message), message
    assert SECRET not in message and ACCESS not in message
    assert seen['image_file'] != image and set(seen['failures']) == {'too-slow'}  # replaced, counted


def test_a_trickled_member_is_a_counted_too_slow_skip_with_boto3(store, tmp_path, tokenizer, prompt_template,
                                                                 monkeypatch):
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)
    dataset = tar_dataset(config, tmp_path, tokenizer, prompt_template)
    image, where = slow_member(dataset, proxy)
    seen = within(NO_HANG, lambda: Probe(dataset, 0)[0])
    assert seen['client'] == 'boto3' and proxy.trickled >= 2
    assert_skipped(seen, image, where)


def test_a_trickled_member_is_a_counted_too_slow_skip_with_obstore_in_a_worker(store, tmp_path, tokenizer,
                                                                               prompt_template, monkeypatch):
    """obstore, made in a forked DataLoader worker (never in this process: see obstore_client)."""
    pytest.importorskip('obstore')
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)  # the worker's store takes it when it is made
    dataset = tar_dataset(config, tmp_path, tokenizer, prompt_template)
    image, where = slow_member(dataset, proxy)
    loader = torch.utils.data.DataLoader(Probe(dataset, 0), num_workers=1, multiprocessing_context='fork',
                                         collate_fn=lambda batch: batch[0], timeout=NO_HANG)
    seen = next(iter(loader))  # the DataLoader's timeout fails a hung worker
    assert seen['client'] == 'obstore' and proxy.trickled >= 2
    assert_skipped(seen, image, where)


def test_a_head_whose_headers_trickle_ends_at_the_deadline(store, monkeypatch):
    """botocore's read timeout is per socket read: headers sent a byte every 0.2 s never reach it."""
    from src.datasets.storage.object_store import ObjectFolder
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)
    folder = ObjectFolder('s3://data/packed', config)
    assert folder.head('s3://data/packed/tar_index.arrow')[0] > 0
    proxy.slow_head = True

    def head():
        with pytest.raises(SampleError, match=r's3://data/packed/tar_index.arrow \(HEAD\): the answer did not all '
                                              r'come within .*REQUEST_DEADLINE = 1 s') as caught:
            folder.head('s3://data/packed/tar_index.arrow')
        return caught.value.reason
    assert within(NO_HANG, head) == 'too-slow'
    proxy.slow_head = False
    assert folder.head('s3://data/packed/tar_index.arrow')[0] > 0  # the client goes on


def test_a_store_without_etags_is_said_once(store, tmp_path, tokenizer, prompt_template, caplog):
    """Replaced shards cannot be told apart there: a warning once a process and bucket, and reads go on."""
    proxy, config = store
    proxy.etags = False
    with caplog.at_level(logging.WARNING, logger='src.datasets.storage'):
        dataset = tar_dataset(config, tmp_path, tokenizer, prompt_template)
        for idx in range(len(dataset)):
            dataset.prepare_data(idx)
        tar_dataset(config, tmp_path, tokenizer, prompt_template).prepare_data(0)  # a second dataset: said already
    said = [r.getMessage() for r in caplog.records if 'without an ETag' in r.getMessage()]
    assert len(said) == 1, said
    assert re.search(r'^s3://data/packed \(endpoint http://127.0.0.1:\d+, bucket data\) answers without an ETag: a '
                     r'tar shard or index replaced in the bucket by one of the same size cannot be detected on this '
                     r'store', said[0]), said[0]
    assert SECRET not in said[0]
