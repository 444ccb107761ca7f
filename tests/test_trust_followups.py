"""Trust, round 2, follow-ups: the holes a hostile tester found after issue 37, each closed at the
rule that holds it. Real files, links and servers on 127.0.0.1 only."""
from __future__ import annotations

import decimal
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.cli.data_config import UntrustedConfig, check_data_config, load_data_config
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.storage.files import join_inside
from src.datasets.index.sample_index import SampleIndex
from src.prepare import columns
from src.prepare.columns import join_columns
from src.prepare.url_fetch import UrlPolicy, fetch_image
from src.synthetic.url_server import Response, UrlServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))
from test_trust_resources import progressive_jpeg  # noqa: E402

LOCAL = UrlPolicy(allow_local=True, timeout=5)


# ---- data configs: _scope_, network visualizer backends, URL checkpoints --------------------------
@pytest.mark.parametrize('node', [
    {'train_dataloader': {'sampler': {'type': 'InfiniteSampler', '_scope_': 'dl.evil'}}},
    {'dataset': {'type': 'InfiniteSampler', '_scope_': 'data.laion6m.raw.evil'}},
    {'a': [{'b': {'_scope_': 'x'}}]},
])
def test_a_scope_at_any_depth_is_refused_in_a_data_config(tmp_path, node):
    path = tmp_path / 'scope.json'
    path.write_text(json.dumps(node))
    with pytest.raises(UntrustedConfig, match=r"_scope_: _scope_ '[\w.]+' is refused"):
        load_data_config(str(path))


def test_the_mmengine_scope_or_none_is_still_accepted():
    check_data_config({'sampler': {'type': 'InfiniteSampler', '_scope_': 'mmengine'},
                       'other': {'type': 'DefaultSampler', '_scope_': None}}, 'c.json')


def wandb_config(backend: str = 'WandbVisBackend') -> dict:
    return {'visualizer': {'type': 'Visualizer', 'vis_backends': [
        {'type': backend, 'init_kwargs': {'project': 'p', 'settings': {'base_url': 'http://127.0.0.1:9'}}}]}}


@pytest.mark.parametrize('backend', ['WandbVisBackend', 'TensorboardVisBackend', 'MLflowVisBackend'])
def test_a_visualizer_backend_that_talks_to_the_network_is_refused_unless_allowed(backend):
    with pytest.raises(UntrustedConfig, match='only LocalVisBackend'):
        check_data_config(wandb_config(backend), 'wb.json')
    check_data_config(wandb_config(backend), 'wb.json', allowed_types=(backend,))


def test_a_local_visualizer_backend_is_accepted():
    check_data_config({'visualizer': {'type': 'Visualizer', 'vis_backends': [{'type': 'LocalVisBackend'}]}}, 'v.json')


@pytest.mark.parametrize('key', ['load_from', 'resume_from'])
@pytest.mark.parametrize('url', ['http://127.0.0.1:1/x.pth', 'HTTPS://169.254.169.254/x.pth'])
def test_a_checkpoint_url_is_refused_in_a_data_config(key, url):
    with pytest.raises(UntrustedConfig, match=f'{key}: a URL'):
        check_data_config({key: url}, 'lf.json')
    check_data_config({key: 'work_dirs/iter_10.pth'}, 'lf.json')


# ---- tools/find_duplicates.py: the dup_cluster parquet ---------------------------------------------
def test_find_duplicates_never_writes_through_a_planted_link(tmp_path):
    pytest.importorskip('imagehash')
    from src.prepare.duplicates import find_duplicates
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'data.json').write_text(json.dumps([{'image': '0.jpg', 'caption': 'a'}]))
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    (root / 'data.json.dup_cluster.parquet').symlink_to(victim)

    def unreadable(name):
        raise SampleError('missing-file', name)
    dataset = SimpleNamespace(data_path=str(root / 'data.json'), index=SampleIndex.load(str(root / 'data.json')),
                              image_key='image', read_image=unreadable, index_cache_dir=None)
    with pytest.raises(IndexFormatError, match='symbolic link out of'):
        find_duplicates(dataset)
    assert victim.read_text() == 'precious'


# ---- tools/add_columns.py ------------------------------------------------------------------------------
@pytest.fixture
def index(tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'data.json').write_text(json.dumps([{'image': f'{i}.jpg', 'caption': 'x'} for i in range(3)]))
    return root


def test_a_dangling_before_columns_link_creates_nothing_outside(index, tmp_path):
    outside = tmp_path / 'victim' / 'planted.json'
    outside.parent.mkdir()
    (index / 'data.json.before-columns').symlink_to(outside)
    pq.write_table(pa.table({'image': ['0.jpg'], 'aesthetic': [5.0]}), index / 's.parquet')
    with pytest.raises(IndexFormatError, match='symbolic link out of'):
        join_columns(str(index / 'data.json'), str(index / 's.parquet'))
    assert not outside.exists() and not os.path.lexists(outside)


def test_the_first_index_is_kept_by_a_regular_file(index):
    pq.write_table(pa.table({'image': ['0.jpg'], 'aesthetic': [5.0]}), index / 's.parquet')
    before = (index / 'data.json').read_text()
    join_columns(str(index / 'data.json'), str(index / 's.parquet'))
    kept = index / 'data.json.before-columns'
    assert not kept.is_symlink() and kept.read_text() == before


@pytest.mark.parametrize('column, kind', [
    (pa.array([b'\x00', b'z'], pa.binary()), 'binary'),
    (pa.array([0, 1], pa.timestamp('us')), 'timestamp'),
    (pa.array([decimal.Decimal('1.5')] * 2), 'decimal'),
])
def test_a_column_no_index_holds_is_refused_by_name(index, column, kind):
    pq.write_table(pa.table({'image': ['0.jpg', '1.jpg'], 'odd': column}), index / 's.parquet')
    with pytest.raises(IndexFormatError, match=f"column 'odd' holds {kind}"):
        join_columns(str(index / 'data.json'), str(index / 's.parquet'))
    assert not os.path.lexists(index / 'data.json.before-columns')  # refused before anything is written


def test_a_scores_parquet_is_bounded(index, monkeypatch):
    pq.write_table(pa.table({'image': ['0.jpg', '1.jpg'], 's': [1.0, 2.0]}), index / 's.parquet')
    monkeypatch.setattr(columns, 'MAX_SCORES_ROWS', 1)
    with pytest.raises(IndexFormatError, match='2 rows, more than the 1'):
        join_columns(str(index / 'data.json'), str(index / 's.parquet'))
    monkeypatch.setattr(columns, 'MAX_SCORES_BYTES', 16)
    with pytest.raises(IndexFormatError, match='bytes, more than the 16'):
        join_columns(str(index / 'data.json'), str(index / 's.parquet'))


# ---- cache_latents: a latent folder shipped as a link -------------------------------------------------
def test_a_latent_folder_that_is_a_link_out_is_not_written_through(tmp_path):
    from src.latents.cache import output_folder
    from src.latents.store import latent_folder
    (tmp_path / 'raw').mkdir()
    dataset = SimpleNamespace(data_path='data.json', image_latents_folder=None, image_tokens_folder=None,
                              image_folder=str(tmp_path / 'raw'), image_size=64, buckets=None)
    folder = latent_folder(str(tmp_path / 'raw'), 64, None)
    assert output_folder(dataset) == folder
    (tmp_path / 'elsewhere').mkdir()
    os.symlink(tmp_path / 'elsewhere', folder)
    assert output_folder(dataset) == folder  # inside the dataset's folder: fine
    os.remove(folder)
    os.symlink(tmp_path.parent, folder)  # out of it
    with pytest.raises(ValueError, match='symbolic link out of'):
        output_folder(dataset)
    assert output_folder(dataset, str(tmp_path / 'mine')) == str(tmp_path / 'mine')  # the caller's choice


# ---- the URL route: JPEG scan bombs ---------------------------------------------------------------------
def test_a_jpeg_of_thousands_of_scans_is_refused_by_the_url_route():
    with UrlServer() as server:
        bomb = server.add('/bomb.jpg', Response(progressive_jpeg(5000)))
        key, stream, error = fetch_image((0, bomb), 5, None, None, policy=LOCAL)
        assert stream is None and error.startswith('refused: a JPEG of more scans')
        fine = progressive_jpeg(10)
        key, stream, error = fetch_image((1, server.add('/fine.jpg', Response(fine))), 5, None, None, policy=LOCAL)
        assert error is None and stream.read() == fine


# ---- join_inside with no folder -------------------------------------------------------------------------
def test_join_inside_without_a_folder_applies_the_link_rule_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / 'outside').mkdir()
    (tmp_path / 'outside' / 'secret.jpg').write_bytes(b'x')
    work = tmp_path / 'work'
    (work / 'dl').mkdir(parents=True)
    (work / 'dl' / 'own.jpg').write_bytes(b'x')
    (work / 'dl' / 'out').symlink_to(tmp_path / 'outside')
    monkeypatch.chdir(work)
    assert join_inside(None, 'dl/own.jpg') == 'dl/own.jpg'
    with pytest.raises(SampleError) as err:
        join_inside(None, 'dl/out/secret.jpg')
    assert err.value.reason == 'unsafe-link' and 'the working directory' in str(err.value)
    assert join_inside(None, 'dl/out/secret.jpg', allow_outside=True) == 'dl/out/secret.jpg'


# ---- the URL route: its folders and state files ---------------------------------------------------------
def url_download(root: Path, urls=('http://127.0.0.1:9/a.jpg',)) -> Path:
    (root / 'parquets').mkdir(parents=True)
    pq.write_table(pa.table({'url': list(urls), 're_caption': ['a caption'] * len(urls)}),
                   root / 'parquets' / 'part-0.parquet')
    return root


@pytest.mark.parametrize('folder', ['raw', '.prepare'])
def test_the_url_route_writes_nothing_through_a_planted_folder_link(tmp_path, folder):
    from src.prepare import datasets
    from src.prepare.recap import DownloadOptions
    root = url_download(tmp_path / 'laion6m')
    outside = tmp_path / 'outside'
    outside.mkdir()
    (root / folder).symlink_to(outside)
    report = datasets.prepare_laion6m(str(root), download=DownloadOptions(timeout=2), num_processes=1)
    assert report.finish() != 0
    assert 'symbolic link out of' in report.index_error and folder in report.index_error
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize('content', ['{}', '[]', '{"successes": "1", "status_dict": {}}', 'fifo'])
def test_shard_stats_are_read_bounded_and_checked(tmp_path, content):
    from src.prepare import datasets
    from src.prepare.recap import DownloadOptions
    root = url_download(tmp_path / 'laion6m')
    (root / 'raw').mkdir()
    stats = root / 'raw' / '00000_stats.json'
    os.mkfifo(stats) if content == 'fifo' else stats.write_text(content)  # a finished shard: no download runs
    report = datasets.prepare_laion6m(str(root), download=DownloadOptions(timeout=2), num_processes=1)
    assert report.finish() != 0
    assert str(stats) in report.index_error and 'not img2dataset' in report.index_error


@pytest.mark.parametrize('content', ['fifo', '[1]', '{"output_format": 3}'])
def test_the_download_record_is_read_bounded_and_checked(tmp_path, content):
    from src.prepare.recap import check_output_format
    (tmp_path / '.prepare').mkdir()
    marker = tmp_path / '.prepare' / 'recap.json'
    os.mkfifo(marker) if content == 'fifo' else marker.write_text(content)
    with pytest.raises(IndexFormatError, match='recap.json: not the record of a download'):
        check_output_format(str(tmp_path), 'files')


def test_a_tar_marker_that_is_a_fifo_counts_as_no_marker_and_never_blocks(tmp_path):
    from src.prepare.runner import read_marker
    os.mkfifo(tmp_path / 'a.tar.done.json')
    assert read_marker(str(tmp_path / 'a.tar.done.json')) is None
    (tmp_path / 'b.done.json').write_text('{"tar": {}}')
    assert read_marker(str(tmp_path / 'b.done.json')) == {'tar': {}}


def test_the_tar_route_writes_no_state_through_a_planted_prepare_link(tmp_path):
    from src.prepare.runner import prepare
    outside = tmp_path / 'outside'
    outside.mkdir()
    root = tmp_path / 'root'
    root.mkdir()
    (root / '.prepare').symlink_to(outside)
    report = prepare('x', str(root), [], [], lambda files, report: None)
    assert 'symbolic link out of' in report.index_error
    assert list(outside.iterdir()) == []


# ---- the URL rule's addresses, the summary's reasons, redaction -------------------------------------------
@pytest.mark.parametrize('address', ['192.0.0.192', '192.0.0.1', 'fec0::1', 'fefe::1'])
def test_special_purpose_and_site_local_addresses_are_refused(address):
    from src.prepare.url_fetch import refused_address
    assert refused_address(address) == 'private address'
    assert refused_address(address, allow_local=True) is None


def test_ipv6_loopback_is_allowed_with_local_addresses_allowed():
    from src.prepare.url_fetch import refused_address
    assert refused_address('::1') == 'loopback address'
    assert refused_address('::1', allow_local=True) is None
    assert refused_address('::', allow_local=True) == 'reserved address'


def test_a_reason_phrase_with_terminal_escapes_never_reaches_the_summary():
    import socket
    import threading
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b'HTTP/1.0 404 \x1b[2J\x1b]0;owned\x07Gone\r\nContent-Length: 0\r\n\r\n')
        conn.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{listener.getsockname()[1]}/a.jpg'
    key, stream, error = fetch_image((0, url), 5, None, None, policy=LOCAL)
    thread.join(5)
    listener.close()
    assert stream is None and error == 'HTTP Error 404: Not Found'  # the standard phrase, not the server's


def test_quoted_replaces_control_characters_and_bounds_the_text():
    from src.datasets.storage.redact import quoted
    assert quoted('a\x1b[31mb\nc') == 'a?[31mb?c' and len(quoted('x' * 10 ** 6)) == 300


@pytest.mark.parametrize('text, secret', [
    ('https://s.googleapis.com/b/o.jpg?X-Goog-Algorithm=G&X-Goog-Credential=svc%40p&X-Goog-Signature=deadbeef',
     ('deadbeef', 'svc%40p')),
    ('https://h/x?client_secret=S1', ('S1',)), ('https://h/x?refresh_token=S2', ('S2',)),
    ('https://h/x?id_token=S3', ('S3',)), ('https://h/x?hf_token=S4', ('S4',)),
    ('https://h/x#access_token=S5', ('S5',)),
    ('https://user:pa/ss@host/x', ('pa/ss', 'ss@')), ('https://user:pa ss@host/x', ('pa ss', 'ss@')),
    ('endpoint https://AKIA:wJalr/XUtn+bPxR@s3.local/b', ('wJalr', 'bPxR')),
])
def test_redact_hides_more_credentials(text, secret):
    from src.datasets.storage.redact import redact
    out = redact(text)
    assert not any(part in out for part in secret), out
    assert '***' in out


def test_redact_keeps_what_is_no_credential():
    from src.datasets.storage.redact import redact
    for text in ('https://host/a/b.jpg?width=3', 'http://127.0.0.1:8080/x/y.jpg', 'mail a@b and https://h/p',
                 'http://host:9/a@b.jpg', 'https://h:443/p/q@r'):
        assert redact(text) == text


# ---- filters: a bool in where ----------------------------------------------------------------------------
@pytest.mark.parametrize('value', [True, False])
def test_a_where_clause_with_a_bool_value_is_refused_clearly(value):
    from src.datasets.index.filters import normalize
    with pytest.raises(ValueError, match='is a bool'):
        normalize({'where': [('aesthetic', '>=', value)]})
    assert normalize({'where': [('aesthetic', '>=', 1)]}) == {'where': [['aesthetic', '>=', 1]]}


# ---- the tar route: the downloaded data.json --------------------------------------------------------------
def test_the_downloaded_index_is_not_read_through_a_link_out_of_the_root(tmp_path):
    from src.prepare.pairs import load_json_array
    (tmp_path / 'outside.json').write_text('[{"image": "a.jpg"}]')
    root = tmp_path / 'root'
    root.mkdir()
    (root / 'data.json').symlink_to(tmp_path / 'outside.json')
    with pytest.raises(IndexFormatError, match='symbolic link out of'):
        load_json_array(str(root / 'data.json'), str(root))
    with pytest.raises(IndexFormatError, match='symbolic link out of'):
        load_json_array(str(root / 'data.json'))
    (root / 'inside.json').write_text('[]')
    (root / 'alias.json').symlink_to(root / 'inside.json')
    assert load_json_array(str(root / 'alias.json'), str(root)) == []
