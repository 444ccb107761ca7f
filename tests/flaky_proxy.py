"""A proxy on 127.0.0.1 in front of an S3 server that fails the way real object stores do: some
requests answered 503 SlowDown (throttling), some bodies cut off mid-way (a dropped connection)."""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')


def forwarded(handler: BaseHTTPRequestHandler, host: str, port: int) -> tuple[http.client.HTTPResponse, bytes]:
    """``handler``'s request (its body too) sent on to the server at ``host:port``: its response and body."""
    length = int(handler.headers.get('Content-Length') or 0)
    body = handler.rfile.read(length) if length else None
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {k: v for k, v in handler.headers.items() if k.lower() != 'host'}
    headers['Host'] = f'{host}:{port}'
    connection.request(handler.command, handler.path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


class LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler``, in a thread of its own
    while the ``with`` block lasts."""

    def __init__(self, handler, server_class=ThreadingHTTPServer):
        self._server = server_class(('127.0.0.1', 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class FlakyProxy(LocalServer):
    """Every ``throttle_every``-th request gets a 503; every ``cut_every``-th GET of an object gets
    half of its body and a closed connection; every request waits ``latency`` seconds first (a
    real store's time to first byte). Counts what it did, the body bytes it sent back and the most
    requests it had in flight at once."""

    def __init__(self, upstream: str, throttle_every: int = 3, cut_every: int = 4, latency: float = 0.0):
        target = urlsplit(upstream)
        self.host, self.port = target.hostname, target.port
        self.throttle_every, self.cut_every, self.latency = throttle_every, cut_every, latency
        self.requests = self.throttled = self.cut = self.bytes_sent = 0
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            # The headers and the body are two writes: with Nagle's algorithm the body of a small
            # answer waited for the client's delayed ACK, 40 ms a request that no store has.
            disable_nagle_algorithm = True

            def _forward(self):
                with proxy._lock:
                    proxy.requests += 1
                    number = proxy.requests
                    proxy.in_flight += 1
                    proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                try:
                    time.sleep(proxy.latency)
                    self._answer(number)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _answer(self, number):
                if proxy.throttle_every and number % proxy.throttle_every == 0:
                    length = int(self.headers.get('Content-Length') or 0)
                    if length:
                        self.rfile.read(length)
                    with proxy._lock:
                        proxy.throttled += 1
                    self._reply(503, {'Content-Type': 'application/xml'}, SLOW_DOWN)
                    return
                response, data = forwarded(self, proxy.host, proxy.port)
                cut = (self.command == 'GET' and response.status == 200 and len(data) > 64
                       and proxy.cut_every and number % proxy.cut_every == 0)
                reply_headers = {k: v for k, v in response.getheaders()
                                 if k.lower() not in ('transfer-encoding', 'connection', 'content-length')}
                if cut:
                    with proxy._lock:
                        proxy.cut += 1
                    self.send_response(response.status)
                    for key, value in reply_headers.items():
                        self.send_header(key, value)
                    self.send_header('Content-Length', str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._reply(response.status, reply_headers, data, response.getheader('Content-Length'))

            def _reply(self, status, headers, data, length=None):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                # a HEAD answer has no body but says the object's length
                self.send_header('Content-Length', length if self.command == 'HEAD' and length else str(len(data)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)
                    with proxy._lock:
                        proxy.bytes_sent += len(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        return Handler
