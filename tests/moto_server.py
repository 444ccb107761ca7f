"""moto's standalone S3 server in a process of its own on 127.0.0.1, for the tests that need a
separate server (one that checks credentials) and for bench/bench_s3_clients.py (whose CPU
figures must not count the server's work). Standard library only: the benchmark also runs it
from an environment without moto, naming another Python that has it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def moto_server(python: str = sys.executable, env: dict | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port, yield its endpoint once it accepts
    connections, and stop it after."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([python, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                              env=dict(os.environ, **(env or {})),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f'moto server did not start on 127.0.0.1:{port}') from None
                time.sleep(0.05)
        yield f'http://127.0.0.1:{port}'
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # busy with a client that never finished its request
            server.kill()
            server.wait()
