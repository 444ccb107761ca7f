"""A hostile review of three changes: the one deadline of object-store requests (a trickled index
download, a body that never ends), a checkpoint's data position that passes its checks yet drives
the samplers into a hang or a raw traceback, and a block shuffle resumed under other deals. Real
servers on 127.0.0.1 (moto's, behind the trickling proxy of ``test_trust_deadlines``; a store of a
few lines), no mocks of boto3 or obstore."""
from __future__ import annotations

import resource
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from flaky_proxy import LocalServer
from test_trust_deadlines import NO_HANG, SECRET, QuietServer, store, within  # noqa: F401 (store: a fixture)

from src.datasets.errors import SampleError
from src.datasets.storage import deadlines


# ---- 1. object stores -------------------------------------------------------------------------

@pytest.mark.slow
def test_an_index_download_that_trickles_ends_at_the_deadline(store, tmp_path, monkeypatch):
    """fetch_to_cache's download had only botocore's idle read timeout: an index whose body came a
    byte every 0.2 s held the start of every rank for ever (a tar index of megabytes: weeks)."""
    from src.datasets.storage.object_config import StorageConfigError
    from src.datasets.storage.object_store import fetch_to_cache
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)
    proxy.slow_keys.add('packed/tar_index.arrow')

    def fetch():
        with pytest.raises(StorageConfigError, match=r's3://data/packed/tar_index.arrow: cannot be fetched: .*did not '
                                                     r'all come within .*REQUEST_DEADLINE = 1 s') as caught:
            fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
        return str(caught.value)
    message = within(NO_HANG, fetch)
    assert SECRET not in message and proxy.trickled >= 1
    assert not [path for path in (tmp_path / 'cache').rglob('*') if path.name == 'tar_index.arrow']  # no copy kept
    proxy.slow_keys.clear()
    copy = fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
    from src.datasets.storage.tar_index import TarMemberIndex
    assert TarMemberIndex(copy).locate  # the same fetch goes on once the store sends


class EndlessBody(LocalServer):
    """A store whose every GET says the length asked (a ranged GET's ``Content-Range`` too) and is
    also chunked, then sends chunks of a MiB as fast as the client takes them, for ever."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(206 if self.headers.get('Range') else 200)
                if self.headers.get('Range'):
                    self.send_header('Content-Range', 'bytes 0-99/1000')
                self.send_header('Content-Length', '100')
                self.send_header('Transfer-Encoding', 'chunked')
                self.send_header('ETag', '"e"')
                self.send_header('Last-Modified', 'Mon, 07 Dec 2026 17:00:00 GMT')
                self.end_headers()
                chunk = b'%x\r\n' % (1 << 20) + b'x' * (1 << 20) + b'\r\n'
                try:
                    while True:
                        self.wfile.write(chunk)
                except OSError:
                    pass

        super().__init__(Handler, QuietServer)


class ReadInWorker(torch.utils.data.Dataset):
    """One read of ``folder`` in a DataLoader worker (obstore's client): what it raised, and how far
    the worker's memory grew (MiB)."""

    def __init__(self, folder, ranged: bool):
        self.folder, self.ranged = folder, ranged

    def __len__(self):
        return 1

    def __getitem__(self, _):
        from src.datasets.storage.obstore_client import worker_store
        assert worker_store(self.folder.cluster, self.folder.bucket) is not None  # obstore reads here
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            self.folder.read('s3://b/x', *((0, 100) if self.ranged else ()))
            error = None
        except SampleError as e:
            error = (e.reason, str(e))
        return error, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024


@pytest.mark.slow
@pytest.mark.parametrize('ranged', [True, False])
def test_a_body_longer_than_its_length_is_not_gathered_in_memory_by_obstore(tmp_path, monkeypatch, ranged):
    """obstore gathered a body whatever its length said (a chunked one goes on past it) until the
    deadline: gigabytes a second from a hostile store, a worker killed for memory. The body is read
    up to what was asked: a counted too-large."""
    pytest.importorskip('obstore')
    from src.datasets.storage.object_store import ObjectFolder
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 3.0)
    with EndlessBody() as server:
        config = tmp_path / 'petreloss.conf'
        config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = a\nsecret_key = {SECRET}\n'
                          f'host_base = {server.url}\n')
        loader = torch.utils.data.DataLoader(ReadInWorker(ObjectFolder('s3://b', str(config)), ranged), num_workers=1,
                                             multiprocessing_context='fork', collate_fn=lambda batch: batch[0],
                                             timeout=NO_HANG)
        error, grown = next(iter(loader))
    assert error is not None and error[0] == 'too-large', error
    assert 's3://b/x' in error[1] and SECRET not in error[1]
    assert grown < 256, f'the worker grew by {grown} MiB'
