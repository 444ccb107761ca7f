"""Objects in S3-protocol storage (Ceph's gateway, MinIO, any cloud), read as upstream reads ceph
through petrel_client: ``ceph_config`` is petrel-client's INI file and folders are
``s3://bucket/prefix`` (the default cluster) or ``<cluster>:s3://bucket/prefix``.

The client is boto3's (in DataLoader workers, obstore's where it is installed: ``obstore_client``),
made lazily in each process (clients are not fork-safe), with bounded retries in botocore's
standard mode (throttling, 5xx, dropped connections) and timeouts on connect and read, so no
request hangs. A missing object is one sample's ``missing-file``; a wrong
endpoint, wrong keys or a missing bucket fail at start-up (:meth:`ObjectFolder.check`) naming the
setting. Secrets are never part of a message: only the cluster, endpoint and bucket are.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from pathlib import Path

from src.datasets.errors import SampleError
from src.datasets.extras import require
from src.datasets.storage.files import MAX_FILE_BYTES, unsafe_path
from src.datasets.storage.sidecars import build_once, held, kept, read_json, written_aside
from src.datasets.storage.obstore_client import object_head, read_object, worker_store
from src.datasets.storage.redact import redact
from src.datasets.storage.storage import Reader, check_size

# The settings and the fetching ahead live in modules of their own; their names stay importable here.
from src.datasets.storage.object_config import (_FOLDER, Cluster, StorageConfigError, _environment_cluster,  # noqa: F401
                                        is_object_url, read_petrel_config)
from src.datasets.storage.object_fetch import MAX_GAP, MAX_SPAN, PREFETCH_THREADS, Kept, fetch_within  # noqa: F401

CONNECT_TIMEOUT = 10  # seconds
READ_TIMEOUT = 60
MAX_ATTEMPTS = 5  # per request, botocore's standard retry mode (with backoff)
BODY_ATTEMPTS = 3  # a body cut off mid-read is fetched again this many times
DEFAULT_CACHE = Path.home() / '.cache' / 't2i-data' / 'objects'


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
        self._kept = Kept()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_client'] = state['_pid'] = None  # a worker makes its own client
        state['_kept'] = Kept()
        return state

    def describe(self) -> str:
        return f'{self.folder} (endpoint {redact(self.cluster.endpoint)}, bucket {self.bucket})'

    def client(self):
        if self._client is None or self._pid != os.getpid():
            boto3 = require('boto3')
            from botocore.config import Config
            self._client = boto3.session.Session().client(
                's3', endpoint_url=self.cluster.endpoint, aws_access_key_id=self.cluster.access_key,
                aws_secret_access_key=self.cluster.secret_key,
                config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                              retries={'max_attempts': MAX_ATTEMPTS, 'mode': 'standard'},
                              s3={'addressing_style': 'path'}, max_pool_connections=self.connections))
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
            client.head_bucket(Bucket=self.bucket)
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
        store = worker_store(self.cluster, self.bucket)
        if store is not None:
            return object_head(store, self.key(path), path, self.describe())
        from botocore.exceptions import ClientError
        try:
            response = self.client().head_object(Bucket=self.bucket, Key=self.key(path))
        except ClientError:
            raise SampleError('missing-file', f'{path}: no such object in {self.describe()}') from None
        return response['ContentLength'], response.get('ETag', '')

    def prefetch(self, samples) -> None:
        """The objects of ``samples`` fetched at once, in threads, and kept for their reads: as many
        as the bound of what is kept leaves room for, the rest read one by one."""
        paths, held = [], 0
        for path in dict.fromkeys(path for sample in samples for path in sample):
            size = self._kept.touch(path)
            if size is None:
                paths.append(path)
            else:
                held += size
        self.ready()
        for path, data in fetch_within(self._try_read, paths, self._kept.limit - held, guess=self._kept.largest):
            self._kept.put(path, data)

    def _try_read(self, path: str) -> bytes | None:
        try:
            data = self.read(path)
        except SampleError:
            return None  # its read says why
        self._kept.largest = max(self._kept.largest, len(data))  # also of what did not fit
        return data

    def read(self, path: str, offset: int | None = None, size: int | None = None, etag: str | None = None, *,
             max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The object ``path``, or its ``size`` bytes from ``offset`` (one ranged GET); one of more
        than ``max_bytes`` is refused from its announced length, not read; with ``etag``, only while
        the object still has it (``If-Match``: ``StaleIndexError`` once it was replaced)."""
        from botocore.exceptions import BotoCoreError, ClientError
        if offset is None:
            kept = self._kept.take(path)
            if kept is not None:
                return check_size(kept, path, max_bytes)
        key = self.key(path)
        store = worker_store(self.cluster, self.bucket)  # a DataLoader worker's lighter client
        if store is not None:
            return read_object(store, key, path, self.describe(), offset, size, BODY_ATTEMPTS, etag=etag,
                               max_bytes=max_bytes)
        ranged = {} if offset is None else {'Range': f'bytes={offset}-{offset + size - 1}'}
        if etag:
            ranged['IfMatch'] = etag
        for attempt in range(BODY_ATTEMPTS):
            try:
                response = self.client().get_object(Bucket=self.bucket, Key=key, **ranged)
                if response.get('ContentLength', 0) > max_bytes:
                    response['Body'].close()
                    raise SampleError('too-large', f'{path}: {response["ContentLength"]} bytes, more than the '
                                                   f'{max_bytes} it may have')
                data = response['Body'].read()
                if len(data) != response.get('ContentLength', len(data)):
                    raise SampleError('missing-file', f'{path}: {len(data)} of {response["ContentLength"]} bytes')
                return data
            except ClientError as e:
                code = e.response.get('Error', {}).get('Code', '')
                if code in ('NoSuchKey', '404'):
                    raise SampleError('missing-file', f'{path}: no such object in {self.describe()}') from None
                if code in ('PreconditionFailed', '412'):
                    from src.datasets.storage.tar_index import StaleIndexError
                    raise StaleIndexError(f'{path}: replaced in {self.describe()} while it was being read (its '
                                          f'ETag is no longer {etag}): upload the shards and their index together '
                                          'again') from None
                raise SampleError('missing-file', f'{path}: {code or e} from {self.describe()}') from None
            except (BotoCoreError, SampleError) as e:  # cut off mid-read, or a timeout after the retries
                if getattr(e, 'reason', None) == 'too-large':
                    raise
                if attempt == BODY_ATTEMPTS - 1:
                    raise SampleError('missing-file', f'{path}: cannot be read from {self.describe()} '
                                                      f'({type(e).__name__})') from None
        raise AssertionError('unreachable')


def fetch_to_cache(url: str, ceph_config: str | None, cache_dir=None) -> str:
    """A local copy of the object ``url`` (an index: data.json, a parquet table, tar_index.arrow),
    fetched once per machine into ``cache_dir`` and fetched again only when the object changes
    (its ETag); ranks and workers of a machine that ask at once wait for one download."""
    folder, name = url.rstrip('/').rsplit('/', 1)
    store = ObjectFolder(folder, ceph_config)
    store.check()
    key = store.key(url)
    try:
        etag = store.client().head_object(Bucket=store.bucket, Key=key)['ETag']
    except Exception:  # botocore's ClientError for a missing key, among others
        raise StorageConfigError(f'{url}: no such object in {store.describe()}') from None
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
        store.client().download_file(store.bucket, key, str(temp))
        with written_aside(stamp) as stamp_temp:
            stamp_temp.write_text(etag)

    # (the stamp's own leftovers, and the downloads of builds before this one)
    leftovers = [f'.{glob.escape(name)}.etag.tmp-*', f'.{glob.escape(name)}.download-*']
    return build_once(cache, current, download, leftovers=leftovers)


def shard_etags_path(index_copy) -> Path:
    """Where a machine keeps the ETags it first saw of the shards of a fetched tar index."""
    index_copy = Path(index_copy)
    return index_copy.with_name(f'.{index_copy.name}.shard-etags.json')


def first_seen_etag(index_copy, tar: str, etag: str) -> str:
    """The ETag this machine first saw of shard ``tar`` (``etag`` now, if it had seen none: kept)."""
    path = shard_etags_path(index_copy)
    with held(path, required=False):  # the machine's processes add theirs one at a time
        known = read_json(path)  # never a FIFO or a link planted there
        if not isinstance(known, dict):
            known = {}
        seen = known.get(tar)
        if isinstance(seen, str) and seen:
            return seen
        known[tar] = etag
        with contextlib.suppress(OSError), written_aside(path) as temp:  # not kept (a read-only cache): this run only
            temp.write_text(json.dumps(known))
    return etag


class ObjectTarMembers(Reader):
    """Members of tar shards in a bucket, located by their tar member index (fetched once per
    machine): each read is one ranged GET of exactly the member's bytes. Told which samples come
    next (:meth:`prefetch`), it fetches them at once, in threads, a sample's members (its image and
    caption file, side by side in its tar) in one GET. Paths are those the dataset makes under the
    index's folder (``<folder>/raw/x.jpg`` for ``<folder>/tar_index.arrow``). A shard whose size in
    the bucket is not the indexed one is refused on its first read."""

    remote = True

    def __init__(self, index_url: str, ceph_config: str | None, cache_dir=None):
        from src.datasets.storage.tar_index import TarMemberIndex
        self.folder = index_url.rstrip('/').rsplit('/', 1)[0]
        self.store = ObjectFolder(self.folder, ceph_config)
        self.index_copy = fetch_to_cache(index_url, ceph_config, cache_dir)
        self.index = TarMemberIndex(self.index_copy)
        self._checked = {}  # tar -> its ETag, from its first use in this process
        self._kept = Kept()

    def __getstate__(self) -> dict:
        return {**self.__dict__, '_kept': Kept()}

    def read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        kept = self._kept.take(path)
        if kept is not None:
            return check_size(kept, path, max_bytes)
        tar, expected_size, offset, size = self._locate(path)
        check_size(b'', path, max_bytes, size)
        shard, etag = self._shard(tar, expected_size)
        data = self.store.read(shard, offset, size, etag)
        if len(data) != size:
            raise SampleError('missing-file', f'{path}: {len(data)} of its {size} bytes came from '
                                              f'{self.folder}/{tar}')
        return data

    def prefetch(self, samples) -> None:
        """The members of ``samples`` fetched at once, in threads, and kept for their reads: a
        batch's members that lie in one shard within :data:`MAX_GAP` of each other by one ranged
        GET. What cannot be fetched so is read on its own, as without it."""
        located, held = {}, 0  # the batch's members together: neighbours of one shard share a GET (BlockShuffleSampler)
        for sample in samples:
            for path in sample:
                size = self._kept.touch(path)
                if size is not None:
                    held += size
                    continue
                with contextlib.suppress(SampleError):  # its read says why
                    located[path] = self._locate(path)
        spans = member_spans(located)
        shards = {}  # first use of a shard: its size checked (a HEAD) here, once
        for tar, size, *_ in spans:
            if tar not in shards:
                try:
                    shards[tar] = self._shard(tar, size)
                except SampleError:
                    shards[tar] = None  # not in the bucket: its reads say so
        spans = [span for span in spans if shards[span[0]] is not None]
        self.store.ready()

        def fetch(span):
            tar, _, low, high, _ = span
            shard, etag = shards[tar]
            with contextlib.suppress(SampleError):
                return self.store.read(shard, low, high - low, etag)

        for (_, _, low, high, members), data in fetch_within(fetch, spans, self._kept.limit - held,
                                                             size=lambda span: span[3] - span[2]):
            if len(data) == high - low:
                for path, offset, size in members:
                    self._kept.put(path, data[offset - low:offset - low + size])

    def _locate(self, path: str) -> tuple[str, int, int, int]:
        """(tar, its indexed size, data offset, data size) of the member ``path``, or ``SampleError``."""
        if not path.startswith(self.folder + '/'):
            raise SampleError('missing-file', f'{path}: not under the folder of its tar index, {self.folder}')
        found = self.index.locate(path[len(self.folder) + 1:])
        if found is None:
            raise SampleError('missing-file', f'{path}: no such member in the tars indexed in {self.folder}')
        return found

    def _shard(self, tar: str, expected_size: int) -> tuple[str, str]:
        """The shard's path and ETag, checked on first use: its size against the index, its ETag
        against the one this machine first saw (a shard replaced by one of the same size has another)."""
        from src.datasets.storage.tar_index import StaleIndexError
        shard = f'{self.folder}/{tar}'
        if tar not in self._checked:
            actual, etag = self.store.head(shard)
            if actual != expected_size:
                raise StaleIndexError(f'{shard} has {actual} bytes in the bucket, {expected_size} when it was '
                                      'indexed: upload the shards and their index together again')
            first = first_seen_etag(self.index_copy, tar, etag)
            if first != etag:
                raise StaleIndexError(f'{shard} was replaced in the bucket after this machine first read it (its ETag '
                                      f'was {first}, is {etag}; the same {actual} bytes): upload the shards and their '
                                      'index together again')
            self._checked[tar] = etag
        return shard, self._checked[tar]


def member_spans(located: dict[str, tuple[str, int, int, int]]) -> list[tuple]:
    """The byte ranges that fetch the ``located`` members ({path: (tar, tar size, offset, size)}):
    members of one tar within :data:`MAX_GAP` of each other share a range of at most
    :data:`MAX_SPAN` bytes. Each range is (tar, tar size, first byte, end, [(path, offset, size), ...])."""
    spans = []
    for path, (tar, tar_size, offset, size) in sorted(located.items(), key=lambda item: (item[1][0], item[1][2])):
        if (spans and spans[-1][0] == tar and offset - spans[-1][3] <= MAX_GAP
                and offset + size - spans[-1][2] <= MAX_SPAN):
            spans[-1][3] = max(spans[-1][3], offset + size)
            spans[-1][4].append((path, offset, size))
        else:
            spans.append([tar, tar_size, offset, offset + size, [(path, offset, size)]])
    return [tuple(span) for span in spans]

