"""Round 4 of the hostile reading: what a planted file beside the index cache (a FIFO, a link, a
folder, a user's own file) and a crafted picture do to the newest code (``storage.sidecars``,
``storage.locks``, ``storage.images``). Each test runs its attack in a forked process bounded by
a timeout, so a hang fails the test instead of blocking the suite."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import traceback
from pathlib import Path

import pytest
from mmengine.logging import MMLogger

from src.datasets.index.sample_index import SampleIndex, cache_path_for
from tests.test_sidecars_one_way import _expected, _fetched, _prepare, _target, s3  # noqa: F401 - the local S3 server
from tests.test_trust_sidecars import _samples, _sidecars, make, root  # noqa: F401 - the dataset's fixtures

FORK = multiprocessing.get_context('fork')
TIMEOUT = 60  # seconds an attack may take before it counts as a hang (each takes about one)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def bounded(fn, timeout: float = TIMEOUT):
    """``fn()`` run in a forked process, and the lines the project logged meanwhile: its value, or
    the test fails naming the error (or the hang: the process is killed after ``timeout``)."""
    results = FORK.Queue()

    def run():
        lines = _Lines()
        MMLogger.get_current_instance().addHandler(lines)
        try:
            results.put(('ok', fn(), lines.lines))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results.put(('error', ''.join(traceback.format_exception(exc))[-3000:], lines.lines))

    process = FORK.Process(target=run)
    process.start()
    try:
        status, value, lines = results.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        process.join()
        pytest.fail(f'hung: no answer in {timeout} s')
    process.join(30)
    assert status == 'ok', value
    return value, lines


@pytest.fixture
def index_root(tmp_path) -> Path:
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'data.json').write_text(json.dumps([{'image': f'{i}.jpg', 'caption': f'cat {i}'} for i in range(20)]))
    return root


def _load_len(root: Path) -> int:
    return len(SampleIndex.load(root / 'data.json'))


# ---- the lock beside a file being built -------------------------------------------------------

@pytest.mark.parametrize('planted', ['fifo', 'link to a missing file', 'link to a file'])
def test_what_is_planted_at_the_lock_path_is_neither_waited_on_nor_followed(index_root, tmp_path, planted):
    outside = tmp_path / 'outside'
    outside.mkdir()
    lock = Path(f'{cache_path_for(index_root / "data.json")}.lock')
    if planted == 'fifo':
        os.mkfifo(lock)
    else:
        if planted == 'link to a file':
            (outside / 'mine').write_text('theirs')
        os.symlink(outside / 'mine', lock)
    rows, lines = bounded(lambda: _load_len(index_root))
    assert rows == 20  # built in memory, and said why, naming the lock
    assert any(str(lock) in line and 'where the lock file goes' in line for line in lines), lines
    assert [p.name for p in outside.iterdir()] == (['mine'] if planted == 'link to a file' else [])
    if planted == 'link to a file':
        assert (outside / 'mine').read_text() == 'theirs'


# ---- what is planted where a file beside the index cache goes --------------------------------

def _planted_at(root: Path, where: str) -> Path:
    cache = cache_path_for(root / 'data.json')
    if where == 'index cache':
        return cache
    if where.endswith('folder'):
        prefix = '.select-' if where.startswith('selection') else '.prompt-ids-'
        [folder] = (p for p in root.glob(f'{cache.name}{prefix}*') if p.is_dir())
        return folder
    [path] = _sidecars(root)[where]
    return path


def _plant(target: Path, kind: str, outside: Path) -> None:
    """Where ``target`` was: a FIFO, or a link to a copy of it out of the folder (whole and
    current: read through the link, it would be used)."""
    copy = outside / target.name
    if target.is_dir():
        shutil.copytree(target, copy)
        shutil.rmtree(target)
    else:
        shutil.copyfile(target, copy)
        target.unlink()
    if kind == 'fifo':
        os.mkfifo(target)
    else:
        os.symlink(copy, target)


@pytest.mark.parametrize('kind', ['fifo', 'link out'])
@pytest.mark.parametrize('where', ['index cache', 'sizes', 'selection rows', 'selection drops', 'selection folder',
                                   'digests', 'prompt ids', 'prompt folder'])
def test_a_fifo_or_link_planted_where_a_sidecar_goes_is_rebuilt_never_opened(make, root, tmp_path, where, kind):
    first = make()
    first.index.content_digest('image')  # the digests file too
    expected = _samples(first)
    target = _planted_at(root, where)
    outside = tmp_path / 'outside'
    outside.mkdir()
    _plant(target, kind, outside)
    if where == 'sizes':  # what was selected from them goes too: the sizes are read again
        for folder in root.glob(f'{cache_path_for(root / "data.json").name}.select-*/'):
            shutil.rmtree(folder)
    before = sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob('*'))

    def again():
        dataset = make()
        dataset.index.content_digest('image')
        return _samples(dataset)

    assert bounded(again)[0] == expected
    assert not target.is_symlink() and not target.is_fifo()  # the rename replaced it
    assert sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob('*')) == before


def test_a_digests_file_grown_past_its_bound_is_computed_again_never_read_whole(index_root):
    from src.datasets.storage.sidecars import MAX_JSON_BYTES
    first = SampleIndex.load(index_root / 'data.json')
    digest = first.content_digest('image')
    sidecar = first.cache.with_name(f'{first.cache.name}.digests.json')
    whole = sidecar.read_bytes()
    sidecar.write_bytes(b' ' * MAX_JSON_BYTES + whole)  # the very values, after more blank space than a build writes
    assert bounded(lambda: SampleIndex.load(index_root / 'data.json').content_digest('image'))[0] == digest
    assert sidecar.stat().st_size == len(whole)  # computed again and kept afresh


# ---- TIFF layouts that cost the decoder more than the picture ---------------------------------

def _tiff(width: int, height: int, data: bytes, tags: dict, compression: int = 1) -> bytes:
    """A little-endian RGB TIFF of ``data`` (at offset 8) and the LONG ``tags`` (a tag: a value,
    or a list of them kept after the data)."""
    import struct
    tail, entries = b'', []
    after = 8 + len(data)
    base = {256: width, 257: height, 259: compression, 262: 2, 277: 3}
    for tag, value in sorted({**base, **tags}.items()):
        values = value if isinstance(value, list) else [value]
        if len(values) == 1:
            entries.append(struct.pack('<HHII', tag, 4, 1, values[0]))
        else:
            entries.append(struct.pack('<HHII', tag, 4, len(values), after + len(tail)))
            tail += struct.pack(f'<{len(values)}I', *values)
    bits_at = after + len(tail)
    tail += struct.pack('<3H', 8, 8, 8)
    entries.append(struct.pack('<HHII', 258, 3, 3, bits_at))
    entries.sort(key=lambda entry: entry[:2])
    ifd = struct.pack('<H', len(entries)) + b''.join(entries) + b'\0\0\0\0'
    return b'II*\0' + struct.pack('<I', after + len(tail)) + data + tail + ifd


def _load(data: bytes, name: str = 'picture.tif'):
    import random
    from src.datasets.sample.image_io import load_pixels
    return load_pixels(data, name, (64, 64), random.Random(0), min_image_size=16)[0]


def _refusal(data: bytes, name: str) -> tuple[str, str] | None:
    """The reason and message of the ``SampleError`` loading ``data`` raises (None: it loaded), in
    bounded time."""
    from src.datasets.errors import SampleError

    def attempt():
        try:
            _load(data, name)
        except SampleError as exc:
            return exc.reason, str(exc)
    return bounded(attempt)[0]


def test_a_tiff_whose_strips_cover_the_picture_again_and_again_is_refused_undecoded():
    width, height, rounds = 512, 256, 200  # each strip one row; the list goes round the picture 200 times
    row = bytes(range(256)) * (width * 3 // 256)
    data = _tiff(width, height, row, {273: [8] * height * rounds, 278: 1, 279: [len(row)] * height * rounds})
    reason, message = _refusal(data, 'picture.tif')
    assert reason == 'bad-image'
    assert message.startswith('picture.tif: the 51200 strips or tiles of this TIFF cover its 512x256 picture 200 times')


def test_a_small_tiff_of_one_huge_tile_is_refused_before_its_tile_is_allocated():
    import zlib
    from src.datasets.storage.images import DEFAULT_MAX_PIXELS
    data = _tiff(200, 200, zlib.compress(bytes(1000)), {322: 16384, 323: 16384, 324: 8, 325: 17}, compression=8)
    assert _refusal(data, 'picture.tif') == ('too-large', f'picture.tif: a TIFF tile of 16384x16384 pixels is more than '
                                                f'max_pixels={DEFAULT_MAX_PIXELS}: refused, not decoded')


@pytest.mark.parametrize('layout', ['strips of rows', 'a plane a band'])
def test_tiffs_whose_strips_cover_the_picture_once_a_band_still_load(layout):
    import numpy as np
    import torch
    from PIL import Image
    width, height = 96, 80
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if layout == 'strips of rows':
        data = _tiff(width, height, pixels.tobytes(), {273: [8 + i * width * 3 * 8 for i in range(10)], 278: 8,
                                                       279: [width * 3 * 8] * 10})
    else:
        planes = pixels.transpose(2, 0, 1).tobytes()
        data = _tiff(width, height, planes, {273: [8 + i * width * height for i in range(3)], 278: height,
                                             279: [width * height] * 3, 284: 2})
    expected = _load(_png(Image.fromarray(pixels)))
    assert torch.equal(_load(data), expected)


def _png(img) -> bytes:
    import io
    out = io.BytesIO()
    img.save(out, 'PNG')
    return out.getvalue()


# ---- what the clearing of leftovers removes ----------------------------------------------------

def test_clearing_a_killed_builds_leftovers_keeps_a_users_files_of_a_like_name(index_root):
    cache = cache_path_for(index_root / 'data.json')
    mine = [cache.with_name(f'{cache.name}.tmp-notes.txt'), cache.with_name(f'{cache.name}.tmp-1-backup')]
    for path in mine:
        path.write_text('mine')
    (cache.with_name(f'{cache.name}.tmp-keep') / 'inside').mkdir(parents=True)
    left = [cache.with_name(f'{cache.name}.tmp-{2 ** 22 + 1}-0badf00d{part}') for part in ('', '.0', '.1')]
    for path in left:  # as a build killed while writing leaves them
        path.write_bytes(b'half')
    assert bounded(lambda: _load_len(index_root))[0] == 20
    assert [path.read_text() for path in mine] == ['mine', 'mine']
    assert (cache.with_name(f'{cache.name}.tmp-keep') / 'inside').is_dir()
    assert not any(path.exists() for path in left)


# ---- PNGs of millions of chunks -----------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def _png_with(mode: str, where: str, chunks: bytes) -> bytes:
    from PIL import Image
    png = _png(Image.new(mode, (128, 128), 7))
    at = png.index(b'IDAT') - 4 if where == 'before the pixels' else len(png) - 12  # or before IEND
    return png[:at] + chunks + png[at:]


@pytest.mark.parametrize('mode', ['RGB', 'L'])
@pytest.mark.parametrize('where', ['before the pixels', 'after them'])
@pytest.mark.parametrize('kind', [b'abCd', b'IDAT'])
def test_a_png_of_millions_of_empty_chunks_is_refused_unopened(mode, where, kind):
    data = _png_with(mode, where, _chunk(kind, b'') * 400_000)
    reason, message = _refusal(data, 'picture.png')
    assert reason == 'bad-image'
    assert message.startswith(f'picture.png: a PNG of more than {1024 + len(data) // 1024} chunks in {len(data)} bytes')


def test_a_png_of_its_pixels_in_chunks_of_a_kilobyte_loads():
    import numpy as np
    import torch
    from PIL import Image
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    png = _png(Image.fromarray(pixels))
    start, end = png.index(b'IDAT') - 4, png.index(b'IEND') - 4
    stream, at = b'', start
    while at < end:  # the pixels' zlib stream, whole
        length = int.from_bytes(png[at:at + 4], 'big')
        stream += png[at + 8:at + 8 + length]
        at += 12 + length
    data = png[:start] + b''.join(_chunk(b'IDAT', stream[i:i + 1024]) for i in range(0, len(stream), 1024)) + png[end:]
    assert data.count(b'IDAT') > 300
    assert torch.equal(_load(data), _load(png))


# ---- the ETag stamp of a fetched object and the shard ETags (storage/object_store.py) -----------------

def test_a_fifo_planted_at_a_fetched_objects_etag_stamp_is_not_waited_on(tmp_path, request):
    root = tmp_path / 'data'
    _prepare('fetched object', root, request)
    _fetched(root, False)
    target = _target('fetched object', root)
    stamp = target.parent / f'.{target.name}.etag'
    stamp.unlink()
    os.mkfifo(stamp)
    assert bounded(lambda: _fetched(root, False), timeout=20)[0] == _expected('fetched object', root, 0)
    assert not stamp.is_fifo()


# ---- an index named through a link ------------------------------------------------------------

def test_the_cache_of_an_index_that_is_a_link_out_is_kept_in_the_folder_it_is_named_in(index_root, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (index_root / 'data.json').rename(outside / 'real.json')
    os.symlink(outside / 'real.json', index_root / 'data.json')
    assert bounded(lambda: _load_len(index_root))[0] == 20
    assert [p.name for p in outside.iterdir()] == ['real.json']  # nothing written where the link leads
    assert cache_path_for(index_root / 'data.json').parent == index_root.resolve()
    assert cache_path_for(index_root / 'data.json').is_file()


def _gif_with(blocks: bytes) -> bytes:
    """A 128x128 GIF with ``blocks`` (extensions) before its picture."""
    import io
    from PIL import Image
    out = io.BytesIO()
    Image.new('P', (128, 128), 3).save(out, 'GIF')
    gif = out.getvalue()
    header = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    return gif[:header] + blocks + gif[header:]


@pytest.mark.parametrize('blocks', [b'\x21\xfe' + b'\x01x' * 2_000_000 + b'\x00',  # a comment, a byte a block
                                    b'\x21\xf9\x04\x00\x00\x00\x00\x00' * 600_000],  # control blocks
                         ids=['a comment of one-byte blocks', 'a million control blocks'])
def test_a_gif_of_millions_of_extension_blocks_is_refused_unopened(blocks):
    data = _gif_with(blocks)
    reason, message = _refusal(data, 'picture.gif')
    assert reason == 'bad-image'
    assert message.startswith(f'picture.gif: a GIF of more than {1024 + len(data) // 1024} extension blocks')


def test_gifs_of_long_comments_and_many_frames_still_load():
    import io
    from PIL import Image
    frames = [Image.new('P', (120, 120), i % 256) for i in range(1500)]
    out = io.BytesIO()
    frames[0].save(out, 'GIF', save_all=True, append_images=frames[1:], comment='a cat ' * 20_000)
    assert _refusal(out.getvalue(), 'picture.gif') is None
