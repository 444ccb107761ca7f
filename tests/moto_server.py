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
from pathlib import Path
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


@contextmanager
def bucket_with(folder, bucket: str = 'data') -> Iterator[str]:
    """moto's server (:func:`moto_server`) with the files of the prepared ``folder`` in ``bucket``
    (the preparation's own ``.prepare`` and hidden files left out); yields its endpoint. Needs boto3."""
    import boto3
    folder = Path(folder)
    with moto_server() as endpoint:
        client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='k', aws_secret_access_key='s',
                              region_name='us-east-1')
        client.create_bucket(Bucket=bucket)
        for path in folder.rglob('*'):
            if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
                client.put_object(Bucket=bucket, Key=path.relative_to(folder).as_posix(), Body=path.read_bytes())
        yield endpoint


def petrel_file(path, endpoint: str) -> str:
    """A petrel-client config at ``path`` whose default cluster is ``endpoint`` with bucket_with's keys."""
    text = f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = k\nsecret_key = s\nhost_base = {endpoint}\n'
    with open(path, 'w') as f:
        f.write(text)
    return str(path)
