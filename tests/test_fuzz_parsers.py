"""Mutated inputs for every parser a download reaches (issue 37): the index (data.json, JSONL),
caption json, tar headers (both preparation steps), latents.json and the files kept beside the index
cache. Seeded byte flips, cuts, insertions, deletions and repeats; each input ends in a result, a
counted skip or the project's own error naming the file, never a library's traceback, and each runs
under a time bound (a hang fails the test)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import tarfile

import numpy as np
import pytest

from src.datasets.index.captions import parse_annotation
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.storage.latent_store import LatentShapes, read_info
from src.datasets.index.sample_index import SampleIndex

BOUND_S = 5.0  # one input's time bound (a loaded machine); each takes milliseconds
TOKENS = [b'[', b']', b'{', b'}', b'"', b'\\', b',', b':', b'null', b'1e999', b'-0', b'NaN', b'\x00', b'\xff',
          b'\xef\xbb\xbf', b'\\u0000', b'\\ud800', b'[' * 3000, b'{"a":' * 500, b'9' * 400, b'  \n']


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        edit = rng.randrange(6)
        if edit == 0 and data:  # flip bits of a byte
            at = min(at, len(data) - 1)
            data[at] ^= 1 << rng.randrange(8)
        elif edit == 1:  # cut the end
            del data[at:]
        elif edit == 2:  # insert a token or random bytes
            data[at:at] = rng.choice(TOKENS) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 16))
        elif edit == 3:  # delete a run
            del data[at:at + rng.randint(1, 64)]
        elif edit == 4 and data:  # repeat a run
            start = rng.randrange(len(data))
            data[at:at] = data[start:start + rng.randint(1, 256)]
        else:  # overwrite a byte with a random one
            if data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
    return bytes(data)


class Hang(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: float = BOUND_S):
    def expire(signum, frame):
        raise Hang(f'an input took more than {seconds} s')
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(seed_inputs: list[bytes], runs: int, seed: int, check) -> dict:
    """``check(data)`` on ``runs`` mutations of the inputs; returns the outcomes counted by kind."""
    rng = random.Random(seed)
    outcomes = {}
    for run in range(runs):
        data = mutate(rng.choice(seed_inputs), rng)
        with bounded():
            try:
                outcome = check(data)
            except Hang:
                raise AssertionError(f'run {run} (seed {seed}) hung on {data[:200]!r}') from None
            except Exception as exc:
                raise AssertionError(f'run {run} (seed {seed}): {type(exc).__name__}: {exc} on {data[:200]!r}') from exc
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def names(err: Exception, path) -> bool:
    return str(path) in str(err)


# ---- the index -----------------------------------------------------------------------------------

RECORDS = [{'image': 'a/1.jpg', 'caption': 'a cat on a mat', 'width': 640, 'height': 480},
           {'image': 'a/2.jpg', 'annotation': 'a/2.json', 'score': 0.5, 'tags': ['x', 'y']},
           {'image': 'b/3.png', 'caption': ['first', 'second'], 'width': 64.5, 'extra': {'k': None}},
           {'image': 'b/4.png', 'caption': 'ünïcode ✓ \u200b', 'height': 12, 'flag': True}]


@pytest.mark.parametrize('suffix', ['.json', '.jsonl'])
def test_fuzzed_index_files_load_or_are_refused_naming_the_file(tmp_path, suffix):
    path = tmp_path / f'data{suffix}'
    seeds = [json.dumps(RECORDS, indent=1).encode(), json.dumps(RECORDS, separators=(',', ':')).encode()] \
        if suffix == '.json' else ['\n'.join(json.dumps(r) for r in RECORDS).encode()]

    def check(data: bytes) -> str:
        path.write_bytes(data)
        try:
            index = SampleIndex.load(path, use_cache=False)
        except IndexFormatError as err:
            assert names(err, path), err
            return 'refused'
        records = [index[i] for i in range(len(index))]
        assert all(isinstance(record, dict) for record in records)
        return 'loaded'

    outcomes = fuzz(seeds, 700, 37, check)
    assert outcomes.get('refused') and outcomes.get('loaded'), outcomes


def test_a_fuzzed_index_through_its_cache_loads_or_is_refused(tmp_path):
    path = tmp_path / 'data.json'

    def check(data: bytes) -> str:
        path.write_bytes(data)
        try:
            index = SampleIndex.load(path, cache_dir=tmp_path / 'cache')
        except IndexFormatError as err:
            assert names(err, path), err
            return 'refused'
        [index[i] for i in range(len(index))]
        index.content_digest('image'), index.unsafe_paths('image'), index.numbers('width')
        return 'loaded'

    outcomes = fuzz([json.dumps(RECORDS).encode()], 150, 38, check)
    assert outcomes.get('refused') and outcomes.get('loaded'), outcomes


# ---- caption files -------------------------------------------------------------------------------

def test_fuzzed_caption_files_give_a_caption_or_a_counted_skip_naming_the_file():
    seeds = [json.dumps({'caption': 'a dog', 're_caption': 'a brown dog', 'width': 3}).encode(),
             json.dumps({'re_caption': ['one', 'two'], 'caption': None}).encode(), b'a plain caption\n']

    def check(data: bytes) -> str:
        name = 'raw/00001/000012345.json' if data[:1] in (b'{', b'[') or random.random() < 0.5 else 'raw/1.txt'
        try:
            caption = parse_annotation(name, data, ('re_caption', 'caption'))
        except SampleError as err:
            assert names(err, name) and err.reason, err
            return err.reason
        assert isinstance(caption, str) and caption.strip()
        return 'caption'

    outcomes = fuzz(seeds, 1200, 39, check)
    assert outcomes.get('caption') and outcomes.get('bad-annotation'), outcomes


# ---- tar headers ---------------------------------------------------------------------------------

def _tar(members: dict[str, bytes], **options) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', **options) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize('step', ['index-members', 'extract'])
def test_fuzzed_tars_are_read_partly_or_failed_naming_the_tar(tmp_path, step):
    from src.prepare.extract import Extract
    from src.prepare.tar_headers import TarJob
    from src.prepare.tar_members import INDEX_MEMBERS
    members = {f'00000/{i:09d}.jpg': bytes([i]) * (100 + 37 * i) for i in range(4)}
    members.update({f'00000/{i:09d}.json': json.dumps({'caption': f'c {i}'}).encode() for i in range(4)})
    seeds = [_tar(members), _tar(members, format=tarfile.PAX_FORMAT),
             _tar({('deep/' * 30) + 'x.txt': b'long name', 'b.txt': b'b'}, format=tarfile.GNU_FORMAT)]
    processor = INDEX_MEMBERS if step == 'index-members' else Extract()
    (tmp_path / 'raw').mkdir()
    counter = iter(range(10 ** 6))

    def check(data: bytes) -> str:
        name = f'raw/{next(counter):06d}.tar'
        (tmp_path / name).write_bytes(data)
        job = TarJob(str(tmp_path), name, 'out')
        result = processor.process(job)
        if result.status == 'failed':
            assert names(result.error, job.path), result
        assert result.status in ('done', 'partial', 'failed')
        os.remove(tmp_path / name)
        return result.status

    outcomes = fuzz(seeds, 400 if step == 'index-members' else 200, 40, check)
    assert outcomes.get('failed') or outcomes.get('partial'), outcomes


# ---- latents.json --------------------------------------------------------------------------------

def test_fuzzed_latents_json_is_used_or_refused_naming_the_file(tmp_path):
    folder = str(tmp_path / 'latents')
    seeds = [json.dumps({'format': 1, 'vae': 'v', 'vae_kind': 'AutoencoderKL', 'image_size': 32, 'buckets': None,
                         'shapes': {'32x32': [4, 8, 8]}}).encode(),
             json.dumps({'format': 1, 'vae': 'v', 'image_size': 256, 'shapes': {'256x256': [4, 32, 32]},
                         'buckets': {'shapes': [[256, 256], [192, 320]], 'max_aspect': 2.0},
                         'sizes': {'index': 'ab', 'rows': 3}}).encode()]

    def check(data: bytes) -> str:
        def read(path):
            return data
        try:
            info = read_info(read, folder)
            shapes = LatentShapes.of_folder(folder, read, 32, None, iter(()))
        except (IndexFormatError, ValueError) as err:
            assert names(err, os.path.join(folder, 'latents.json')), err
            return 'refused'
        assert isinstance(info, dict) and all(isinstance(s, tuple) for s in shapes.shapes.values())
        return 'used'

    outcomes = fuzz(seeds, 800, 41, check)
    assert outcomes.get('refused') and outcomes.get('used'), outcomes


# ---- the files beside the index cache ------------------------------------------------------------

def _npy(values) -> bytes:
    out = io.BytesIO()
    np.save(out, values)
    return out.getvalue()


def test_fuzzed_selection_and_sizes_files_are_used_or_computed_again(tmp_path):
    from src.datasets.index import image_sizes, selection
    folder = tmp_path / 'select'
    folder.mkdir()
    good = {'drops.json': json.dumps({'total': 10, 'rows': True, 'buckets': True,
                                      'drops': {'counts': {'too-small': 3}, 'messages': ['3 too small']}}).encode(),
            'rows.npy': _npy(np.array([0, 2, 3, 5, 6, 8, 9], np.int64)),
            'buckets.npy': _npy(np.array([0, 1, 1, 2, 0, 3, 1], np.int16))}
    sizes = tmp_path / 'sizes.npy'
    files = sorted(good) + ['sizes']
    rng = random.Random(42)

    def check(data: bytes) -> str:
        target = rng.choice(files)
        for name, content in good.items():
            (folder / name).write_bytes(data if name == target else content)
        sizes.write_bytes(data if target == 'sizes' else _npy(np.full((10, 2), 64, np.int32)))
        kept = selection._load(folder, 10, 4)
        if kept is not None:
            rows = np.arange(10) if kept.rows is None else np.asarray(kept.rows)
            assert rows.dtype == np.int64 and ((rows >= 0) & (rows < 10)).all() and (np.diff(rows) > 0).all()
            bucket_ids = np.asarray([] if kept.bucket_ids is None else kept.bucket_ids)
            assert ((bucket_ids >= 0) & (bucket_ids < 4)).all()
        table = image_sizes._load(str(sizes), 10)
        assert table.shape == (10, 2) and table.dtype == np.int32
        return f'{target}: {"used" if kept is not None else "computed again"}'

    seeds = list(good.values()) + [_npy(np.full((10, 2), 64, np.int32))]
    outcomes = fuzz(seeds, 800, 43, check)
    assert any('computed again' in outcome for outcome in outcomes), outcomes


def test_fuzzed_prompt_ids_stores_are_rebuilt_or_refuse_the_sample_naming_the_store(tmp_path):
    from src.datasets.index.prompt_ids import DamagedStore, _map
    folder = tmp_path / 'prompt-ids'
    folder.mkdir()
    lengths = np.array([3, 0, 5, 2, 4])
    good = {'ids.int32': np.arange(lengths.sum(), dtype='<i4').tobytes(),
            'offsets.npy': _npy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
            'known.npy': _npy(lengths > 0)}
    rng = random.Random(44)

    def check(data: bytes) -> str:
        target = rng.choice(sorted(good))
        for name, content in good.items():
            (folder / name).write_bytes(data if name == target else content)
        try:
            store = _map(folder, 5, 100)
        except DamagedStore as err:
            assert names(err, folder), err
            return 'rebuilt'
        refused = 0
        for row in range(5):
            try:
                ids = store.get(row)
            except SampleError as err:
                assert err.reason == 'bad-prompt-ids' and names(err, folder), err
                refused += 1
                continue
            assert ids is None or (ids.dtype == np.int32 and ((ids >= 0) & (ids < 100)).all())
        del store
        return 'samples refused' if refused else 'used'

    outcomes = fuzz(list(good.values()), 600, 45, check)
    assert outcomes.get('rebuilt'), outcomes


def test_a_fuzzed_digests_file_gives_the_digests_of_the_index(tmp_path):
    source = tmp_path / 'data.json'
    source.write_text(json.dumps([{'image': '../x.jpg'}, {'image': 'a.jpg'}, {'image': '/etc/y.jpg'}]))
    index = SampleIndex.load(source)
    expected = (index.content_digest('image'), index.unsafe_paths('image').tolist())
    sidecar = index.cache.with_name(f'{index.cache.name}.digests.json')
    seed = sidecar.read_bytes()

    def check(data: bytes) -> str:
        sidecar.write_bytes(data)
        fresh = SampleIndex.load(source)
        assert (fresh.content_digest('image'), fresh.unsafe_paths('image').tolist()) == expected
        return 'same'

    fuzz([seed], 500, 46, check)
