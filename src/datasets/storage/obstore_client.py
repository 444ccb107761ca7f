"""The S3 client of DataLoader workers: obstore (Rust), far less CPU a request than boto3
(bench/RESULTS.md, "Object storage, and against LitData"), where it is safe.

obstore runs its requests on a runtime of threads made at its first use; a process forked after
that inherits the runtime without its threads, and its first request hangs. So obstore is made
only inside a DataLoader worker, in the worker, and never in the process that forks them: the
parent (index fetches, start-up checks, ``num_workers=0``) stays on boto3
(``src.datasets.storage.object_store``), as do workers where obstore is not installed (the ``s3`` extra
brings it). Reads behave as boto3's: bounded retries of throttling, 5xx and dropped connections
with backoff, timeouts on connect and read, one deadline a request (obstore's ``timeout`` is the
whole request, body included: set to ``REQUEST_DEADLINE``, and no attempt starts after it), a
missing object a ``missing-file`` sample error, an oversized one ``too-large``, a store that sends
too slowly ``too-slow``; no message holds a secret.
"""
from __future__ import annotations

import functools
import os
from datetime import timedelta

from src.datasets.errors import SampleError
from src.datasets.storage import deadlines
from src.datasets.storage.files import MAX_FILE_BYTES

CONNECT_TIMEOUT = '10s'
READ_TIMEOUT = '60s'  # idle, as boto3's; the whole request is bounded by deadlines.REQUEST_DEADLINE
RETRIES = 4  # after the first attempt: boto3's standard mode's 5 attempts
CHUNK = 1 << 20  # bytes of a body gathered before its bound is checked again
RETRY_TIMEOUT = 120.0  # seconds after which obstore starts no retry (at most the deadline)

_STORES: dict = {}  # (pid, endpoint, access key, bucket) -> this worker's store


@functools.lru_cache(maxsize=None)
def _available() -> bool:
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def in_dataloader_worker() -> bool:
    from torch.utils.data import get_worker_info
    return get_worker_info() is not None


def worker_store(cluster, bucket: str):
    """This worker's obstore store for ``bucket`` of ``cluster`` (an ``object_store.Cluster``),
    made here on first use; None outside a DataLoader worker or without obstore: read with boto3."""
    if not in_dataloader_worker() or not _available():
        return None
    key = (os.getpid(), cluster.endpoint, cluster.access_key, bucket)
    store = _STORES.get(key)
    if store is None:
        if any(k[0] != key[0] for k in _STORES):  # a parent's stores: never used across a fork
            _STORES.clear()
        from obstore.store import S3Store
        deadline = timedelta(seconds=deadlines.REQUEST_DEADLINE)  # read now: tests shorten it
        store = _STORES[key] = S3Store(
            bucket, endpoint=cluster.endpoint, access_key_id=cluster.access_key,
            secret_access_key=cluster.secret_key, region=os.environ.get('AWS_DEFAULT_REGION', 'us-east-1'),
            virtual_hosted_style_request=False,
            client_options={'allow_http': cluster.endpoint.startswith('http://'), 'timeout': deadline,
                            'read_timeout': READ_TIMEOUT, 'connect_timeout': CONNECT_TIMEOUT},
            retry_config={'max_retries': RETRIES, 'retry_timeout': min(timedelta(seconds=RETRY_TIMEOUT), deadline),
                          'backoff': {'init_backoff': timedelta(milliseconds=100),
                                      'max_backoff': timedelta(seconds=15), 'base': 2}})
    return store


def object_head(store, key: str, path: str, where: str, deadline) -> tuple[int, str]:
    """The size and ETag of the object ``key`` (a HEAD request, within ``deadline``, a
    ``deadlines.Deadline``); a ``missing-file`` sample error when it is missing."""
    import obstore
    from obstore.exceptions import BaseError, NotFoundError
    try:
        meta = obstore.head(store, key)
    except NotFoundError:
        raise SampleError('missing-file', f'{path}: no such object in {where}') from None
    except (BaseError, OSError) as e:  # its messages quote the request: only the kind is kept
        deadline.check()
        raise SampleError('missing-file', f'{path}: cannot be read from {where} ({type(e).__name__})') from None
    return meta['size'], meta.get('e_tag') or ''


def _bounded_body(result, bound: int, path: str, where: str) -> bytes:
    """The body of a GET's ``result``, of ``bound`` bytes at most (the length it said, the range asked):
    obstore gathers whatever comes, and a chunked body goes on past its length (gigabytes a second)."""
    chunks, held = [], 0
    for chunk in result.stream(min_chunk_size=CHUNK):
        held += len(chunk)
        if held > bound:
            raise SampleError('too-large', f'{path}: more than the {bound} bytes asked came from {where}')
        chunks.append(chunk)
    return b''.join(chunks)


def read_object(store, key: str, path: str, where: str, offset: int | None = None, size: int | None = None,
                attempts: int = 3, *, etag: str | None = None, max_bytes: int = MAX_FILE_BYTES,
                deadline) -> tuple[bytes, int, str]:
    """The object ``key`` (named ``path`` in messages, ``where`` the store's description), or its
    ``size`` bytes from ``offset`` (one ranged GET), with the whole object's size and ETag as the
    response gives them; a body cut off mid-read is fetched again, up to ``attempts`` times; one of
    more than ``max_bytes`` is refused from its metadata, not read; with ``etag``, only while the
    object still has it (``StaleIndexError`` once it was replaced). No attempt starts after
    ``deadline`` (a ``deadlines.Deadline``), and each ends by it (the store's ``timeout``)."""
    import obstore
    from obstore.exceptions import BaseError, NotFoundError, PreconditionError
    options = {'if_match': etag} if etag else {}
    if offset is not None:
        options['range'] = (offset, offset + size)
    for attempt in range(attempts):
        try:
            result = obstore.get(store, key, options=options)
            meta = result.meta
            if offset is None and meta['size'] > max_bytes:
                raise SampleError('too-large', f'{path}: {meta["size"]} bytes, more than the '
                                               f'{max_bytes} it may have')
            return _bounded_body(result, meta['size'] if offset is None else size, path, where), meta['size'], \
                meta.get('e_tag') or ''
        except PreconditionError:
            from src.datasets.storage.tar_index import StaleIndexError
            raise StaleIndexError(f'{path}: replaced in {where} while it was being read (its ETag is no longer '
                                  f'{etag}): upload the shards and their index together again') from None
        except NotFoundError:
            raise SampleError('missing-file', f'{path}: no such object in {where}') from None
        except (BaseError, OSError) as e:  # its messages quote the request: only the kind is kept
            deadline.check()
            if attempt == attempts - 1:
                raise SampleError('missing-file', f'{path}: cannot be read from {where} '
                                                  f'({type(e).__name__})') from None
    raise AssertionError('unreachable')
