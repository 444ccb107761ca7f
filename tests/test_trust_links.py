"""Links in a download are not followed out of it (README reliability table, "symbolic links"): the
link rule (``src.datasets.storage.files.link_outside``) keeps every reader, lister, writer and uploader
inside the dataset's folder; what it refuses is counted and named."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from src.datasets.errors import SampleError
from src.datasets.storage.files import join_inside, link_outside
from src.latents.store import latent_path
from src.prepare import datasets as prepare
from src.prepare.extract import EXTRACT
from src.prepare.tar_headers import TarJob
from src.synthetic.downloads import MAKERS
from src.synthetic.images import encode_image

from test_untrusted_input import dataset_over, good_image, reason_of  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n'


@pytest.fixture
def outside(tmp_path):
    """A folder beside the dataset's, holding what a link must not reach: a key and a picture."""
    folder = tmp_path / 'home'
    folder.mkdir()
    (folder / 'id_rsa').write_text(KEY)
    (folder / 'id_rsa.json').write_text(json.dumps({'caption': KEY}))
    (folder / 'photo.jpg').write_bytes(encode_image(120, 100))
    return folder


def test_the_link_rule_judges_every_way_out(tmp_path, outside):
    root = tmp_path / 'data'
    (root / 'raw' / 'real').mkdir(parents=True)
    (root / 'raw' / 'real' / 'a.jpg').write_bytes(b'x')
    os.symlink(outside / 'photo.jpg', root / 'raw' / 'absolute.jpg')
    os.symlink('../../home/photo.jpg', root / 'raw' / 'relative.jpg')  # climbs out of data/
    os.symlink(outside, root / 'raw' / 'folder')  # a linked parent folder
    os.symlink('real/a.jpg', root / 'raw' / 'inside.jpg')  # stays inside: followed
    os.symlink('real/../../raw', root / 'raw' / 'loop')
    os.symlink('/proc/self/environ', root / 'raw' / 'environ')
    for path in ('raw/absolute.jpg', 'raw/relative.jpg', 'raw/folder/photo.jpg', 'raw/folder', 'raw/environ'):
        assert link_outside(str(root / path), str(root)) == 'link-outside', path
    for path in ('raw/inside.jpg', 'raw/real/a.jpg', 'raw/loop/real/a.jpg', 'raw/not-there.jpg'):
        assert link_outside(str(root / path), str(root)) is None, path
    (root / 'data' / 'raw' / 'real').mkdir(parents=True)
    os.symlink(outside, root / 'data' / 'raw' / 'real' / 'a.jpg')
    cwd = os.getcwd()
    try:  # a relative folder is judged from where the process is now, not from where it was first
        for here in (tmp_path, root):
            os.chdir(here)
            expected = None if here == tmp_path else 'link-outside'
            assert link_outside('data/raw/real/a.jpg', 'data') == expected
    finally:
        os.chdir(cwd)
    linked_root = tmp_path / 'data-link'
    os.symlink(root, linked_root)  # the dataset's folder itself may be a link
    assert link_outside(str(linked_root / 'raw' / 'real' / 'a.jpg'), str(linked_root)) is None
    assert link_outside(str(linked_root / 'raw' / 'folder' / 'id_rsa'), str(linked_root)) == 'link-outside'


def test_the_dataset_reads_nothing_through_a_link_out_of_its_folder(tmp_path, outside, dataset_over):
    images = tmp_path / 'images'
    records = [good_image(images, 'g.jpg')]
    os.symlink(outside / 'photo.jpg', images / 'linked.jpg')
    os.symlink(outside, images / 'shard')
    os.symlink('../home/photo.jpg', images / 'climbs.jpg')
    os.symlink('g.jpg', images / 'inside.jpg')
    os.symlink(outside / 'id_rsa.json', images / 'key.json')
    records += [{'image': 'linked.jpg', 'caption': 'a'}, {'image': 'shard/photo.jpg', 'caption': 'b'},
                {'image': 'climbs.jpg', 'caption': 'c'}, {'image': 'inside.jpg', 'caption': 'd'},
                {'image': 'g.jpg', 'annotation': 'key.json'}]
    dataset = dataset_over(records, cap_folder=str(images))
    for idx in (1, 2, 3, 5):
        assert reason_of(dataset, idx) == 'unsafe-link'
    assert dataset.prepare_data(4)['image_file'] == 'inside.jpg'
    with pytest.raises(SampleError) as refused:
        dataset.prepare_data(5)
    assert 'BEGIN' not in str(refused.value) and str(images / 'key.json') in str(refused.value)
    allowed = dataset_over(records, cap_folder=str(images), allow_outside_paths=True)
    assert allowed.prepare_data(1)['image_file'] == 'linked.jpg'


def test_cache_latents_writes_nothing_through_a_linked_subfolder(tmp_path, outside):
    folder = tmp_path / 'images_dc32_512'
    folder.mkdir()
    os.symlink(outside, folder / 'shard')
    with pytest.raises(SampleError) as refused:
        latent_path(str(folder), 'shard/photo.jpg')  # what encode_dataset asks before each write
    assert refused.value.reason == 'unsafe-link'
    assert latent_path(str(folder), 'other/photo.jpg') == str(folder / 'other' / 'photo.jpg.pt')
    assert join_inside('s3://bucket/x', 'a.jpg') == 's3://bucket/x/a.jpg'  # objects have no links


def test_extraction_writes_nothing_through_links_and_the_listing_pairs_none(tmp_path, outside):
    expected = MAKERS['blip3o60k'](tmp_path / 'blip3o60k', n=8, faults=False)
    root = expected.root
    tars = sorted(p.name for p in (root / 'raw').glob('*.tar'))
    before = sorted(p.name for p in outside.iterdir())
    os.symlink(outside, root / 'raw' / tars[0][:-len('.tar')])  # the folder beside the tar, a link out
    os.symlink(outside / 'photo.jpg', root / 'raw' / 'leak.jpg')
    os.symlink(outside / 'id_rsa', root / 'raw' / 'leak.txt')
    os.symlink(outside, root / 'raw' / 'home')
    os.symlink(tmp_path / 'elsewhere.tar', root / 'raw' / 'zz-linked.tar')
    with tarfile.open(tmp_path / 'elsewhere.tar', 'w') as tar:
        info = tarfile.TarInfo('x.jpg')
        info.size = 3
        tar.addfile(info, io.BytesIO(b'abc'))

    report = prepare.prepare_blip3o60k(str(root), num_processes=1)

    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written through the link
    assert report.links == {f'raw/{tars[0][:-4]}': 'link-outside', 'raw/zz-linked.tar': 'link-outside',
                            'raw/leak.jpg': 'link-outside', 'raw/leak.txt': 'link-outside', 'raw/home': 'link-outside'}
    assert 'symbolic links out of' in report.summary() and 'BEGIN' not in report.summary()
    index = (root / 'data.json').read_text()
    assert 'leak' not in index and 'home/' not in index and tars[0][:-4] not in index
    report.finish()
    assert json.loads((root / 'prepare_report.json').read_text())['links_refused']['link-outside']['count'] == 5


def test_a_member_bound_for_a_linked_subfolder_is_refused_and_named(tmp_path, outside):
    root = tmp_path / 'data'
    (root / 'raw' / 'shard').mkdir(parents=True)
    os.symlink(outside, root / 'raw' / 'shard' / 'sub')
    with tarfile.open(root / 'raw' / 'shard.tar', 'w') as tar:
        for name in ('sub/evil.jpg', 'ok.jpg'):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b'abc'))
    result = EXTRACT.process(TarJob(str(root), 'raw/shard.tar', 'raw/shard'))
    assert result.refused == [['sub/evil.jpg', 'link-outside']] and result.members == 1
    assert not (outside / 'evil.jpg').exists() and (root / 'raw' / 'shard' / 'ok.jpg').exists()

    planted = tmp_path / 'plant'
    planted.mkdir()
    other = tmp_path / 'other'
    (other / 'raw').mkdir(parents=True)
    os.symlink(planted, other / '.prepare')  # the bookkeeping folder, planted as a link
    os.link(root / 'raw' / 'shard.tar', other / 'raw' / 'shard.tar')
    result = EXTRACT.process(TarJob(str(other), 'raw/shard.tar', 'raw/shard'))
    assert result.status == 'failed' and 'symbolic link' in result.error and not any(planted.iterdir())


def _upload_module():
    spec = importlib.util.spec_from_file_location('upload_tool', REPO / 'tools' / 'upload.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upload_sends_no_link_unless_asked_and_never_one_out_of_the_folder(tmp_path, outside):
    upload = _upload_module()
    root = tmp_path / 'data'
    (root / 'raw').mkdir(parents=True)
    (root / 'raw' / 'a.jpg').write_bytes(b'a')
    os.symlink(outside / 'id_rsa', root / 'raw' / 'id_rsa')
    os.symlink(outside, root / 'raw' / 'home')
    os.symlink('a.jpg', root / 'raw' / 'b.jpg')
    os.mkfifo(root / 'raw' / 'fifo')
    refused = []
    assert list(upload.local_files(root, refused)) == [('raw/a.jpg', 1)]
    assert sorted(refused) == [('raw/b.jpg', 'link'), ('raw/fifo', 'not-a-file'), ('raw/home/', 'linked folder'),
                               ('raw/id_rsa', 'link')]
    refused = []
    assert list(upload.local_files(root, refused, follow_links=True)) == [('raw/a.jpg', 1), ('raw/b.jpg', 1)]
    assert ('raw/id_rsa', 'link-outside') in refused and ('raw/home/', 'linked folder') in refused
