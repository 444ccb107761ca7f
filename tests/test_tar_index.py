"""The tar member index: building it (the --no-extract step: parallel, resumable, safe), and
reading members through it."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile

import pyarrow.ipc as ipc
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.storage.tar_index import INDEX_NAME, StaleIndexError, TarMemberIndex
from src.prepare import tar_headers
from src.prepare.tar_headers import scan_tar, scan_tar_headers, scan_tar_with_tarfile
from src.prepare.tar_members import INDEX_MEMBERS, shard_index_path
from src.prepare.tar_headers import TarJob
from src.prepare.runner import prepare

LONG_NAME = 'deep/' + 'nested_folder_' * 6 + '/' + 'x' * 120 + '.jpg'  # > 100 chars: long-name header
UNICODE_NAME = 'ünïcødé/日本語の画像_🖼.png'


def payload(name: str, size: int = 700) -> bytes:
    """Distinct bytes per name, of a size that is not a multiple of the tar block."""
    seed = name.encode('utf-8')
    return (seed * (size // len(seed) + 1))[:size]


def write_tar(path, members: dict[str, bytes], fmt=tarfile.PAX_FORMAT) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, 'w', format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def index_tars(root, jobs: list[TarJob], num_processes: int = 1):
    """The preparation run with the member-index step (and no dataset index to build)."""
    report = prepare('test', str(root), jobs, sorted({job.dest for job in jobs}), lambda files, report: None,
                     step=INDEX_MEMBERS, num_processes=num_processes)
    assert not report.index_error and not report.index_skipped, report.summary()
    return report


def open_index(root) -> TarMemberIndex:
    return TarMemberIndex.open(os.path.join(root, INDEX_NAME))


def make_shards(root, n_shards=4, per_shard=5) -> tuple[list[TarJob], dict[str, bytes]]:
    """``n_shards`` tars under root/raw/<sub>/, extracted (in the dataset's terms) to images/."""
    jobs, expected = [], {}
    for s in range(n_shards):
        members = {f'{s:03d}/{i:04d}.jpg': payload(f'{s}-{i}', 300 + 97 * i) for i in range(per_shard)}
        name = f'raw/part{s % 2}/{s:05d}.tar'
        write_tar(os.path.join(root, name), members)
        jobs.append(TarJob(str(root), name, 'images'))
        expected.update({f'images/{member}': data for member, data in members.items()})
    return jobs, expected


@pytest.mark.parametrize('fmt', [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_reads_exact_bytes_of_nested_long_and_unicode_names(tmp_path, fmt):
    members = {'a.jpg': payload('a'), 'sub/dir/b.json': b'{"caption": "x"}', 'empty.txt': b'',
               './dot/c.jpg': payload('c'), LONG_NAME: payload('long', 5000), UNICODE_NAME: payload('uni', 1)}
    write_tar(tmp_path / 'raw' / '0.tar', members, fmt)
    report = index_tars(tmp_path, [TarJob(str(tmp_path), 'raw/0.tar', 'raw')])
    assert report.tars['raw/0.tar']['members'] == len(members) and report.exit_code() == 0

    index = open_index(tmp_path)
    assert len(index) == len(members)
    for name, data in members.items():
        path = os.path.normpath(f'raw/{name}')
        assert path in index and index.read(path) == data
    assert sorted(index.paths()) == sorted(os.path.normpath(f'raw/{n}') for n in members)
    # the dataset names files as os.path.join(image_folder, image_file)
    assert index.read(index.relpath(str(tmp_path / 'raw' / LONG_NAME))) == members[LONG_NAME]
    assert 'raw/absent.jpg' not in index
    with pytest.raises(SampleError, match='absent.jpg') as err:
        index.read('raw/absent.jpg')
    assert err.value.reason == 'missing-file'


def test_parallel_build_equals_sequential(tmp_path):
    jobs, expected = make_shards(tmp_path / 'a')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    index_tars(tmp_path / 'a', jobs, num_processes=1)
    index_tars(tmp_path / 'b', [TarJob(str(tmp_path / 'b'), j.name, j.dest) for j in jobs], num_processes=2)
    tables = [ipc.open_file(str(tmp_path / r / INDEX_NAME)).read_all() for r in 'ab']
    assert tables[0].equals(tables[1]) and tables[0].num_rows == len(expected)
    index = open_index(tmp_path / 'b')
    assert {p: index.read(p) for p in expected} == expected


def test_resume_skips_unchanged_tars_and_redoes_a_changed_one(tmp_path):
    jobs, expected = make_shards(tmp_path)
    index_tars(tmp_path, jobs)
    shard_files = {job.name: shard_index_path(str(tmp_path), job.name) for job in jobs}
    stamps = {name: os.stat(path).st_mtime_ns for name, path in shard_files.items()}

    changed = {'001/new.jpg': payload('new', 1234), '001/0000.jpg': payload('changed', 10)}
    write_tar(os.path.join(tmp_path, jobs[1].name), changed)
    second = index_tars(tmp_path, jobs)
    assert sorted(second.skipped_done) == sorted(j.name for j in jobs if j is not jobs[1])
    assert {n: os.stat(p).st_mtime_ns for n, p in shard_files.items() if n != jobs[1].name} == \
        {n: t for n, t in stamps.items() if n != jobs[1].name}

    index = open_index(tmp_path)
    expected = {p: d for p, d in expected.items() if not p.startswith('images/001/')}
    expected.update({f'images/{n}': d for n, d in changed.items()})
    assert len(index) == len(expected)
    assert {p: index.read(p) for p in expected} == expected

    combined = os.stat(tmp_path / INDEX_NAME).st_mtime_ns
    assert len(index_tars(tmp_path, jobs).skipped_done) == len(jobs)
    assert os.stat(tmp_path / INDEX_NAME).st_mtime_ns == combined  # nothing new: not rewritten

    # a lost or damaged member index of a finished tar is rebuilt when the index is combined
    os.remove(shard_files[jobs[2].name])
    with open(shard_files[jobs[3].name], 'r+b') as f:
        f.write(b'garbage')
    assert len(index_tars(tmp_path, jobs).skipped_done) == len(jobs)
    index = open_index(tmp_path)
    assert {p: index.read(p) for p in expected} == expected


def test_truncated_tar_keeps_complete_members_and_names_the_broken_one(tmp_path):
    members = {f'{i}.jpg': payload(str(i), 2000) for i in range(4)}
    write_tar(tmp_path / 'whole.tar', members)
    data = (tmp_path / 'whole.tar').read_bytes()
    with tarfile.open(tmp_path / 'whole.tar') as tar:
        infos = tar.getmembers()
    # cut in the middle of member 2's data, and in the middle of member 3's header
    (tmp_path / 'in_data.tar').write_bytes(data[:infos[2].offset_data + 100])
    (tmp_path / 'in_header.tar').write_bytes(data[:infos[3].offset + 200])
    for cut, complete in (('in_data', 2), ('in_header', 3)):
        found, refused, damage = scan_tar(str(tmp_path / f'{cut}.tar'))
        assert [name for name, _, _ in found] == list(members)[:complete] and not refused
        assert "'2.jpg'" in damage  # the member cut short, or the last one before the cut header
    assert scan_tar(str(tmp_path / 'whole.tar')) == ([(n, i.offset_data, i.size) for n, i in
                                                     zip(members, infos)], [], '')

    (tmp_path / 'not_a_tar.tar').write_bytes(b'garbage' * 100)
    report = prepare('test', str(tmp_path), [TarJob(str(tmp_path), n, 'images') for n in
                                             ('in_data.tar', 'not_a_tar.tar', 'whole.tar')],
                     ['images'], lambda files, report: None, step=INDEX_MEMBERS, num_processes=1)
    assert report.tars['in_data.tar']['status'] == 'partial' and report.tars['in_data.tar']['members'] == 2
    assert "'2.jpg' is cut short" in report.tars['in_data.tar']['error']
    assert report.tars['not_a_tar.tar']['status'] == 'failed' and report.exit_code() == 1
    assert 'PARTIAL in_data.tar' in report.summary()
    index = open_index(tmp_path)
    assert len(index) == 4
    tars = {index._tar_path(int(index._shard_ids[index._row(f'images/{n}')])) for n in members}
    assert tars == {str(tmp_path / 'whole.tar')}  # the complete copy shadows the cut one


def tar_bytes(entries, fmt=tarfile.USTAR_FORMAT, **options) -> bytes:
    """A tar of ``entries``: (name, data) for regular files, or (TarInfo, data or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=fmt, **options) as tar:
        for entry, data in entries:
            info = entry if isinstance(entry, tarfile.TarInfo) else tarfile.TarInfo(entry)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [member.offset for member in tar.getmembers()]


def patch_header(data: bytes, member: int, start: int, value: bytes, checksum: str | None = 'unsigned') -> bytes:
    """``data`` with bytes ``start..`` of the member's header replaced, and its checksum redone
    ('unsigned', 'signed': as some old tars wrote it) or left as it was (None)."""
    at = header_offsets(data)[member]
    header = bytearray(data[at:at + 512])
    header[start:start + len(value)] = value
    if checksum:
        header[148:156] = b' ' * 8
        total = sum(b - 256 if checksum == 'signed' and b > 127 else b for b in header)
        header[148:156] = b'%06o\0 ' % (total & 0o777777 if total >= 0 else total + 0o1000000)
    return data[:at] + bytes(header) + data[at + 512:]


def typed(name: str, kind: bytes, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


PLAIN = [('a.jpg', payload('a')), ('sub/dir/b.json', b'{"caption": "x"}'), ('c.txt', payload('c', 512))]
PREFIXED = 'p' * 90 + '/' + 'q' * 60 + '/' + 'n' * 80 + '.jpg'  # 235 chars: ustar prefix + name
WHOLE = tar_bytes(PLAIN)
CUT = header_offsets(WHOLE)


# (case, tar bytes, whether the header scan reads it: else tarfile does)
SCAN_CASES = [
    ('plain', WHOLE, True),
    ('empty tar', tar_bytes([]), True),
    ('zero-length member', tar_bytes([('empty.txt', b''), ('after.jpg', payload('x'))]), True),
    ('folders, v7 folder, folder with a size', patch_header(patch_header(tar_bytes(
        [(typed('d', tarfile.DIRTYPE), None), ('d/a.jpg', b'a'), (typed('v7/', tarfile.AREGTYPE), None),
         (typed('sized', tarfile.DIRTYPE), None), ('v7/b.jpg', b'bb')]), 2, 156, b'\0'),
        3, 124, b'00000001000\0'), True),
    ('old regular type and space-padded numbers', patch_header(patch_header(WHOLE, 1, 156, b'\0'),
                                                               0, 100, b'   644 \0'), True),
    ('gnu format, short names', tar_bytes(PLAIN + [(UNICODE_NAME, b'u')], tarfile.GNU_FORMAT), True),
    ('ustar prefix names', tar_bytes([(PREFIXED, payload('p')), ('x' * 100, b'x')]), True),
    ('unusual and unsafe names', tar_bytes([('./dot/a.jpg', b'a'), ('b//c.jpg', b'b'), ('../up.jpg', b'u'),
                                            ('/abs.jpg', b'x'), ('e/../../f.jpg', b'f'), ('g/./h.jpg', b'h'),
                                            ('.', b'n'), ('ok..jpg', b'k')]), True),
    ('gnu long names', tar_bytes([(LONG_NAME, payload('l')), ('a.jpg', b'a')], tarfile.GNU_FORMAT), False),
    ('pax long and unicode names', tar_bytes([(LONG_NAME, b'l'), (UNICODE_NAME, b'u')], tarfile.PAX_FORMAT), False),
    ('pax global header', tar_bytes(PLAIN, tarfile.PAX_FORMAT, pax_headers={'comment': 'x'}), False),
    ('links and devices', tar_bytes(PLAIN + [(typed('s', tarfile.SYMTYPE, linkname='a.jpg'), None),
                                             (typed('h', tarfile.LNKTYPE, linkname='a.jpg'), None),
                                             (typed('c', tarfile.CHRTYPE), None)]), False),
    ('contiguous file type', patch_header(WHOLE, 1, 156, b'7'), False),
    ('base-256 number', tar_bytes(PLAIN[:1] + [(typed('old.jpg', tarfile.REGTYPE, mtime=-1), b'o')],
                                  tarfile.GNU_FORMAT), False),
    ('undecodable name', tar_bytes([('\udcff.jpg', b'x'), ('a.jpg', b'a')], encoding='utf-8',
                                   errors='surrogateescape'), False),
    ('signed checksum', patch_header(tar_bytes([('é.jpg', b'e'), ('a.jpg', b'a')], tarfile.GNU_FORMAT),
                                     0, 0, 'é.jpg'.encode(), checksum='signed'), False),
    ('bad checksum', patch_header(WHOLE, 1, 0, b'B', checksum=None), False),
    ('number field tarfile cannot read', patch_header(WHOLE, 1, 100, b'0 644\0'), False),
    ('first header bad', patch_header(WHOLE, 0, 100, b'0 644\0'), False),
    ('cut in a header', WHOLE[:CUT[2] + 100], False),
    ('cut in member data', WHOLE[:CUT[2] + 512 + 100], False),
    ('cut in the padding after a member', WHOLE[:CUT[1] + 600], False),
    ('cut at a member boundary', WHOLE[:CUT[2]], False),
    ('garbage after the members', WHOLE[:CUT[2] + 1024] + b'x' * 1024, False),
]


@pytest.mark.parametrize('case, data, plain', SCAN_CASES, ids=[case[0] for case in SCAN_CASES])
def test_header_scan_equals_tarfile(tmp_path, monkeypatch, case, data, plain):
    path = tmp_path / 'shard.tar'
    path.write_bytes(data)
    assert (scan_tar_headers(str(path)) is not None) == plain
    # Reading through (before an extraction) sees the same headers, in large reads or small ones
    # that end between headers.
    assert scan_tar_headers(str(path), read_through=True) == scan_tar_headers(str(path))
    monkeypatch.setattr(tar_headers._HeaderReader, 'CHUNK', 1024)
    assert scan_tar_headers(str(path), read_through=True) == scan_tar_headers(str(path))
    monkeypatch.setattr(tar_headers._HeaderReader, 'DENSE', 1024)  # some headers in chunks, some alone
    assert scan_tar_headers(str(path), read_through=True) == scan_tar_headers(str(path))
    try:
        expected = scan_tar_with_tarfile(str(path))
    except tarfile.ReadError:
        with pytest.raises(tarfile.ReadError):
            scan_tar(str(path))
        return
    assert scan_tar(str(path)) == expected


def test_plain_tars_are_indexed_without_tarfile(tmp_path, monkeypatch):
    def no_tarfile(path):
        raise AssertionError(f'{path} went through tarfile')
    monkeypatch.setattr('src.prepare.tar_headers.scan_tar_with_tarfile', no_tarfile)
    jobs, expected = make_shards(tmp_path, n_shards=2)
    (tmp_path / 'raw' / 'empty.tar').write_bytes(tar_bytes([]))
    report = index_tars(tmp_path, jobs + [TarJob(str(tmp_path), 'raw/empty.tar', 'images')])
    assert report.exit_code() == 0 and report.tars['raw/empty.tar']['members'] == 0
    index = open_index(tmp_path)
    assert {p: index.read(p) for p in index.paths()} == expected


def test_hostile_members_are_refused_and_reported(tmp_path):
    tar_path = tmp_path / 'raw' / 'hostile.tar'
    os.makedirs(tar_path.parent)
    with tarfile.open(tar_path, 'w') as tar:
        for name in ('good.jpg', '../escape.jpg', '/etc/absolute.jpg', 'a/../../up.jpg'):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b'abc'))
        for name, kind in (('sym.jpg', tarfile.SYMTYPE), ('hard.jpg', tarfile.LNKTYPE),
                           ('dev', tarfile.CHRTYPE), ('fifo', tarfile.FIFOTYPE),
                           ('folder', tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, 'good.jpg'
            tar.addfile(info)
    report = index_tars(tmp_path, [TarJob(str(tmp_path), 'raw/hostile.tar', 'raw')])
    assert open_index(tmp_path).paths() == ['raw/good.jpg']
    assert dict(report.tars['raw/hostile.tar']['refused']) == {
        '../escape.jpg': 'parent-path', '/etc/absolute.jpg': 'absolute-path', 'a/../../up.jpg': 'parent-path',
        'sym.jpg': 'link', 'hard.jpg': 'link', 'dev': 'special-file', 'fifo': 'special-file'}
    assert 'unsafe members refused (never written): 7' in report.summary()


def test_a_path_in_two_members_reads_the_last_one(tmp_path):
    write_tar(tmp_path / '0.tar', {'a.jpg': b'first', 'b.jpg': b'b'})
    write_tar(tmp_path / '1.tar', {'a.jpg': b'second'})
    index_tars(tmp_path, [TarJob(str(tmp_path), f'{i}.tar', '') for i in (0, 1)])
    index = open_index(tmp_path)
    assert len(index) == 2 and index.read('a.jpg') == b'second'


def test_paths_whose_hashes_collide_are_told_apart(tmp_path, monkeypatch):
    for module in ('src.datasets.storage.tar_index', 'src.datasets.storage.tar_index_writer'):  # the reader's and the builder's
        monkeypatch.setattr(f'{module}.path_key', lambda path: 7)
    write_tar(tmp_path / '0.tar', {'a.jpg': b'a0', 'b.jpg': b'b', 'c.jpg': b'c'})
    write_tar(tmp_path / '1.tar', {'a.jpg': b'a1', 'd.jpg': b'd'})
    index_tars(tmp_path, [TarJob(str(tmp_path), f'{i}.tar', '') for i in (0, 1)])
    index = open_index(tmp_path)
    assert {p: index.read(p) for p in index.paths()} == {'a.jpg': b'a1', 'b.jpg': b'b', 'c.jpg': b'c',
                                                         'd.jpg': b'd'}
    assert 'e.jpg' not in index


def test_changed_or_vanished_tar_is_refused_with_a_clear_message(tmp_path):
    jobs, expected = make_shards(tmp_path, n_shards=3)
    index_tars(tmp_path, jobs)
    paths = {s: next(p for p in expected if p.startswith(f'images/{s:03d}/')) for s in range(3)}

    with open(jobs[0].path, 'ab') as f:
        f.write(b'\0' * 512)
    st = os.stat(jobs[1].path)
    os.utime(jobs[1].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    os.remove(jobs[2].path)
    with pytest.raises(StaleIndexError, match=r'00000\.tar changed.*size'):
        TarMemberIndex.open(str(tmp_path / INDEX_NAME))  # at start-up, before any read
    index = TarMemberIndex(str(tmp_path / INDEX_NAME))  # as a worker holds it: refused at the read
    with pytest.raises(StaleIndexError, match=r'00000\.tar changed.*size'):
        index.read(paths[0])
    with pytest.raises(StaleIndexError, match=r'00001\.tar changed.*mtime_ns'):
        index.read(paths[1])
    with pytest.raises(StaleIndexError, match=r'00002\.tar .*is gone'):
        index.read(paths[2])

    # re-running the preparation re-indexes the changed tars (the vanished one is not listed)
    index_tars(tmp_path, jobs[:2])
    index = open_index(tmp_path)
    assert index.read(paths[0]) == expected[paths[0]] and index.read(paths[1]) == expected[paths[1]]


def test_member_beyond_the_end_of_a_shrunk_tar_is_a_missing_file(tmp_path):
    jobs, expected = make_shards(tmp_path, n_shards=1)
    index_tars(tmp_path, jobs)
    index = open_index(tmp_path)
    first, *_, last = sorted(expected)
    assert index.read(first) == expected[first]  # opens and checks the tar
    os.truncate(jobs[0].path, 1024)
    with pytest.raises(SampleError, match='cut short') as err:
        index.read(last)
    assert err.value.reason == 'missing-file'


def test_unreadable_index_file_is_an_index_format_error(tmp_path):
    (tmp_path / INDEX_NAME).write_bytes(b'not arrow')
    with pytest.raises(IndexFormatError, match=INDEX_NAME):
        open_index(tmp_path)


def test_pickles_without_its_open_handles(tmp_path):
    jobs, expected = make_shards(tmp_path, n_shards=2)
    index_tars(tmp_path, jobs)
    index = open_index(tmp_path)
    for path in expected:
        index.read(path)
    blob = pickle.dumps(index)
    assert len(blob) < 1000  # the index path only, neither the table nor descriptors
    clone = pickle.loads(blob)
    assert {p: clone.read(p) for p in expected} == expected
    index.close()
    clone.close()


class _MemberDataset(Dataset):
    def __init__(self, index: TarMemberIndex, paths: list[str]):
        self.index, self.paths = index, paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.paths[i], torch.frombuffer(bytearray(self.index.read(self.paths[i])), dtype=torch.uint8)


def test_two_dataloader_workers_read_concurrently(tmp_path):
    jobs, expected = make_shards(tmp_path, n_shards=4, per_shard=8)
    index_tars(tmp_path, jobs)
    index = open_index(tmp_path)
    paths = sorted(expected) * 3
    index.read(paths[0])  # the parent holds a descriptor that forked workers must not use
    # fork: the workers inherit the parent's descriptor; spawn would pickle the index, as
    # test_pickles_without_its_open_handles does, at the price of importing torch twice more.
    loader = DataLoader(_MemberDataset(index, paths), batch_size=None, num_workers=2,
                        multiprocessing_context='fork')
    got = [(path, bytes(data.numpy())) for path, data in loader]
    assert got == [(p, expected[p]) for p in paths]
