"""No message quotes a file it could not read or a credential (README reliability table,
"messages"): a bad image says what kind of bytes it holds, never the bytes; an endpoint written as
``http://user:password@host`` loses its credentials in every storage error and tool line."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.datasets.errors import SampleError
from src.datasets.storage.images import open_image
from src.datasets.storage.redact import byte_kind, redact

REPO = Path(__file__).resolve().parents[1]
KEY = b'-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n'
SECRET = 'tops3cret'


@pytest.mark.parametrize('data, kind', [(KEY, 'text'), (b'AWS_SECRET_ACCESS_KEY=abc\n', 'text'),
                                        (b'<!DOCTYPE html><title>x</title>', 'an HTML page'),
                                        (b'{"token": "abc"}', 'JSON-like text'), (b'\x1f\x8b\x08\0' * 4, 'gzip data'),
                                        (bytes(range(256)), 'binary data')])
def test_a_file_that_is_no_image_is_described_never_quoted(data, kind):
    with pytest.raises(SampleError) as refused:
        open_image(data, 'raw/0001.jpg')
    message = str(refused.value)
    assert refused.value.reason == 'bad-image' and message.startswith('raw/0001.jpg: ') and message.endswith(kind)
    assert byte_kind(data) == kind
    for line in data.splitlines():
        for word in line.split():
            assert repr(word)[2:-1] not in message or len(word) < 4, word


def test_a_caption_that_is_an_object_is_named_by_its_type_not_its_content():
    from src.datasets.index.captions import check_caption
    with pytest.raises(SampleError) as refused:
        check_caption({'api_key': SECRET}, 'raw/0001.json: caption')
    assert str(refused.value) == 'raw/0001.json: caption is an object, not text'


@pytest.mark.parametrize('text', [
    f'http://AKIA123:{SECRET}@127.0.0.1:9/bucket', f'endpoint https://user:{SECRET}@host', f'"s3://k:{SECRET}@b/x"',
    f'http://u:p@ss{SECRET}@host/x', f'https://b.s3.amazonaws.com/k?X-Amz-Signature={SECRET}&X-Amz-Date=1',
    f'http://h/x?token={SECRET}', f'http://{SECRET}@host/'])
def test_redact_removes_every_url_credential(text):
    assert SECRET not in redact(text) and '***' in redact(text)


def test_redact_keeps_what_is_no_credential():
    for text in ('http://host:9/a@b.jpg', 'data/raw/0001.jpg: missing', 'mail me at a@b.c', 's3://bucket/prefix/x'):
        assert redact(text) == text


def test_storage_errors_and_every_logged_line_lose_the_endpoint_credentials(monkeypatch):
    pytest.importorskip('boto3')
    from src.cli.logs import Redact
    from src.datasets.storage.object_store import ObjectFolder, StorageConfigError
    monkeypatch.setenv('AWS_ENDPOINT_URL', f'http://AKIAUSER:{SECRET}@127.0.0.1:9')
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'k')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 's')
    store = ObjectFolder('s3://bucket/data', None)
    assert SECRET not in store.describe() and '127.0.0.1:9' in store.describe()
    with pytest.raises(StorageConfigError) as refused:
        store.check()
    assert SECRET not in str(refused.value) and 'endpoint http://***@127.0.0.1:9' in str(refused.value)
    assert SECRET not in str(SampleError('missing-file', f'x: from http://u:{SECRET}@h'))
    record = logging.LogRecord('upload', logging.ERROR, __file__, 1, 'failed: %s', (f'http://u:{SECRET}@h/k',), None)
    assert Redact().filter(record) and record.getMessage() == 'failed: http://***@h/k'


def test_upload_prints_no_credential_of_its_endpoint(tmp_path):
    pytest.importorskip('boto3')
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'a.txt').write_text('a')
    env = dict(os.environ, PYTHONPATH=str(REPO), AWS_ENDPOINT_URL=f'http://AKIAUSER:{SECRET}@127.0.0.1:9',
               AWS_ACCESS_KEY_ID='k', AWS_SECRET_ACCESS_KEY='s')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'upload.py'), str(tmp_path / 'data'), 's3://bucket/x'],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and 'endpoint http://***@127.0.0.1:9' in result.stderr, result.stderr[-2000:]
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize('text', [
    'http://h/x?auth={}', 'http://h/x?authorization=Bearer%20{}', 'http://h/x;token={}', 'http://h/x?token%3D{}',
    'http://h/x?a=1&amp;token={}', 'Authorization: Bearer {}', 'Authorization: Basic {}',
    'aws_secret_access_key={}', "{{'secret_key': '{}'}}", 'password: {}', 'http://h/x?X-Goog-Signature={}'])
def test_redact_hides_tokens_in_headers_settings_and_pasted_urls(text):
    """The forms a hostile review found after the URL credentials: headers, settings, escaped queries."""
    assert SECRET not in redact(text.format(SECRET))


def test_redact_keeps_ordinary_words_near_credential_names():
    for text in ('key frames of a basic video', 'the password field is empty', 'a bearer of news'):
        assert redact(text) == text
