"""Fetching the URLs a parquet names, trusting none of them: the one way the URL route downloads.

A URL parquet comes from the hub; its URLs are hostile until checked. :func:`check_url` is the URL
rule, and every request goes through it, the first and every redirect: http and https only, and a
host whose every address (after DNS resolution) is public: no loopback, private, link-local
(the cloud metadata service among them), multicast or reserved address, in any spelling
(``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``, a name resolving to one). The connection is
then made to the very addresses checked, so a second DNS answer cannot swap them. A download has a
total-time bound, its DNS lookups included (a server sending a byte a second ends at it), a size
bound, and a bound on the pixels its header declares (a small file that decodes into GBs is
refused before decoding).

``allow_local`` (``--allow-local-urls``) lets loopback and private addresses through, for a test
server or a mirror on the local network; link-local and metadata addresses stay refused. It is an
argument, never read from the environment.

img2dataset fetches with ``urllib.request.urlopen`` and no hook: :func:`fetch_image` takes the
place of its ``download_image`` (``src.prepare.url_download``).
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from urllib.parse import urljoin, urlsplit

from src.datasets.storage.redact import quoted

ALLOWED_SCHEMES = ('http', 'https')
MAX_REDIRECTS = 5
NAT64 = ipaddress.ip_network('64:ff9b::/96')  # the well-known prefix: 64:ff9b::7f00:1 is 127.0.0.1
_READ_CHUNK = 64 << 10


# IANA's special-purpose block (192.0.0.0/24: 192.0.0.192 is a NAT traversal box's address) that
# some Python versions count as global.
SPECIAL_PURPOSE = ipaddress.ip_network('192.0.0.0/24')


@dataclass(frozen=True)
class UrlPolicy:
    """What one download may do: the host kinds it may reach, its time, bytes and pixels."""

    allow_local: bool = False
    timeout: float = 10.0  # seconds for the whole download: connection, redirects, headers and body
    max_bytes: int = 64 << 20
    max_pixels: int = 8192 * 8192


class UrlRefused(Exception):
    """A URL the rule refuses; ``reason`` is short and the same for every URL of its kind (it is
    what the download summary counts)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def refused_address(address: str, allow_local: bool = False) -> str | None:
    """Why the IP ``address`` may not be reached, or None when it may."""
    ip = ipaddress.ip_address(address.split('%', 1)[0])
    if ip.version == 6:  # an IPv4 address carried in an IPv6 one is judged as itself
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return refused_address(str(inner), allow_local)
    if ip.is_link_local or ip == ipaddress.ip_address('fd00:ec2::254'):  # the metadata services
        return 'link-local address'
    if ip.is_loopback:  # before the reserved kinds: ::1 lies in ::/8, reserved too
        return None if allow_local else 'loopback address'
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return 'reserved address'
    if ip in SPECIAL_PURPOSE or (ip.version == 6 and ip.is_site_local):
        return None if allow_local else 'private address'  # IANA special-purpose; deprecated site-local
    if ip.is_private or not ip.is_global:
        return None if allow_local else 'private address'
    return None


def check_url(url: str, policy: UrlPolicy, deadline: '_Deadline | None' = None) -> list[tuple]:
    """The URL rule: the ``getaddrinfo`` entries ``url`` may be fetched from, or ``UrlRefused``.

    Every address a host resolves to must pass, not one of them: a name answering with a public
    and a loopback address is refused. Within a download, the lookup counts against its
    ``deadline`` (a hostile name's own DNS server may answer slowly).
    """
    if not isinstance(url, str):
        raise UrlRefused('not a URL')
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UrlRefused('malformed URL') from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UrlRefused(f'scheme {parts.scheme.lower() or "(none)"!r} (http and https only)')
    host = parts.hostname
    if not host:
        raise UrlRefused('no host in URL')
    if '@' in parts.netloc:  # urllib would take user:password@ for the host, and print it in its error
        raise UrlRefused('credentials in URL')
    port = port or (443 if parts.scheme.lower() == 'https' else 80)
    entries = _resolve(host, port, None if deadline is None else deadline.remaining())
    for entry in entries:
        reason = refused_address(entry[4][0], policy.allow_local)
        if reason:
            raise UrlRefused(reason)
    if not entries:
        raise UrlRefused('host not found')
    return entries


def _resolve(host: str, port: int, seconds: float | None) -> list[tuple]:
    """``getaddrinfo`` of ``host``, given up after ``seconds`` (None: the resolver's own timeouts):
    the lookup goes on in a daemon thread until the resolver gives up, the download does not wait."""
    answer: dict = {}

    def lookup():
        try:
            answer['entries'] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError, OSError):
            answer['entries'] = None

    if seconds is None or _is_address(host):  # an address is not looked up: no thread
        lookup()
    else:
        thread = threading.Thread(target=lookup, name='url-lookup', daemon=True)
        thread.start()
        thread.join(seconds)
        if 'entries' not in answer:
            raise UrlRefused('timed out')
    if answer['entries'] is None:
        raise UrlRefused('host not found')
    return answer['entries']


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _Deadline:
    """The total-time bound of one download: at its end every socket it opened is shut, which ends
    any read in progress, however slowly the server sends."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.sockets: list[socket.socket] = []
        self.expired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise UrlRefused('timed out')
        return left

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                sock.close()
                raise UrlRefused('timed out')
            self.sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cancel(self) -> None:
        self._timer.cancel()


def _connect(entries: list[tuple], deadline: _Deadline, address, timeout=None, source_address=None):
    """``socket.create_connection`` to the checked ``entries`` only (``address``, the host as the URL
    names it, is not resolved again)."""
    error = None
    for family, kind, proto, _, sockaddr in entries:
        sock = socket.socket(family, kind, proto)
        try:
            deadline.add(sock)
            sock.settimeout(deadline.remaining() + 1)  # the deadline's timer ends it first: one reason
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            error = err
            sock.close()
    raise error or OSError(f'cannot connect to {address[0]}')


def _pinned(connection_class, entries: list[tuple], deadline: _Deadline, host, **kwargs):
    """An http.client connection to ``host`` that connects to the checked ``entries`` only."""
    connection = connection_class(host, **kwargs)
    connection._create_connection = partial(_connect, entries, deadline)
    return connection


class _Guarded:
    """What the http and https handlers share: each request through the URL rule, then a
    connection to the addresses it checked."""

    def __init__(self, policy, deadline):
        super().__init__()
        self.policy, self.deadline = policy, deadline

    def _open(self, req, connection_class, **kwargs):
        entries = check_url(req.full_url, self.policy, self.deadline)
        return self.do_open(partial(_pinned, connection_class, entries, self.deadline), req, **kwargs)


class _GuardedHTTP(_Guarded, urllib.request.HTTPHandler):
    def http_open(self, req):
        return self._open(req, http.client.HTTPConnection)


class _GuardedHTTPS(_Guarded, urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self._open(req, http.client.HTTPSConnection, context=self._context)


class _GuardedRedirect(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def __init__(self, policy, deadline):
        super().__init__()
        self.policy, self.deadline = policy, deadline

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get('location') or headers.get('uri')
        if target:  # the rule's own reason, before urllib's (which lets ftp: through)
            check_url(urljoin(req.full_url, target), self.policy, self.deadline)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(policy: UrlPolicy, deadline: _Deadline) -> urllib.request.OpenerDirector:
    """Only the guarded http and https handlers: no file:, data:, ftp: handler, no proxy from the
    environment (through a proxy the address checked would not be the one reached)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_GuardedHTTP(policy, deadline), _GuardedHTTPS(policy, deadline), _GuardedRedirect(policy, deadline),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, policy: UrlPolicy, headers: dict | None = None) -> tuple[bytes, object]:
    """The body of ``url`` and its response headers, within ``policy``; ``UrlRefused`` (with the
    reason to count) for what the rule or a bound refuses; urllib's errors (an HTTP status, a
    refused connection) as they are."""
    deadline = _Deadline(policy.timeout)
    try:
        check_url(url, policy, deadline)  # before urllib parses it: a file: or data: URL never reaches a handler
        request = urllib.request.Request(url.strip(), headers=headers or {})
        with _opener(policy, deadline).open(request, timeout=deadline.remaining()) as response:
            length = response.headers.get('Content-Length')
            if length and length.strip().isdigit() and int(length) > policy.max_bytes:
                raise UrlRefused(f'larger than {policy.max_bytes} bytes')
            chunks, total = [], 0
            while True:
                chunk = response.read(_READ_CHUNK)
                deadline.remaining()
                if not chunk:
                    break
                total += len(chunk)
                if total > policy.max_bytes:
                    raise UrlRefused(f'larger than {policy.max_bytes} bytes')
                chunks.append(chunk)
            return b''.join(chunks), response.headers
    except urllib.error.URLError as err:
        if isinstance(err.reason, UrlRefused):
            raise err.reason from None
        if deadline.expired:
            raise UrlRefused('timed out') from None
        raise
    except (OSError, http.client.HTTPException):
        if deadline.expired:
            raise UrlRefused('timed out') from None
        raise
    finally:
        deadline.cancel()


def refused_image(data: bytes, max_pixels: int) -> str | None:
    """Why the image is refused before img2dataset decodes it, or None: its header declares more than
    ``max_pixels`` pixels, or it is a JPEG of more scans than its size allows (a decoder bomb).
    Nothing is decoded: the project's one opening function, ``src.datasets.storage.images.open_image``,
    reads the header and counts the scans. Other bytes it cannot open are left to img2dataset's
    decoder, which counts them."""
    from src.datasets.errors import SampleError
    from src.datasets.storage.images import ScanBomb, open_image
    try:
        open_image(data, 'download', max_pixels=max_pixels).close()
    except ScanBomb:
        return 'refused: a JPEG of more scans than its size allows (a decoder bomb)'
    except SampleError as e:
        if e.reason == 'too-large':
            return f'refused: more than {max_pixels} pixels declared'
    return None


def fetch_image(row, timeout, user_agent_token, disallowed_header_directives, *, policy: UrlPolicy):
    """img2dataset's ``download_image`` (same arguments and answer: key, stream, error) through
    :func:`fetch`, refusing images that declare more than ``policy.max_pixels`` pixels, or JPEGs of more
    scans than their size allows (:func:`refused_image`)."""
    key, url = row
    agent = 'Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0'
    if user_agent_token:
        agent += f' (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)'
    try:
        data, headers = fetch(url, policy, {'User-Agent': agent})  # policy.timeout is img2dataset's too
    except UrlRefused as refused:
        return key, None, f'refused: {refused.reason}'
    except urllib.error.HTTPError as err:  # its reason phrase is the server's text: the standard one is said
        phrase = http.client.responses.get(err.code)
        return key, None, f'HTTP Error {err.code}: {phrase}' if phrase else f'HTTP Error {err.code}'
    except Exception as err:  # noqa: BLE001 (img2dataset counts every failure by its message)
        return key, None, quoted(str(err))
    if disallowed_header_directives:
        from img2dataset.downloader import is_disallowed
        if is_disallowed(headers, user_agent_token, disallowed_header_directives):
                return key, None, 'Use of image disallowed by X-Robots-Tag directive'
    refusal = refused_image(data, policy.max_pixels)
    if refusal:
        return key, None, refusal
    return key, io.BytesIO(data), None
