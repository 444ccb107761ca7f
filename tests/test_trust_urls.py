"""The URL route treats every URL of a parquet as hostile (README reliability table, "URL
parquets"): http and https only, no loopback, private, link-local or metadata address in any
spelling, checked after DNS resolution and on every redirect; a total-time, a size and a pixel
bound per download; a parquet whose footer lies is refused. Servers are real, on 127.0.0.1."""
from __future__ import annotations

import json
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.prepare import datasets
from src.prepare.recap import DownloadOptions
from src.prepare.url_fetch import UrlPolicy, UrlRefused, check_url, fetch, fetch_image
from src.synthetic.images import encode_image
from src.synthetic.url_server import Response, UrlServer

LOCAL = UrlPolicy(allow_local=True, timeout=2, max_bytes=1 << 16)
JPEG = encode_image(16, 12)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels of one tiny compressed stream."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 4096)) + chunk(b'IEND', b''))


@pytest.fixture
def server():
    with UrlServer() as running:
        yield running


def refusal(url, policy=UrlPolicy()):
    with pytest.raises(UrlRefused) as refused:
        fetch(url, policy)
    return refused.value.reason


@pytest.mark.parametrize('url', [
    'http://127.0.0.1/', 'http://localhost/', 'http://2130706433/', 'http://0x7f.1/', 'http://017700000001/',
    'http://127.1/', 'http://[::1]/', 'http://[::ffff:127.0.0.1]/', 'http://[::ffff:7f00:1]/', 'http://0.0.0.0/',
    'http://10.1.2.3/', 'http://192.168.0.1/', 'http://172.16.0.1/', 'http://100.64.0.1/', 'http://[fc00::1]/',
    'http://169.254.169.254/latest/meta-data/', 'http://[fe80::1]/', 'http://[fd00:ec2::254]/',
    'http://[2002:7f00:1::]/', 'http://[64:ff9b::7f00:1]/', 'http://[::127.0.0.1]/', 'http://224.0.0.1/', 'HTTP://LocalHost:80/'])
def test_local_and_private_addresses_are_refused_in_every_spelling(url):
    with pytest.raises(UrlRefused) as refused:
        check_url(url, UrlPolicy())
    assert refused.value.reason.endswith('address')


@pytest.mark.parametrize('url', ['file:///etc/passwd', 'data:image/png;base64,iVBORw0KGgo=', 'ftp://8.8.8.8/a.jpg',
                                 'gopher://8.8.8.8/', '/etc/passwd', 'FILE:///dev/zero', ' file:///dev/zero',
                                 'jar:http://8.8.8.8/a.jpg'])
def test_only_http_and_https_are_fetched_even_with_local_addresses_allowed(url):
    with pytest.raises(UrlRefused) as refused:
        fetch(url, LOCAL)
    assert 'scheme' in refused.value.reason


def test_a_url_with_credentials_is_refused_before_they_reach_any_message():
    for url in ('http://user:pw@8.8.8.8/a.jpg', 'http://user@8.8.8.8/', 'http://8.8.8.8@127.0.0.1/'):
        with pytest.raises(UrlRefused) as refused:
            check_url(url, LOCAL)
        assert refused.value.reason == 'credentials in URL'


def test_a_public_address_passes_the_rule_and_link_local_stays_refused_with_local_allowed():
    assert check_url('http://8.8.8.8/a.jpg', UrlPolicy())  # resolved only: nothing is sent to it
    assert check_url('http://127.0.0.1:1/', LOCAL) and check_url('http://10.0.0.1/', LOCAL)
    for url in ('http://169.254.169.254/', 'http://[::ffff:169.254.169.254]/', 'http://0.0.0.0/'):
        with pytest.raises(UrlRefused):
            check_url(url, LOCAL)


def test_the_served_image_is_fetched_only_with_local_addresses_allowed(server):
    url = server.add('/a.jpg', Response(JPEG, content_type='image/jpeg'))
    assert refusal(url) == 'loopback address' and server.fetched() == 0
    assert fetch(url, LOCAL)[0] == JPEG


def test_every_redirect_is_checked_again(server):
    image = server.add('/a.jpg', Response(JPEG))
    targets = {'/to-metadata': 'http://169.254.169.254/latest/meta-data/', '/to-file': 'file:///etc/passwd',
               '/to-data': 'data:text/plain,secret', '/to-ftp': 'ftp://127.0.0.1/x'}
    for path, target in targets.items():
        url = server.add(path, Response(b'', status=302, headers=(('Location', target),)))
        assert refusal(url, LOCAL) and server.requests[path] == 1
    # With local addresses allowed a redirect to another loopback port is followed; by default the
    # first hop is refused before anything is sent.
    with UrlServer() as other:
        elsewhere = other.add('/b.jpg', Response(JPEG))
        hop = server.add('/hop', Response(b'', status=301, headers=(('Location', elsewhere),)))
        assert fetch(hop, LOCAL)[0] == JPEG and other.fetched() == 1
        assert refusal(hop) == 'loopback address' and other.fetched() == 1
    loop = server.add('/loop', Response(b'', status=302, headers=(('Location', '/loop'),)))
    with pytest.raises(Exception):
        fetch(loop, LOCAL)
    assert server.requests['/loop'] <= 6 and fetch(image, LOCAL)[0] == JPEG


def test_a_byte_a_second_ends_at_the_time_bound(server):
    url = server.add('/slow.jpg', Response(JPEG, drip=0.5))
    assert refusal(url, UrlPolicy(allow_local=True, timeout=1.5)) == 'timed out'


def test_a_lookup_the_resolver_is_slow_to_answer_ends_at_the_time_bound(monkeypatch):
    """A hostile name's own DNS server answering slowly: the download ends at its bound without
    waiting for the lookup (no DNS server can be put in front of this machine's resolver in a
    test: the lookup is held instead)."""
    import socket
    import threading

    from src.prepare import url_fetch
    held, finished, real = threading.Event(), threading.Event(), socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host != 'slow-dns.example':
            return real(host, *args, **kwargs)
        held.wait(60)
        finished.set()
        raise socket.gaierror('held')

    monkeypatch.setattr(url_fetch.socket, 'getaddrinfo', lookup)
    try:
        assert refusal('http://slow-dns.example/a.jpg', UrlPolicy(timeout=0.3)) == 'timed out'
        assert not finished.is_set()  # it did not wait for the lookup
        assert fetch_image((0, 'http://slow-dns.example/b.jpg'), 0.3, None, None,
                           policy=UrlPolicy(timeout=0.3))[2] == 'refused: timed out'
    finally:
        held.set()
    assert refusal('http://slow-dns.example/c.jpg', UrlPolicy(timeout=5)) == 'host not found'


def test_a_body_over_the_size_bound_is_refused_with_or_without_its_length(server):
    big = server.add('/big.jpg', Response(b'\xff' * (LOCAL.max_bytes + 1)))
    assert refusal(big, LOCAL).startswith('larger than')
    # A body with no length, sent until the server closes, is cut at the bound as it is read.
    endless = server.add('/endless.jpg', Response(b'\xff' * (LOCAL.max_bytes * 4), headers=(('Content-Length', None),)))
    assert refusal(endless, LOCAL).startswith('larger than')


def test_a_pixel_bomb_is_refused_from_its_header_before_decoding(server):
    url = server.add('/bomb.png', Response(png_header(60_000, 60_000), content_type='image/png'))
    key, stream, error = fetch_image((0, url), 1, None, None, policy=LOCAL)
    assert stream is None and error == f'refused: more than {LOCAL.max_pixels} pixels declared'
    key, stream, error = fetch_image((1, server.add('/a.jpg', Response(JPEG))), 1, None, None, policy=LOCAL)
    assert error is None and stream.read() == JPEG


def _parquet(root, urls):
    (root / 'parquets').mkdir(parents=True)
    pq.write_table(pa.table({'url': urls, 're_caption': [f'caption {i}' for i in range(len(urls))]}),
                   root / 'parquets' / 'part-0.parquet')


@pytest.mark.slow
def test_the_url_route_refuses_and_counts_each_hostile_url(tmp_path, server, monkeypatch):
    (tmp_path / 'tmp').mkdir()
    monkeypatch.setenv('TMPDIR', str(tmp_path / 'tmp'))  # what img2dataset's processes leave in a TMPDIR
    urls = [server.add('/a.jpg', Response(JPEG, content_type='image/jpeg')), 'file:///etc/passwd',
            'data:image/jpeg;base64,/9j/', 'file:///dev/zero',
            server.add('/meta', Response(b'', status=302, headers=(('Location', 'http://169.254.169.254/'),))),
            server.add('/slow.jpg', Response(JPEG, drip=1.0)),
            server.add('/big.jpg', Response(b'\xff' * (2 << 20))),
            server.add('/bomb.png', Response(png_header(60_000, 60_000)))]
    root = tmp_path / 'laion6m'
    _parquet(root, urls)
    options = DownloadOptions(timeout=2, samples_per_shard=16, thread_count=8, allow_local_urls=True,
                              max_bytes=1 << 20)
    report = datasets.prepare_laion6m(str(root), download=options, num_processes=1)
    assert report.finish() == 0, report.summary()
    assert report.download['successes'] == 1
    assert report.download['failed_by_reason'] == {
        "refused: scheme 'file' (http and https only)": 2, "refused: scheme 'data' (http and https only)": 1,
        'refused: link-local address': 1, 'refused: timed out': 1,
        'refused: larger than 1048576 bytes': 1, 'refused: more than 67108864 pixels declared': 1}
    assert [row['image'] for row in json.loads((root / 'data.json').read_text())] == ['00000/0000000.jpg']

    # Without --allow-local-urls the test server itself is refused: nothing reaches it.
    fetched = server.fetched()
    root = tmp_path / 'default'
    _parquet(root, urls[:1])
    report = datasets.prepare_laion6m(str(root), download=DownloadOptions(timeout=2, samples_per_shard=16),
                                      num_processes=1)
    assert report.download['failed_by_reason'] == {'refused: loopback address': 1}
    assert server.fetched() == fetched
    assert list((tmp_path / 'tmp').iterdir()) == []  # wandb's folders of its killed pool processes too


def _lie_about_rows(path, rows):
    """Rewrite the footer's row count (thrift compact: the i64 field 3 after the schema list)."""
    def varint(n):
        out = b''
        while n >= 0x80:
            out, n = out + bytes([n & 0x7f | 0x80]), n >> 7
        return out + bytes([n])
    data = path.read_bytes()
    size = struct.unpack('<I', data[-8:-4])[0]
    meta = data[-8 - size:-8]
    at = meta.index(b'\x00\x16' + varint(2 * pq.read_metadata(path).num_rows))
    meta = meta[:at + 2] + varint(2 * rows) + meta[at + 3:]
    path.write_bytes(data[:-8 - size] + meta + struct.pack('<I', len(meta)) + b'PAR1')


def test_a_parquet_footer_claiming_2_31_rows_is_refused_naming_the_file(tmp_path):
    root = tmp_path / 'laion6m'
    _parquet(root, ['http://127.0.0.1:9/a.jpg', 'http://127.0.0.1:9/b.jpg', 'http://127.0.0.1:9/c.jpg'])
    path = root / 'parquets' / 'part-0.parquet'
    _lie_about_rows(path, 2 ** 31)
    assert pq.read_metadata(path).num_rows == 2 ** 31
    report = datasets.prepare_laion6m(str(root), download=DownloadOptions(), num_processes=1)
    assert report.exit_code() == 1 and not (root / 'raw').exists()
    assert f'{path}: its footer claims 2147483648 rows but it holds 3' in report.index_error
    assert 're-run' not in report.summary()
