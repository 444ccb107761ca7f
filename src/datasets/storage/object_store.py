"""Objects in S3-protocol storage (Ceph's gateway, MinIO, any cloud), read as upstream reads ceph
through petrel_client: ``ceph_config`` is petrel-client's INI file and folders are
``s3://bucket/prefix`` (the default cluster) or ``<cluster>:s3://bucket/prefix``.

The client is boto3's (in DataLoader workers, obstore's where it is installed: ``obstore_client``),
made lazily in each process (clients are not fork-safe), with bounded retries in botocore's
standard mode (throttling, 5xx, dropped connections), timeouts on connect and read, and one
deadline a request, body included (``deadlines.request_deadline``), so no request hangs, not even
on a store that trickles its answer: it ends in a counted ``too-slow``. A missing object is one
sample's ``missing-file``; a wrong endpoint, wrong keys or a missing bucket fail at start-up
(:meth:`ObjectFolder.check`) naming the setting. Secrets are never part of a message: only the
cluster, endpoint and bucket are.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import re
from pathlib import Path

from src.datasets.errors import SampleError
from src.datasets.extras import require
from src.datasets.storage.files import MAX_FILE_BYTES, unsafe_path
from src.datasets.storage.sidecars import build_once, kept, written_aside
from src.datasets.storage.obstore_client import object_head, read_object, worker_store
from src.datasets.storage.redact import quoted, redact
from src.datasets.storage.deadlines import request_deadline, watch_connections
from src.datasets.storage.storage import Reader, check_size

# The settings and the fetching ahead live in modules of their own; their names stay importable here.
from src.datasets.storage.object_config import (_FOLDER, Cluster, StorageConfigError, _environment_cluster,  # noqa: F401
                                        is_object_url, read_petrel_config)
from src.datasets.storage.object_fetch import MAX_SPAN, PREFETCH_THREADS, InFlight, Kept, fetch_within  # noqa: F401

CONNECT_TIMEOUT = 10  # seconds
READ_TIMEOUT = 60
MAX_ATTEMPTS = 5  # per request, botocore's standard retry mode (with backoff)
BODY_ATTEMPTS = 3  # a body cut off mid-read is fetched again this many times
DEFAULT_CACHE = Path.home() / '.cache' / 't2i-data' / 'objects'

logger = logging.getLogger(__name__)


class ObjectFolder(Reader):
    """A folder ``[cluster:]s3://bucket/prefix`` of ``ceph_config``'s clusters; reads the objects
    under it by the paths the dataset makes (``os.path.join(folder, file)``)."""

    remote = True

    def __init__(self, folder: str, ceph_config: str | None, *, connections: int = 10):
        """``ceph_config`` None: one cluster from the AWS environment variables (AWS_ENDPOINT_URL,
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). ``connections``: the client's connection pool, as
        many as the threads that share it (botocore's default is 10)."""
        match = _FOLDER.match(folder.rstrip('/'))
        if match is None:
            raise StorageConfigError(f'{folder!r} is not [cluster:]s3://bucket/prefix')
        clusters, default = read_petrel_config(ceph_config) if ceph_config else _environment_cluster()
        name = match.group('cluster') or default
        if name is None or name not in clusters:
            raise StorageConfigError(f'{folder}: cluster {name!r} is not in ceph_config {ceph_config} '
                                     f'(its clusters: {sorted(clusters)}; default_cluster: {default!r})')
        self.folder = folder.rstrip('/')
        self.cluster = clusters[name]
        self.bucket = match.group('bucket')
        self.prefix = match.group('prefix')
        self.connections = max(connections, PREFETCH_THREADS)
        self._client, self._pid = None, None
        self._kept, self._ahead = Kept(), InFlight()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_client'] = state['_pid'] = None  # a worker makes its own client
        state['_kept'], state['_ahead'] = Kept(), InFlight()
        return state

    def describe(self) -> str:
        return f'{self.folder} (endpoint {redact(self.cluster.endpoint)}, bucket {self.bucket})'

    def client(self):
        if self._client is None or self._pid != os.getpid():
            boto3 = require('boto3')
            from botocore.config import Config
            self._client = watch_connections(boto3.session.Session().client(
                's3', endpoint_url=self.cluster.endpoint, aws_access_key_id=self.cluster.access_key,
                aws_secret_access_key=self.cluster.secret_key,
                config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                              retries={'max_attempts': MAX_ATTEMPTS, 'mode': 'standard'},
                              s3={'addressing_style': 'path'}, max_pool_connections=self.connections)))
            self._pid = os.getpid()
        return self._client

    def ready(self) -> None:
        """This process's client made here once, not by each fetching thread."""
        if worker_store(self.cluster, self.bucket) is None:
            self.client()

    def key(self, path: str) -> str:
        """The object key of ``path`` (``<folder>/<relative path>``); ``SampleError('unsafe-path')``
        for a path outside the folder, or one that climbs out of it with '..' (which some gateways
        resolve)."""
        relative = path[len(self.folder) + 1:]
        reason = 'outside-folder' if not path.startswith(self.folder + '/') else unsafe_path(relative)
        if reason:
            raise SampleError('unsafe-path', f'{path}: refused ({reason}): objects are read under {self.folder}')
        return f'{self.prefix}/{relative}' if self.prefix else relative

    def check(self) -> None:
        """Fail now, naming the setting, when the endpoint, the keys or the bucket cannot work."""
        client = self.client()  # says which extra to install when boto3 is missing
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            with request_deadline(f's3://{self.bucket} (HEAD)', 'the answer', self.describe()):
                client.head_bucket(Bucket=self.bucket)
        except SampleError as e:  # too slow
            raise StorageConfigError(str(e)) from None
        except ClientError as e:
            code = e.response.get('Error', {}).get('Code', '')
            what = {'404': 'the bucket does not exist', 'NoSuchBucket': 'the bucket does not exist',
                    '403': 'access denied: check access_key / secret_key of the cluster',
                    'InvalidAccessKeyId': 'the access_key is not known to the endpoint',
                    'SignatureDoesNotMatch': 'the secret_key does not match the access_key'}.get(code, code)
            raise StorageConfigError(f'{self.describe()}: {what}') from None
        except BotoCoreError as e:
            raise StorageConfigError(f'{self.describe()}: the endpoint cannot be reached ({type(e).__name__}); '
                                     'check host_base of the cluster') from None

    def create_bucket(self) -> None:
        """Make the bucket (``tools/upload.py --create-bucket``); one that exists already is fine."""
        from botocore.exceptions import ClientError
        try:
            self.client().create_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') not in ('BucketAlreadyOwnedByYou', 'BucketAlreadyExists'):
                raise StorageConfigError(f'{self.describe()}: cannot create the bucket '
                                         f'({e.response.get("Error", {}).get("Code", "error")})') from None

    def size(self, path: str) -> int:
        """The size of the object ``path`` (a HEAD request); ``SampleError`` when it is missing."""
        return self.head(path)[0]

    def head(self, path: str) -> tuple[int, str]:
        """The size and ETag of the object ``path`` (a HEAD request); ``SampleError`` when it is missing."""
        key, store = self.key(path), worker_store(self.cluster, self.bucket)
        client = self.client() if store is None else None  # made before the clock starts
        with request_deadline(f'{path} (HEAD)', 'the answer', self.describe()) as deadline:
            if store is not None:
                return object_head(store, key, path, self.describe(), deadline)
            from botocore.exceptions import BotoCoreError, ClientError
            try:
                response = client.head_object(Bucket=self.bucket, Key=key)
            except ClientError:
                raise SampleError('missing-file', f'{path}: no such object in {self.describe()}') from None
            except BotoCoreError as e:
                deadline.check()
                raise SampleError('missing-file', f'{path}: cannot be read from {self.describe()} '
                                                  f'({type(e).__name__})') from None
            return response['ContentLength'], response.get('ETag', '')

    def prefetch(self, samples, ahead: bool = False) -> None:
        """The objects of ``samples`` fetched at once, in threads, and kept for their reads: as many
        as the bound of what is kept leaves room for, the rest read one by one. ``ahead``: read
        later (a reader's next block), so started and not waited for."""
        paths, held = self._ahead.missing(self._kept, dict.fromkeys(path for sample in samples for path in sample),
                                          ahead)
        self.ready()
        if ahead:  # each fetch claims the largest object seen, and one larger is left to its read
            guess = max(self._kept.largest, 1)
            for path in paths[:max(self._ahead.room(self._kept), 0) // guess]:
                self._ahead.start(self._fetch_ahead, (path, guess), [path], guess)
            return
        room = self._kept.limit - held - self._ahead.claimed
        for path, data in fetch_within(self._try_read, paths, room, guess=self._kept.largest):
            self._kept.put(path, data)

    def _fetch_ahead(self, job: tuple[str, int]) -> list[tuple[str, bytes]]:
        path, claim = job
        data = self._try_read(path, claim)
        return [] if data is None else [(path, data)]

    def _try_read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
        """In a fetching thread: the object fetched (never waiting on what is kept or in flight), or
        None (also for one of more than ``max_bytes``)."""
        try:
            data = self.read_part(path, max_bytes=max_bytes)[0]
        except SampleError:
            return None  # its read says why
        self._kept.largest = max(self._kept.largest, len(data))  # also of what did not fit
        return data

    def read(self, path: str, offset: int | None = None, size: int | None = None, etag: str | None = None, *,
             max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The object ``path``, or its ``size`` bytes from ``offset`` (one ranged GET); one of more
        than ``max_bytes`` is refused from its announced length, not read; with ``etag``, only while
        the object still has it (``If-Match``: ``StaleIndexError`` once it was replaced)."""
        if offset is None:
            kept = self._ahead.take(self._kept, path)
            if kept is not None:
                return check_size(kept, path, max_bytes)
        return self.read_part(path, offset, size, etag, max_bytes=max_bytes)[0]

    def read_part(self, path: str, offset: int | None = None, size: int | None = None, etag: str | None = None, *,
                  max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, int, str]:
        """As :meth:`read` (never from what was fetched ahead), with the whole object's size and
        ETag from the same response: a first read checks a shard without a HEAD of its own. All its
        attempts end by ``REQUEST_DEADLINE`` (a counted ``too-slow``)."""
        key = self.key(path)
        what, asked = ((path, 'the object') if offset is None else
                       (f'{path} bytes {offset}-{offset + size - 1}', f'the {size} bytes asked'))
        store = worker_store(self.cluster, self.bucket)  # a DataLoader worker's lighter client
        client = self.client() if store is None else None  # made before the clock starts
        with request_deadline(what, asked, self.describe()) as deadline:
            if store is not None:
                return read_object(store, key, path, self.describe(), offset, size, BODY_ATTEMPTS, etag=etag,
                                   max_bytes=max_bytes, deadline=deadline)
            return self._get(client, key, path, offset, size, etag, max_bytes, deadline)

    def _get(self, client, key: str, path: str, offset: int | None, size: int | None, etag: str | None, max_bytes: int,
             deadline) -> tuple[bytes, int, str]:
        """:meth:`read_part` with boto3: a body cut off mid-read is fetched again, up to
        ``BODY_ATTEMPTS`` times, none after ``deadline``."""
        from botocore.exceptions import BotoCoreError, ClientError
        ranged = {} if offset is None else {'Range': f'bytes={offset}-{offset + size - 1}'}
        if etag:
            ranged['IfMatch'] = etag
        refused = None
        for attempt in range(BODY_ATTEMPTS):
            try:
                response = client.get_object(Bucket=self.bucket, Key=key, **ranged)
                refused = refused_answer(response, path, offset, size, max_bytes)
                bound = max_bytes if offset is None else size  # never more read than asked (a length unsaid)
                data = None if refused else response['Body'].read(bound + 1)
                if refused or len(data) > bound:
                    response['Body'].close()
                    refused = refused or SampleError('too-large', f'{path}: more than the {bound} bytes asked came '
                                                                  f'from {self.describe()}')
                    raise refused
                if len(data) != response.get('ContentLength', len(data)):
                    raise SampleError('missing-file', f'{path}: {len(data)} of {response["ContentLength"]} bytes')
                return data, whole_size(response, offset is not None), response.get('ETag', '')
            except ClientError as e:
                raise client_error(e, path, self.describe(), etag) from None
            except (BotoCoreError, SampleError) as e:  # cut off mid-read (its socket shut at the deadline too)
                if e is refused:  # too large, or not the range asked: asking again changes nothing
                    raise
                deadline.check()
                if attempt == BODY_ATTEMPTS - 1:
                    raise SampleError('missing-file', f'{path}: cannot be read from {self.describe()} '
                                                      f'({type(e).__name__})') from None
        raise AssertionError('unreachable')


def client_error(e, path: str, where: str, etag: str | None) -> Exception:
    """The error a GET's ``ClientError`` ``e`` is: a missing object, a shard replaced since its ETag
    was seen (``If-Match``), or another answer of the store, as a sample error."""
    code = e.response.get('Error', {}).get('Code', '')
    if code in ('NoSuchKey', '404'):
        return SampleError('missing-file', f'{path}: no such object in {where}')
    if code in ('PreconditionFailed', '412'):
        from src.datasets.storage.tar_index import StaleIndexError
        return StaleIndexError(f'{path}: replaced in {where} while it was being read (its ETag is no longer '
                               f'{etag}): upload the shards and their index together again')
    return SampleError('missing-file', f'{path}: {quoted(code or e)} from {where}')  # the store's words, bounded


_CONTENT_RANGE = re.compile(r'bytes (\d+)-(\d+)/(\d+|\*)', re.ASCII)


def whole_size(response: dict, ranged: bool) -> int:
    """The object's size as a GET's response says it: its length, or for a ranged GET what follows
    the '/' of ``Content-Range`` (``bytes 0-99/1234``); -1 where the answer does not say ('*', none)."""
    if not ranged:
        return response.get('ContentLength', -1)
    found = _CONTENT_RANGE.fullmatch(response.get('ContentRange') or '')
    return int(found[3]) if found and found[3] != '*' else -1


def refused_answer(response: dict, path: str, offset: int | None, size: int | None, max_bytes: int):
    """``SampleError`` for a GET's answer that must not be read: longer than ``max_bytes``, or, for
    a ranged GET, not exactly the ``size`` bytes from ``offset`` (a store that sends the whole object
    or another range: its ``Content-Range`` must say the range asked, and only a range from the first
    byte may come without one, as the whole object); None for one to read."""
    length = response.get('ContentLength')
    if length is not None and length > max_bytes:
        return SampleError('too-large', f'{path}: {length} bytes, more than the {max_bytes} it may have')
    if offset is None:
        return None
    said = response.get('ContentRange')
    found = _CONTENT_RANGE.fullmatch(said or '')
    asked = (offset, offset + size - 1)
    if (length in (None, size) and (found is None and said is None and offset == 0 or found is not None
                                    and (int(found[1]), int(found[2])) == asked
                                    and (found[3] == '*' or int(found[3]) > asked[1]))):
        return None
    what = f'Content-Range {said[:80]!r}' if said else 'no Content-Range'
    return SampleError('missing-file', f'{path}: bytes {asked[0]}-{asked[1]} asked, and the store answered '
                                       f'{length} bytes with {what}: not that range')


def warn_no_etag(store: ObjectFolder) -> None:
    """Say once a process (and bucket) that ``store`` answers without ETags: a shard replaced by one
    of the same size cannot be told from the one indexed there."""
    _warn_no_etag(os.getpid(), store.cluster.endpoint, store.bucket, store.describe())


@functools.lru_cache(maxsize=None)
def _warn_no_etag(pid: int, endpoint: str, bucket: str, described: str) -> None:
    logger.warning('%s answers without an ETag: a tar shard or index replaced in the bucket by one of the same size '
                   'cannot be detected on this store (only a changed size is); upload the shards and their index '
                   'together, or use a store that sends ETags', described)


def fetch_to_cache(url: str, ceph_config: str | None, cache_dir=None) -> str:
    """A local copy of the object ``url`` (an index: data.json, a parquet table, tar_index.arrow),
    fetched once per machine into ``cache_dir`` and fetched again only when the object changes
    (its ETag); ranks and workers of a machine that ask at once wait for one download."""
    folder, name = url.rstrip('/').rsplit('/', 1)
    store = ObjectFolder(folder, ceph_config)
    store.check()
    key = store.key(url)
    try:
        with request_deadline(f'{url} (HEAD)', 'the answer', store.describe()):
            head = store.client().head_object(Bucket=store.bucket, Key=key)
    except SampleError as e:  # too slow
        raise StorageConfigError(str(e)) from None
    except Exception:  # botocore's ClientError for a missing key, among others
        raise StorageConfigError(f'{url}: no such object in {store.describe()}') from None
    etag = head.get('ETag')
    if not etag:  # a changed copy is then known by its size and time only
        warn_no_etag(store)
        etag = f'no ETag: {head.get("ContentLength")} bytes, {head.get("LastModified")}'
    cache = Path(cache_dir or DEFAULT_CACHE) / hashlib.sha1(url.encode()).hexdigest()[:16] / name
    stamp = cache.parent / f'.{name}.etag'

    def current() -> str | None:
        with contextlib.suppress(OSError):
            if cache.exists() and kept(stamp, max_bytes=1024) and stamp.read_text() == etag:
                return str(cache)
        return None

    def download(temp: Path) -> None:
        # What the stamp will vouch for goes first: a download killed before its rename leaves no copy to trust.
        for old in (cache, shard_etags_path(cache)):  # another index: its shards are seen afresh
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        download_parts(store, url, head.get('ContentLength'), head.get('ETag'), temp)
        with written_aside(stamp) as stamp_temp:
            stamp_temp.write_text(etag)

    # (the stamp's own leftovers, and the downloads of builds before this one)
    leftovers = [f'.{glob.escape(name)}.etag.tmp-*', f'.{glob.escape(name)}.download-*']
    return build_once(cache, current, download, leftovers=leftovers)


def download_parts(store: ObjectFolder, url: str, size, etag: str | None, temp: Path) -> None:
    """The object ``url`` of ``size`` bytes (its HEAD's) written to ``temp`` in ranged GETs of at
    most ``MAX_SPAN`` bytes, only while it keeps ``etag``: each GET ends by the request deadline, where
    boto3's ``download_file`` had only the idle read timeout (a trickling store held a start for ever)."""
    if not isinstance(size, int) or size < 0:
        raise StorageConfigError(f'{url}: {store.describe()} says no size of it (no Content-Length): cannot be fetched')
    with open(temp, 'wb') as out:
        for offset in range(0, size, MAX_SPAN):
            try:
                out.write(store.read(url, offset, min(MAX_SPAN, size - offset), etag or None))
            except SampleError as e:  # too slow, cut off, missing
                raise StorageConfigError(f'{url}: cannot be fetched: {e}') from None


def shard_etags_path(index_copy) -> Path:
    """Where a machine keeps the ETags it first saw of the shards of a fetched tar index."""
    index_copy = Path(index_copy)
    return index_copy.with_name(f'.{index_copy.name}.shard-etags.json')
