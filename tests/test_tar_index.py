"""The tar member index: building it (parallel, resumable, safe), and reading members through it."""
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
from src.datasets.tar_index import (INDEX_NAME, Shard, StaleIndexError, TarMemberIndex,
                                    build_tar_index, scan_tar)

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


def make_shards(root, n_shards=4, per_shard=5) -> tuple[list[Shard], dict[str, bytes]]:
    """``n_shards`` tars under root/raw/<sub>/, extracted (in the dataset's terms) to images/."""
    shards, expected = [], {}
    for s in range(n_shards):
        members = {f'{s:03d}/{i:04d}.jpg': payload(f'{s}-{i}', 300 + 97 * i) for i in range(per_shard)}
        tar = os.path.join(root, 'raw', f'part{s % 2}', f'{s:05d}.tar')
        write_tar(tar, members)
        shards.append(Shard(tar, 'images'))
        expected.update({f'images/{name}': data for name, data in members.items()})
    return shards, expected


@pytest.mark.parametrize('fmt', [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_reads_exact_bytes_of_nested_long_and_unicode_names(tmp_path, fmt):
    members = {'a.jpg': payload('a'), 'sub/dir/b.json': b'{"caption": "x"}', 'empty.txt': b'',
               LONG_NAME: payload('long', 5000), UNICODE_NAME: payload('uni', 1)}
    write_tar(tmp_path / 'raw' / '0.tar', members, fmt)
    report = build_tar_index(str(tmp_path), [Shard(str(tmp_path / 'raw' / '0.tar'), 'raw')])
    assert report.members == len(members) and not report.shards[0].refused

    index = TarMemberIndex.open(report.index_path)
    assert len(index) == len(members)
    for name, data in members.items():
        assert f'raw/{name}' in index
        assert index.read(f'raw/{name}') == data
    assert sorted(index.paths()) == sorted(f'raw/{n}' for n in members)
    # the dataset names files as os.path.join(image_folder, image_file)
    assert index.read(index.relpath(str(tmp_path / 'raw' / LONG_NAME))) == members[LONG_NAME]
    assert 'raw/absent.jpg' not in index
    with pytest.raises(SampleError, match='absent.jpg') as err:
        index.read('raw/absent.jpg')
    assert err.value.reason == 'missing-file'


def test_parallel_build_equals_sequential(tmp_path):
    shards, expected = make_shards(tmp_path / 'a')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    sequential = build_tar_index(str(tmp_path / 'a'), shards, num_processes=1)
    parallel = build_tar_index(
        str(tmp_path / 'b'),
        [Shard(s.tar.replace(str(tmp_path / 'a'), str(tmp_path / 'b')), s.prefix) for s in shards],
        num_processes=2)
    tables = [ipc.open_file(r.index_path).read_all() for r in (sequential, parallel)]
    assert tables[0].equals(tables[1]) and tables[0].num_rows == len(expected)
    index = TarMemberIndex.open(parallel.index_path)
    assert {p: index.read(p) for p in expected} == expected


def test_resume_skips_unchanged_shards_and_redoes_a_changed_one(tmp_path):
    shards, expected = make_shards(tmp_path)
    first = build_tar_index(str(tmp_path), shards)
    assert not any(s.up_to_date for s in first.shards)
    shard_files = sorted(str(p) for p in (tmp_path / 'tar_index.shards').rglob('*.arrow'))
    assert len(shard_files) == len(shards)
    stamps = {p: os.stat(p).st_mtime_ns for p in shard_files}

    changed = {'001/new.jpg': payload('new', 1234), '001/0000.jpg': payload('changed', 10)}
    write_tar(shards[1].tar, changed)
    second = build_tar_index(str(tmp_path), shards)
    assert [s.up_to_date for s in second.shards] == [True, False, True, True]
    assert {p: os.stat(p).st_mtime_ns for p in shard_files if '00001' not in p} == \
        {p: t for p, t in stamps.items() if '00001' not in p}

    index = TarMemberIndex.open(second.index_path)
    expected = {p: d for p, d in expected.items() if not p.startswith('images/001/')}
    expected.update({f'images/{n}': d for n, d in changed.items()})
    assert len(index) == len(expected)
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
    for cut in ('in_data', 'in_header'):
        found, refused, damage = scan_tar(str(tmp_path / f'{cut}.tar'))
        complete = 2 if cut == 'in_data' else 3
        assert [name for name, _, _ in found] == list(members)[:complete] and not refused
        assert "'2.jpg'" in damage  # the member cut short, or the last one before the cut header

    report = build_tar_index(str(tmp_path), [Shard(str(tmp_path / 'in_data.tar'))])
    assert report.members == 2 and "'2.jpg'" in report.shards[0].truncated
    assert 'damaged' in report.summary()
    index = TarMemberIndex.open(report.index_path)
    assert index.read('1.jpg') == members['1.jpg'] and '2.jpg' not in index

    (tmp_path / 'not_a_tar.tar').write_bytes(b'garbage' * 100)
    assert scan_tar(str(tmp_path / 'not_a_tar.tar'))[0] == []
    assert scan_tar(str(tmp_path / 'not_a_tar.tar'))[2]


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
    report = build_tar_index(str(tmp_path), [Shard(str(tar_path), 'raw')])
    index = TarMemberIndex.open(report.index_path)
    assert index.paths() == ['raw/good.jpg']
    refused = dict(report.shards[0].refused)
    assert set(refused) == {'../escape.jpg', '/etc/absolute.jpg', 'a/../../up.jpg', 'sym.jpg',
                            'hard.jpg', 'dev', 'fifo'}
    assert 'absolute' in refused['/etc/absolute.jpg'] and 'symbolic link' in refused['sym.jpg']
    assert '7 members refused' in report.summary()


def test_tar_outside_the_root_is_refused(tmp_path):
    write_tar(tmp_path / 'elsewhere' / '0.tar', {'a.jpg': b'a'})
    with pytest.raises(ValueError, match='not under the dataset root'):
        build_tar_index(str(tmp_path / 'root'), [Shard(str(tmp_path / 'elsewhere' / '0.tar'))])


def test_a_path_in_two_members_reads_the_last_one(tmp_path):
    write_tar(tmp_path / '0.tar', {'a.jpg': b'first', 'b.jpg': b'b'})
    write_tar(tmp_path / '1.tar', {'a.jpg': b'second'})
    report = build_tar_index(str(tmp_path), [Shard(str(tmp_path / f'{i}.tar')) for i in (0, 1)])
    assert report.duplicates == ['a.jpg'] and report.members == 2
    assert TarMemberIndex.open(report.index_path).read('a.jpg') == b'second'


def test_changed_or_vanished_tar_is_refused_with_a_clear_message(tmp_path):
    shards, expected = make_shards(tmp_path, n_shards=3)
    index_path = build_tar_index(str(tmp_path), shards).index_path
    paths = {s: next(p for p in expected if p.startswith(f'images/{s:03d}/')) for s in range(3)}

    with open(shards[0].tar, 'ab') as f:
        f.write(b'\0' * 512)
    st = os.stat(shards[1].tar)
    os.utime(shards[1].tar, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    os.remove(shards[2].tar)
    index = TarMemberIndex.open(index_path)
    with pytest.raises(StaleIndexError, match=r'00000\.tar changed.*size'):
        index.read(paths[0])
    with pytest.raises(StaleIndexError, match=r'00001\.tar changed.*mtime_ns'):
        index.read(paths[1])
    with pytest.raises(StaleIndexError, match=r'00002\.tar .*is gone'):
        index.read(paths[2])


def test_member_beyond_the_end_of_a_shrunk_tar_is_a_missing_file(tmp_path):
    shards, expected = make_shards(tmp_path, n_shards=1)
    index = TarMemberIndex.open(build_tar_index(str(tmp_path), shards).index_path)
    first, *_, last = sorted(expected)
    assert index.read(first) == expected[first]  # opens and checks the tar
    os.truncate(shards[0].tar, 1024)
    with pytest.raises(SampleError, match='cut short') as err:
        index.read(last)
    assert err.value.reason == 'missing-file'


def test_unreadable_index_file_is_an_index_format_error(tmp_path):
    (tmp_path / INDEX_NAME).write_bytes(b'not arrow')
    with pytest.raises(IndexFormatError, match=INDEX_NAME):
        TarMemberIndex.open(str(tmp_path / INDEX_NAME))


def test_pickles_without_its_open_handles(tmp_path):
    shards, expected = make_shards(tmp_path, n_shards=2)
    index = TarMemberIndex.open(build_tar_index(str(tmp_path), shards).index_path)
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


@pytest.mark.parametrize('context', ['fork', 'spawn'])
def test_two_dataloader_workers_read_concurrently(tmp_path, context):
    shards, expected = make_shards(tmp_path, n_shards=4, per_shard=8)
    index = TarMemberIndex.open(build_tar_index(str(tmp_path), shards).index_path)
    paths = sorted(expected) * 3
    index.read(paths[0])  # the parent holds a descriptor that forked workers must not use
    loader = DataLoader(_MemberDataset(index, paths), batch_size=None, num_workers=2,
                        multiprocessing_context=context)
    got = [(path, bytes(data.numpy())) for path, data in loader]
    assert got == [(p, expected[p]) for p in paths]
