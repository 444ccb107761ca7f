"""Members of tar shards in a bucket, read in place (``ObjectTarMembers``): located by the tar
member index fetched once per machine, each read a ranged GET, a batch's neighbours coalesced into
one (``member_spans``), a shard checked against the index and against the ETag the machine first
saw (``first_seen_etag``) from its first read's own answer; a store that sends no ETag is said
once (``warn_no_etag``): there only a changed size is detected.
"""
from __future__ import annotations

import contextlib
import json

from src.datasets.errors import SampleError
from src.datasets.storage.files import MAX_FILE_BYTES
from src.datasets.storage.object_fetch import MAX_GAP, MAX_SPAN, InFlight, Kept, fetch_within
from src.datasets.storage.object_store import ObjectFolder, fetch_to_cache, shard_etags_path, warn_no_etag
from src.datasets.storage.sidecars import held, read_json, written_aside
from src.datasets.storage.storage import Reader, check_size


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
    caption file, side by side in its tar) in one GET; told them ahead, it fetches them while the
    current ones are read. Paths are those the dataset makes under the index's folder
    (``<folder>/raw/x.jpg`` for ``<folder>/tar_index.arrow``). A shard whose size or ETag in the
    bucket is not the one indexed and first seen is refused on its first read, from that GET's own
    answer (no request of its own)."""

    remote = True

    def __init__(self, index_url: str, ceph_config: str | None, cache_dir=None):
        from src.datasets.storage.tar_index import TarMemberIndex
        self.folder = index_url.rstrip('/').rsplit('/', 1)[0]
        self.store = ObjectFolder(self.folder, ceph_config)
        self.index_copy = fetch_to_cache(index_url, ceph_config, cache_dir)
        self.index = TarMemberIndex(self.index_copy)
        self._checked = {}  # tar -> its ETag, from its first read in this process
        self._kept, self._ahead = Kept(), InFlight()

    def __getstate__(self) -> dict:
        return {**self.__dict__, '_kept': Kept(), '_ahead': InFlight()}

    def read(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        kept = self._ahead.take(self._kept, path)
        if kept is not None:
            return check_size(kept, path, max_bytes)
        tar, expected_size, offset, size = self._locate(path)
        check_size(b'', path, max_bytes, size)
        data = self._read_shard(tar, expected_size, offset, size)
        if len(data) != size:
            raise SampleError('missing-file', f'{path}: {len(data)} of its {size} bytes came from '
                                              f'{self.folder}/{tar}')
        return data

    def prefetch(self, samples, ahead: bool = False) -> None:
        """The members of ``samples`` fetched at once, in threads, and kept for their reads: a
        batch's members that lie in one shard within :data:`MAX_GAP` of each other by one ranged
        GET. ``ahead``: read later (a reader's next block), so started and not waited for. What
        cannot be fetched so is read on its own, as without it."""
        paths, held = self._ahead.missing(self._kept, (path for sample in samples for path in sample), ahead)
        located = {}  # the batch's members together: neighbours of one shard share a GET (BlockShuffleSampler)
        for path in paths:
            with contextlib.suppress(SampleError):  # its read says why
                located[path] = self._locate(path)
        spans = member_spans(located)
        self.store.ready()
        if ahead:
            room = self._ahead.room(self._kept)
            for span in spans:
                room -= span[3] - span[2]
                if room < 0:
                    break
                self._ahead.start(self._fetch_members, span, [member[0] for member in span[4]], span[3] - span[2])
            return
        room = self._kept.limit - held - self._ahead.claimed
        for span, data in fetch_within(self._fetch_span, spans, room, size=lambda span: span[3] - span[2]):
            for path, member in self._members(span, data):
                self._kept.put(path, member)

    def _fetch_span(self, span) -> bytes | None:
        """The bytes of ``span`` (a :func:`member_spans` range), or None where they cannot be had."""
        tar, tar_size, low, high, _ = span
        with contextlib.suppress(SampleError):  # its members' reads say why
            return self._read_shard(tar, tar_size, low, high - low)
        return None

    def _fetch_members(self, span) -> list[tuple[str, bytes]]:
        return self._members(span, self._fetch_span(span))

    @staticmethod
    def _members(span, data: bytes | None) -> list[tuple[str, bytes]]:
        """``(path, bytes)`` of the members of ``span`` out of its fetched ``data`` (none when it fell short)."""
        _, _, low, high, members = span
        if data is None or len(data) != high - low:
            return []
        return [(path, data[offset - low:offset - low + size]) for path, offset, size in members]

    def _locate(self, path: str) -> tuple[str, int, int, int]:
        """(tar, its indexed size, data offset, data size) of the member ``path``, or ``SampleError``."""
        if not path.startswith(self.folder + '/'):
            raise SampleError('missing-file', f'{path}: not under the folder of its tar index, {self.folder}')
        found = self.index.locate(path[len(self.folder) + 1:])
        if found is None:
            raise SampleError('missing-file', f'{path}: no such member in the tars indexed in {self.folder}')
        return found

    def _read_shard(self, tar: str, expected_size: int, offset: int, size: int) -> bytes:
        """``size`` bytes of shard ``tar`` from ``offset``: after its first read in this process,
        only while its ETag is the one that read saw (``If-Match``); that first read checks the
        shard from its own answer (:meth:`_check`)."""
        shard = f'{self.folder}/{tar}'
        if size <= 0:  # an empty member (an empty caption file): no range to ask for ('bytes=X-(X-1)')
            return b''
        if tar in self._checked:
            return self.store.read(shard, offset, size, self._checked[tar])
        try:
            data, actual, etag = self.store.read_part(shard, offset, size)
        except SampleError as e:
            if e.reason not in ('too-large', 'too-slow'):  # a shard shorter than indexed refuses the range: say that
                self._check(tar, expected_size, *self.store.head(shard))
            raise
        if actual < 0:  # a store that leaves the size unsaid ('bytes 0-9/*'): asked for it
            actual, etag = self.store.head(shard)
        self._check(tar, expected_size, actual, etag)
        return data

    def _check(self, tar: str, expected_size: int, actual: int, etag: str) -> None:
        """Shard ``tar`` as the bucket has it (``actual`` bytes, ``etag``) against the index (its
        size) and against the ETag this machine first saw (a shard replaced by one of the same size
        has another; a store that sends none is said once, and only the size is checked)."""
        from src.datasets.storage.tar_index import StaleIndexError
        shard = f'{self.folder}/{tar}'
        if actual != expected_size:
            raise StaleIndexError(f'{shard} has {actual} bytes in the bucket, {expected_size} when it was '
                                  'indexed: upload the shards and their index together again')
        if not etag:
            warn_no_etag(self.store)
        # (the first of this process's threads to check it wins here too, where the cache is read-only)
        first = self._checked.setdefault(tar, first_seen_etag(self.index_copy, tar, etag))
        if first != etag:
            raise StaleIndexError(f'{shard} was replaced in the bucket after this machine first read it (its ETag '
                                  f'was {first}, is {etag}; the same {actual} bytes): upload the shards and their '
                                  'index together again')


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

