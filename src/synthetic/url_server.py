"""A local HTTP server on 127.0.0.1 for the URL route's tests and demo: it serves the images a URL
parquet points at, and the failures real URLs have (404, a page that is no image, a server that
does not answer in time, one that sends a byte a second, redirects). It counts the requests to each
path, so a test can tell what a re-run fetched again."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Response:
    body: bytes
    status: int = 200
    content_type: str = 'application/octet-stream'
    delay: float = 0.0  # seconds before answering: longer than the client's timeout is a timeout
    headers: tuple = ()  # more (name, value) pairs: a redirect's Location; ('Content-Length', None) sends none
    drip: float = 0.0  # seconds between the body's bytes: a server that never quite stops sending


class UrlServer:
    """``with UrlServer() as server: server.add('/a.jpg', Response(...)); server.url('/a.jpg')``."""

    def __init__(self):
        self.routes: dict[str, Response] = {}
        self.requests: Counter = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                with server._lock:
                    server.requests[self.path] += 1
                response = server.routes.get(self.path, Response(b'not found', status=404))
                if response.delay:
                    server._stopping.wait(response.delay)
                try:
                    self.send_response(response.status)
                    self.send_header('Content-Type', response.content_type)
                    if 'content-length' not in {name.lower() for name, _ in response.headers}:
                        self.send_header('Content-Length', str(len(response.body)))
                    for name, value in response.headers:
                        if value is not None:  # None: the header left out
                            self.send_header(name, value)
                    self.end_headers()
                    if not response.drip:
                        self.wfile.write(response.body)
                    for at in range(len(response.body) if response.drip else 0):
                        if server._stopping.wait(response.drip):
                            break
                        self.wfile.write(response.body[at:at + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: what a timeout test wants

            def log_message(self, *args):  # quiet: the tests read the counts instead
                pass

        return Handler

    def add(self, path: str, response: Response) -> str:
        self.routes[path] = response
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}{path}'

    def fetched(self) -> int:
        """Requests served so far."""
        with self._lock:
            return sum(self.requests.values())

    def __enter__(self) -> 'UrlServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # ends the delayed answers at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

