"""The S3 client a data worker should use: boto3 (what ``ObjectFolder`` calls), s3fs and obstore,
side by side against one S3-protocol server, on the two reads the dataset makes: a whole object
(a loose image, ``ceph_folder``) and a ranged GET (a member of a tar shard in the bucket).

The server is moto's standalone server in its own process on 127.0.0.1, so the CPU time measured
here (this process only) is the client's own work per request: what a DataLoader worker spends
besides waiting. Wall time includes moto, which is far slower than a real store; it is shown, but
the CPU column is the comparison that carries over. Also timed: making a client, which every
worker does once (s3fs makes its real client on first use, so its figure says little). And
checked: whether a client made in a forked child still answers once the parent has made a request,
as DataLoader workers need. Clients that are not installed are listed as missing (s3fs pins botocore to
its aiobotocore's range, so it usually cannot share an environment with a current boto3: run
this script in a second environment for it, as bench/RESULTS.md records).

    .venv/bin/python bench/bench_s3_clients.py [--small]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))  # the tests' moto server
from moto_server import moto_server  # noqa: E402

BUCKET = 'bench'
KEY, SECRET, REGION = 'testing', 'testing', 'us-east-1'


def clients(endpoint: str) -> dict[str, tuple[Callable, Callable] | str]:
    """name -> (make a client, client -> (get(key), get_range(key, start, end))), or why missing."""
    found: dict[str, tuple[Callable, Callable] | str] = {}
    try:
        import boto3
        from botocore.config import Config

        def make_boto3():
            return boto3.session.Session().client(
                's3', endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                region_name=REGION, config=Config(retries={'mode': 'standard', 'max_attempts': 5},
                                                  connect_timeout=10, read_timeout=60))

        def boto3_reads(client):
            return (lambda key: client.get_object(Bucket=BUCKET, Key=key)['Body'].read(),
                    lambda key, start, end: client.get_object(Bucket=BUCKET, Key=key,
                                                              Range=f'bytes={start}-{end - 1}')['Body'].read())
        found[f'boto3 {boto3.__version__}'] = (make_boto3, boto3_reads)
    except ImportError as exc:
        found['boto3'] = f'not installed ({exc.name})'
    try:
        import s3fs

        def make_s3fs():
            return s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={'endpoint_url': endpoint,
                                                                           'region_name': REGION},
                                     skip_instance_cache=True)

        def s3fs_reads(fs):
            return (lambda key: fs.cat_file(f'{BUCKET}/{key}'),
                    lambda key, start, end: fs.cat_file(f'{BUCKET}/{key}', start=start, end=end))
        found[f's3fs {s3fs.__version__}'] = (make_s3fs, s3fs_reads)
    except ImportError as exc:
        found['s3fs'] = f'not installed ({exc.name})'
    try:
        import obstore
        from obstore.store import S3Store

        def make_obstore():
            return S3Store(BUCKET, endpoint=endpoint, access_key_id=KEY, secret_access_key=SECRET,
                           region=REGION, client_options={'allow_http': True, 'timeout': '60s',
                                                                  'connect_timeout': '10s'})

        def obstore_reads(store):
            return (lambda key: obstore.get(store, key).bytes().to_bytes(),
                    lambda key, start, end: obstore.get_range(store, key, start=start, end=end).to_bytes())
        found[f'obstore {obstore.__version__}'] = (make_obstore, obstore_reads)
    except ImportError as exc:
        found['obstore'] = f'not installed ({exc.name})'
    return found


def upload(endpoint: str, count: int, size: int) -> tuple[list[str], dict[str, bytes]]:
    import boto3
    s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    data = {}
    for i in range(count):
        data[f'images/{i:05d}.jpg'] = os.urandom(size)
        s3.put_object(Bucket=BUCKET, Key=f'images/{i:05d}.jpg', Body=data[f'images/{i:05d}.jpg'])
    shard = os.urandom(count * size)
    s3.put_object(Bucket=BUCKET, Key='shards/000000.tar', Body=shard)
    data['shards/000000.tar'] = shard
    return sorted(k for k in data if k.startswith('images/')), data


def survives_fork(make: Callable, reads: Callable, key: str, wait: float = 10.0) -> str:
    """Whether a client made in a forked child answers after the parent has made one request, as a
    DataLoader worker must (Linux forks them, and the main process reads a sample or checks the
    bucket first)."""
    reads(make())[0](key)
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, one read
        try:
            reads(make())[0](key)
        finally:
            os._exit(0)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return 'yes'
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return f'no: the child hung ({wait:.0f} s)'


def timed(work: Callable[[], None], count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return (time.perf_counter() - wall) / count * 1e3, (time.process_time() - cpu) / count * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='40 objects and 2 rounds')
    parser.add_argument('--objects', type=int, default=200)
    parser.add_argument('--size-kb', type=int, default=64, help='object size: a 512-px JPEG is 30-100 KB')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--server-python', default=sys.executable, help='a Python with moto[server]')
    args = parser.parse_args()
    count, rounds = (40, 2) if args.small else (args.objects, args.rounds)
    size = args.size_kb * 1024
    with moto_server(args.server_python) as endpoint:
        keys, data = upload(endpoint, count, size)
        available = {name: c for name, c in clients(endpoint).items() if not isinstance(c, str)}
        readers, made = {}, {}
        for name, (make, reads) in available.items():
            made[name] = statistics.median(timed(make, 1)[1] for _ in range(5))
            readers[name] = reads(make())
            get, get_range = readers[name]
            # The same bytes from every client before any timing.
            assert get(keys[0]) == data[keys[0]], name
            assert get_range('shards/000000.tar', size, 2 * size) == data['shards/000000.tar'][size:2 * size], name
        results = {name: {'get': [], 'range': []} for name in readers}
        for _ in range(rounds):  # interleaved rounds: drift in the server falls on every client
            for name, (get, get_range) in readers.items():
                results[name]['get'].append(timed(lambda: [get(key) for key in keys], count))
                results[name]['range'].append(timed(
                    lambda: [get_range('shards/000000.tar', i * size, (i + 1) * size) for i in range(count)], count))
        # Last: a fork can leave a client's pooled connections shared with a hung child.
        forks = {name: survives_fork(*available[name], keys[0]) for name in readers}

    print(f'{count} objects of {args.size_kb} KB and {count} ranged GETs of a {count * args.size_kb // 1024} MB '
          f'shard, moto on 127.0.0.1 in its own process; medians of {rounds} interleaved rounds')
    print(f'{"client":<22}{"make client":>13}{"GET wall":>10}{"GET CPU":>9}{"range wall":>12}{"range CPU":>11}'
          f'   (ms; CPU of this process only)   works in a forked worker')
    for name, found in clients(endpoint).items():
        if isinstance(found, str):
            print(f'{name:<22}{found}')
            continue
        get = [statistics.median(v) for v in zip(*results[name]['get'])]
        rng = [statistics.median(v) for v in zip(*results[name]['range'])]
        print(f'{name:<22}{made[name]:>13.2f}{get[0]:>10.2f}{get[1]:>9.3f}{rng[0]:>12.2f}{rng[1]:>11.3f}'
              f'   {forks[name]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
