"""Safe extraction of one tar, resume markers, atomic writes: the shared preparation library."""
import io
import os
import tarfile

import pytest

from src.datasets.storage.atomic import atomic_write, write_json_array
from src.prepare.extract import EXTRACT, scan_files, staging_folder
from src.prepare.tar_headers import TarJob
from src.prepare.report import Report
from src.prepare.runner import Files, finished_result, prepare


def add_file(tar, name, data=b'payload'):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar, name, kind, linkname=''):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


def write_tar(path, build):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as tar:
        build(tar)


def test_hostile_members_never_leave_the_target_and_are_reported(tmp_path):
    root = tmp_path / 'root'
    outside = tmp_path / 'outside.txt'
    outside.write_text('original')

    def build(tar):
        add_file(tar, 'ok/a.jpg', b'image')
        add_file(tar, '../escape.txt')
        add_file(tar, '../../outside.txt', b'overwritten')
        add_file(tar, '/abs.txt')
        add_file(tar, 'ok/../../sneaky.txt')
        add_special(tar, 'sym-out', tarfile.SYMTYPE, str(outside))
        add_special(tar, 'sym-in', tarfile.SYMTYPE, 'ok/a.jpg')
        add_special(tar, 'hard-out', tarfile.LNKTYPE, '../outside.txt')
        add_special(tar, 'fifo', tarfile.FIFOTYPE)
        add_special(tar, 'null', tarfile.CHRTYPE)
        add_special(tar, 'disk', tarfile.BLKTYPE)
        add_file(tar, './ok//b.jpg', b'image b')
    write_tar(str(root / 'raw/0.tar'), build)

    result = EXTRACT.process(TarJob(str(root), 'raw/0.tar', 'out'))

    assert result.status == 'done' and result.members == 2
    assert dict((name, reason) for name, reason in result.refused) == {
        '../escape.txt': 'parent-path', '../../outside.txt': 'parent-path', '/abs.txt': 'absolute-path',
        'ok/../../sneaky.txt': 'parent-path', 'sym-out': 'link', 'sym-in': 'link', 'hard-out': 'link',
        'fifo': 'special-file', 'null': 'special-file', 'disk': 'special-file'}
    assert outside.read_text() == 'original'
    assert not os.path.exists('/abs.txt') or open('/abs.txt', 'rb').read() != b'payload'
    assert not (root / 'escape.txt').exists() and not (tmp_path / 'sneaky.txt').exists()
    # Only the two regular files exist anywhere under the root besides the tar and bookkeeping.
    assert scan_files(str(root), 'out') == {'out/ok/a.jpg', 'out/ok/b.jpg'}
    assert (root / 'out/ok/b.jpg').read_bytes() == b'image b'
    assert not os.path.exists(staging_folder(TarJob(str(root), 'raw/0.tar', 'out'), 'extract'))


def tar_with_three_members(path):
    write_tar(path, lambda tar: [add_file(tar, f'{i}.jpg', bytes([i]) * 5000) for i in range(3)])


def test_tar_cut_mid_member_keeps_complete_members_and_is_partial(tmp_path):
    tar_path = tmp_path / 'shards/a.tar'
    tar_with_three_members(str(tar_path))
    with tarfile.open(tar_path) as tar:
        last = tar.getmembers()[-1]
    tar_path.write_bytes(tar_path.read_bytes()[:last.offset_data + 100])

    result = EXTRACT.process(TarJob(str(tmp_path), 'shards/a.tar', 'out'))

    assert result.status == 'partial' and 'truncated' in result.error and '2.jpg' in result.error
    assert result.members == 2
    assert scan_files(str(tmp_path), 'out') == {'out/0.jpg', 'out/1.jpg'}
    assert (tmp_path / 'out/1.jpg').read_bytes() == bytes([1]) * 5000


def test_tar_cut_at_a_member_boundary_is_partial(tmp_path):
    tar_path = tmp_path / 'a.tar'
    tar_with_three_members(str(tar_path))
    with tarfile.open(tar_path) as tar:
        last = tar.getmembers()[-1]
    tar_path.write_bytes(tar_path.read_bytes()[:last.offset])  # header of 2.jpg and all after: gone

    result = EXTRACT.process(TarJob(str(tmp_path), 'a.tar', 'out'))

    assert result.status == 'partial' and '1.jpg' in result.error
    assert scan_files(str(tmp_path), 'out') == {'out/0.jpg', 'out/1.jpg'}


@pytest.mark.parametrize('content', [b'', b'this is not a tar file at all' * 40])
def test_unreadable_tar_fails_and_is_retried(tmp_path, content):
    (tmp_path / 'bad.tar').write_bytes(content)
    tar_with_three_members(str(tmp_path / 'good.tar'))
    jobs = [TarJob(str(tmp_path), name, 'out') for name in ('bad.tar', 'good.tar')]

    report = prepare('demo', str(tmp_path), jobs, ['out'], lambda files, report: None, num_processes=1)

    assert report.by_status('failed') == ['bad.tar'] and report.by_status('done') == ['good.tar']
    assert 'bad.tar' in report.tars['bad.tar']['error'] and report.exit_code() == 1
    assert 'FAILED bad.tar' in report.summary()
    assert finished_result(jobs[0], EXTRACT) is None  # no marker: the next run tries it again
    assert finished_result(jobs[1], EXTRACT)['members'] == 3


def test_leftovers_of_an_interrupted_tar_are_cleared_and_it_is_redone(tmp_path):
    tar_with_three_members(str(tmp_path / 'a.tar'))
    job = TarJob(str(tmp_path), 'a.tar', 'out')
    staging = staging_folder(job, 'extract')
    os.makedirs(staging)
    with open(os.path.join(staging, '0.jpg'), 'wb') as f:
        f.write(b'half')

    report = prepare('demo', str(tmp_path), [job], ['out'], lambda files, report: None, num_processes=1)

    assert report.by_status('done') == ['a.tar'] and not os.path.exists(staging)
    assert (tmp_path / 'out/0.jpg').read_bytes() == bytes([0]) * 5000


def test_changed_tar_is_redone_and_unchanged_is_skipped(tmp_path):
    tar_with_three_members(str(tmp_path / 'a.tar'))
    job = TarJob(str(tmp_path), 'a.tar', 'out')
    seen = []

    def build_index(files: Files, report: Report):
        seen.append(sorted(files.paths))

    first = prepare('demo', str(tmp_path), [job], ['out'], build_index, num_processes=1)
    second = prepare('demo', str(tmp_path), [job], ['out'], build_index, num_processes=1)
    write_tar(str(tmp_path / 'a.tar'), lambda tar: add_file(tar, 'new.jpg'))
    third = prepare('demo', str(tmp_path), [job], ['out'], build_index, num_processes=1)

    assert first.skipped_done == [] and second.skipped_done == ['a.tar'] and third.skipped_done == []
    assert 'members (extract): 0 by this run' in second.summary()  # skipped work is not counted again
    assert seen[0] == seen[1] == ['out/0.jpg', 'out/1.jpg', 'out/2.jpg']
    assert 'out/new.jpg' in seen[2]


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / 'data.json'
    write_json_array(target, [[{'a': 1}], [], [{'b': 'ü'}]])
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write('[{"trunc')
            raise RuntimeError('killed')
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ['data.json']
    assert write_json_array(target, [[{'a': 1}], [{'b': 'ü'}]]) == (2, False)  # same bytes: untouched


def test_a_name_repeated_in_a_tar_is_extracted_once_last_copy_wins(tmp_path):
    write_tar(str(tmp_path / 'a.tar'), lambda tar: [add_file(tar, 'x.jpg', b'first'), add_file(tar, './x.jpg', b'second')])
    result = EXTRACT.process(TarJob(str(tmp_path), 'a.tar', 'out'))
    assert result.status == 'done' and result.members == 1
    assert (tmp_path / 'out/x.jpg').read_bytes() == b'second'
