"""What a message may say about a secret or a file it could not read: nothing of either.

:func:`redact` is the one redaction function: every error of the data layer (``SampleError``,
``StorageConfigError``) and every line the tools log go through it. It removes the credentials a
URL may carry (``http://user:password@host``, a signed query's signature or token), wherever in the
text the URL is. :func:`byte_kind` says what kind of bytes a file holds without quoting any: a
file that is not an image may be a key, a token or an environment dump. :func:`quoted` is what a
message quotes of another party's text.
"""
from __future__ import annotations

import re

HIDDEN = '***'
# scheme://userinfo@ : the userinfo (user, or user:password) of any URL in the text.
# (to the last @ before the path: a password may hold one)
# A password may also hold a '/' or a space (unescaped, as people paste them): 'user:' then to the
# first @ on the line, unless digits and a '/' follow the colon ('host:9/a@b.jpg': a port, then a path).
_USERINFO = re.compile(r'(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)'
                       r'(?P<userinfo>[^/\s\'"]+|[^/\s\'"@:]+:(?!\d*/)[^@\n\'"]*?)@')
# A query parameter that holds a credential (pre-signed S3 URLs, tokens, passwords).
_SECRET_NAMES = (r'X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential|'
                 r'Signature|AWSAccessKeyId|access_token|token|password|passwd|secret|secret_key|access_key|api_key|'
                 r'apikey|key|sig|client_secret|refresh_token|id_token|hf_token|auth|authorization|'
                 r'aws_secret_access_key|aws_session_token')
# (also after ';' and as '&amp;' or percent-encoded '=', as URLs are pasted from pages and logs)
_SECRET_PARAMETER = re.compile(rf'(?P<name>(?:[?&#;]|&amp;)(?:{_SECRET_NAMES})(?:=|%3D))[^&;\s\'"#]*', re.IGNORECASE)
# An HTTP authorization header or a bearer token, in whatever text quotes it.
# After 'Authorization:' whatever follows; elsewhere a token of 12 characters or more ('a basic video' stays).
_BEARER = re.compile(r'(?P<name>\bAuthorization\s*[:=]\s*(?:(?:Bearer|Basic|Token)\s+)?)[^\s\'",}]+|'
                     r'(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{12,}', re.IGNORECASE)
# A secret as a setting: "aws_secret_access_key = x", "{'secret_key': 'x'}", "password: x".
_SECRET_SETTING = re.compile(
    r'(?P<name>\b(?:aws_secret_access_key|aws_session_token|secret_key|secret_access_key|client_secret|password|'
    r'passwd|api_key|access_token|refresh_token|hf_token)[\'"]?\s*[:=]\s*[\'"]?)[^\s\'",}]+', re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every credential of a URL, a header or a setting replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f'{m["scheme"]}{HIDDEN}@', text)
    text = _SECRET_PARAMETER.sub(lambda m: f'{m["name"]}{HIDDEN}', text)
    text = _BEARER.sub(lambda m: f'{m["name"] or m["scheme"]}{HIDDEN}', text)
    return _SECRET_SETTING.sub(lambda m: f'{m["name"]}{HIDDEN}', text)


def quoted(text: str, limit: int = 300) -> str:
    """Text another party wrote (a store's error code, a server's reason phrase) as a message may
    quote it: a control character (a terminal escape) as '?', at most ``limit`` characters."""
    return ''.join(ch if ch.isprintable() else '?' for ch in str(text)[:limit])


_SIGNATURES = ((b'\x1f\x8b', 'gzip data'), (b'PK\x03\x04', 'a zip archive'), (b'%PDF', 'a PDF'),
               (b'BZh', 'bzip2 data'), (b'\xfd7zXZ', 'xz data'), (b'\x28\xb5\x2f\xfd', 'zstd data'),
               (b'\x7fELF', 'an executable'))


def byte_kind(data: bytes) -> str:
    """What ``data`` looks like (text, HTML, gzip, ...), in words, never quoting a byte of it."""
    head = bytes(data[:512])
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    stripped = head.lstrip().lower()
    if stripped.startswith((b'<!doctype html', b'<html')):
        return 'an HTML page'
    if stripped.startswith((b'{', b'[')):
        return 'JSON-like text'
    try:
        head.decode('utf-8')
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the window
            return 'binary data'
    return 'text'
