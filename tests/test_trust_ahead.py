"""A hostile or broken object store against the reads of a shard's parts and the fetches started
ahead (``ObjectFolder.read_part``, ``InFlight``): an answer that is not the range asked is refused
before its body is read, never taken as the part; what is fetched ahead stays within the bound of
what a process keeps; a sampler's own hint never fails a batch."""
from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flaky_proxy import LocalServer

from src.datasets.errors import SampleError
from src.datasets.storage.object_fetch import Kept
from src.datasets.storage.object_store import ObjectFolder, whole_size

OBJECT = bytes(range(256)) * 40  # 10240 bytes


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that closed a refused answer's connection


class Store(LocalServer):
    """A tiny S3-like server on 127.0.0.1: ``objects`` by key (``/bucket/key``), ranged GETs
    answered as ``mode`` says: 'ok', 'whole' (200 and the whole object), 'shifted' (another range of
    the same length), 'lying' (a total shorter than the range), 'digit' (a total of a non-ASCII
    digit), 'chunked' (no length: the whole object in chunks)."""

    def __init__(self, objects: dict[str, bytes], mode: str = 'ok'):
        self.objects, self.mode, self.gets = objects, mode, 0
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _head(self, status, headers):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()

            def do_HEAD(self):
                body = store.objects[self.path.split('/', 2)[2]]
                self._head(200, {'ETag': '"e1"', 'Content-Length': str(len(body))})

            def do_GET(self):
                store.gets += 1
                body = store.objects[self.path.split('/', 2)[2]]
                asked = re.fullmatch(r'bytes=(\d+)-(\d+)', self.headers.get('Range') or '')
                if store.mode == 'chunked':
                    self._head(200, {'ETag': '"e1"', 'Transfer-Encoding': 'chunked'})
                    for start in range(0, len(body), 1024):
                        self.wfile.write(b'%x\r\n%s\r\n' % (len(body[start:start + 1024]), body[start:start + 1024]))
                    self.wfile.write(b'0\r\n\r\n')
                    return
                if asked is None or store.mode == 'whole':
                    self._head(200, {'ETag': '"e1"', 'Content-Length': str(len(body))})
                    self.wfile.write(body)
                    return
                low, high = int(asked[1]), int(asked[2])
                if store.mode == 'shifted':
                    low, high = low + 7, high + 7
                total = {'lying': '5', 'digit': '\u00b2'}.get(store.mode, str(len(body)))
                part = body[low:high + 1]
                self._head(206, {'ETag': '"e1"', 'Content-Length': str(len(part)),
                                 'Content-Range': f'bytes {low}-{high}/{total}'})
                self.wfile.write(part)

        super().__init__(Handler, QuietServer)


def folder_of(store: Store, tmp_path) -> ObjectFolder:
    from moto_server import petrel_file
    return ObjectFolder('s3://b/f', petrel_file(tmp_path / 'petreloss.conf', store.url))


@pytest.mark.parametrize('mode', ['whole', 'shifted', 'lying', 'digit'])
def test_a_ranged_get_answered_with_other_bytes_is_refused_naming_the_object(tmp_path, mode):
    """A store that ignores the range (the whole object, maybe huge), sends another range of the
    same length, or says a total that cannot be: a sample error naming the object and the range,
    asked once (another try would get the same), never other bytes taken for the part."""
    with Store({'f/o': OBJECT}, mode) as store:
        folder = folder_of(store, tmp_path)
        before = store.gets
        with pytest.raises(SampleError, match=r's3://b/f/o: bytes 100-109 asked.*not that range') as caught:
            folder.read_part('s3://b/f/o', 100, 10)
        assert caught.value.reason == 'missing-file' and store.gets - before == 1
        store.mode = 'ok'
        assert folder.read_part('s3://b/f/o', 100, 10) == (OBJECT[100:110], len(OBJECT), '"e1"')


def test_a_body_of_unsaid_length_is_read_no_further_than_asked(tmp_path):
    """A store that answers in chunks, with no length: no more than the bound is read."""
    with Store({'f/o': OBJECT}, 'chunked') as store:
        folder = folder_of(store, tmp_path)
        with pytest.raises(SampleError, match='s3://b/f/o: more than the 1000 bytes') as caught:
            folder.read_part('s3://b/f/o', max_bytes=1000)
        assert caught.value.reason == 'too-large'
        assert folder.read_part('s3://b/f/o')[0] == OBJECT
        # a ranged GET answered so: refused (no Content-Range), not read
        with pytest.raises(SampleError, match='bytes 10-19 asked, .* no Content-Range'):
            folder.read_part('s3://b/f/o', 10, 10)
        assert folder.read_part('s3://b/f/o', 0, len(OBJECT))[0] == OBJECT  # the whole object, from its first byte


def test_a_content_range_of_other_digits_says_no_size():
    assert whole_size({'ContentRange': 'bytes 0-9/\u00b2', 'ContentLength': 10}, ranged=True) == -1
    assert whole_size({'ContentRange': 'bytes 0-9/\u0661\u0662', 'ContentLength': 10}, ranged=True) == -1
    assert whole_size({'ContentRange': 'bytes 0-9/12', 'ContentLength': 10}, ranged=True) == 12


def fetched_ahead(folder: ObjectFolder) -> list[int]:
    """The sizes of what ``folder``'s fetches ahead brought, recorded as they come."""
    sizes, fetch = [], folder._fetch_ahead

    def recording(job):
        got = fetch(job)
        sizes.extend(len(data) for _, data in got)
        return got
    folder._fetch_ahead = recording
    return sizes


def test_fetches_ahead_bring_no_more_than_the_bound_whatever_the_objects_sizes(tmp_path):
    """The first object small, the next ones far larger: fetched ahead on the small one's guess,
    they would all be held at once. Each fetch brings at most what it claimed; the rest is read
    when its turn comes, from the store, whole."""
    objects = {'f/small': b's' * 1000, **{f'f/big{i}': bytes([i]) * 50_000 for i in range(40)}}
    with Store(objects) as store:
        folder = folder_of(store, tmp_path)
        folder._kept = Kept(limit=200_000)
        folder.prefetch([['s3://b/f/small']])
        sizes = fetched_ahead(folder)
        paths = [f's3://b/f/big{i}' for i in range(40)]
        folder.prefetch([[path] for path in paths], ahead=True)
        assert folder._ahead.claimed <= folder._kept.limit
        folder._ahead.settle(folder._kept, paths)  # every fetch ended
        assert sum(sizes) <= folder._kept.limit
        assert all(folder.read(path) == objects[path[len('s3://b/'):]] for path in paths[:3])


def test_fetches_ahead_leave_room_for_what_is_kept(tmp_path):
    """What this batch fetched fills the bound: the next block's fetches start only as far as the
    bound leaves room beside it (their bytes wait in the futures, where nothing pushes them out)."""
    objects = {f'f/o{i}': bytes([i]) * 10_000 for i in range(30)}
    with Store(objects) as store:
        folder = folder_of(store, tmp_path)
        folder._kept = Kept(limit=100_000)
        folder.prefetch([[f's3://b/f/o{i}'] for i in range(8)])  # this batch: 80 000 bytes kept
        assert folder._kept.bytes == 80_000
        folder.prefetch([[f's3://b/f/o{i}'] for i in range(8, 30)], ahead=True)
        assert folder._kept.bytes + folder._ahead.claimed <= folder._kept.limit
        assert folder._ahead.claimed == 20_000  # as much as the room left
        assert [folder.read(f's3://b/f/o{i}') for i in range(30)] == [objects[f'f/o{i}'] for i in range(30)]



class Located:
    """A tar member index of one shard, 'members/<n>' at n * 100 000, 10 000 bytes each (a GET each)."""

    def locate(self, relative: str):
        number = int(relative.rsplit('/', 1)[1])
        return '0.tar', 2_000_000, number * 100_000, 10_000


def test_a_shards_members_fetched_ahead_leave_room_for_what_is_kept(tmp_path):
    from src.datasets.storage.object_fetch import InFlight
    from src.datasets.storage.object_tars import ObjectTarMembers
    shard = bytes(range(250)) * 8_000
    with Store({'f/0.tar': shard}) as store:
        members = ObjectTarMembers.__new__(ObjectTarMembers)
        members.folder, members.store, members.index = 's3://b/f', folder_of(store, tmp_path), Located()
        members._checked, members._kept, members._ahead = {'0.tar': '"e1"'}, Kept(limit=100_000), InFlight()
        members._kept.put('s3://b/f/held', b'h' * 80_000)  # this batch's, not read yet
        members.prefetch([[f's3://b/f/members/{n}'] for n in range(20)], ahead=True)
        assert members._kept.bytes + members._ahead.claimed <= members._kept.limit
        assert members._ahead.claimed == 20_000
        assert members.read('s3://b/f/members/19') == shard[1_900_000:1_910_000]


def test_two_first_reads_of_a_shard_that_see_two_etags_are_refused_where_the_cache_keeps_none(monkeypatch):
    """Two threads of a process read a shard's first parts at once, and it is replaced between
    their GETs; the cache is read-only, so the machine keeps no first ETag: the second is still
    refused, not mixed with the first's members."""
    from src.datasets.storage import object_tars
    from src.datasets.storage.tar_index import StaleIndexError
    monkeypatch.setattr(object_tars, 'first_seen_etag', lambda index_copy, tar, etag: etag)  # nothing kept
    members = object_tars.ObjectTarMembers.__new__(object_tars.ObjectTarMembers)
    members.folder, members.index_copy, members._checked = 's3://b/f', '/nonexistent/tar_index.arrow', {}
    members._check('0.tar', 100, 100, '"e1"')
    with pytest.raises(StaleIndexError, match=r's3://b/f/0.tar was replaced .*"e1".*"e2"'):
        members._check('0.tar', 100, 100, '"e2"')
    assert members._checked == {'0.tar': '"e1"'}
    members._check('0.tar', 100, 100, '"e1"')


def test_a_samplers_own_hint_out_of_range_is_passed_over():
    from src.datasets.samplers.draws import Ahead, Draw
    from src.datasets.text2image.sample_draws import ahead_of
    assert ahead_of([Ahead(3, (4, 5, 10 ** 12, -1, 'x', 2.5, 9))], 10) == [4, 5, 9]
    assert ahead_of([Draw(3, 0, 0, ahead=7)], 10) == []  # not a sequence of indices
    assert ahead_of([Draw(3, 0, 0, ahead=(1, 2))], 10) == [1, 2]
    assert ahead_of([], 10) == [] and ahead_of([3], 10) == []


def test_an_empty_member_reads_as_no_bytes_without_a_request(tmp_path):
    """An empty member (an empty caption file in a tar) has no range to ask for: a GET of
    'bytes=X-(X-1)' is answered with the whole shard, which is refused. It reads as b'', alone or
    in a batch, and asks the store nothing."""
    from src.datasets.storage.object_fetch import InFlight
    from src.datasets.storage.object_tars import ObjectTarMembers

    class Empty:
        def locate(self, relative: str):
            return '0.tar', 2_000_000, 1_000, 0

    with Store({'f/0.tar': bytes(2_000_000)}) as store:
        members = ObjectTarMembers.__new__(ObjectTarMembers)
        members.folder, members.store, members.index = 's3://b/f', folder_of(store, tmp_path), Empty()
        members._checked, members._kept, members._ahead = {}, Kept(), InFlight()
        assert members.read('s3://b/f/a.txt') == b''
        members.prefetch([['s3://b/f/b.txt']])
        assert members.read('s3://b/f/b.txt') == b'' and store.gets == 0
