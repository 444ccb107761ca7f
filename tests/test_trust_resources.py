"""Resource bombs in a download, tried as a hostile user would: each one is bounded (never minutes
or gigabytes for one sample), counted and named; and the small traps of the same round (a caption of
zero-width spaces, a zero-byte .pt, a gzip file named .tar)."""
from __future__ import annotations

import json
import random

import pytest
import torch

from src.datasets.index.captions import MAX_CAPTION_BYTES, cut_caption, is_blank
from src.datasets.errors import SampleError
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.datasets.index.token_ids import TokenIds
from test_untrusted_input import good_image


@pytest.fixture
def dataset_over(tmp_path, tokenizer, prompt_template):
    """A dataset over ``records`` (data.json) with images in ``tmp_path/images``, captions in ``tmp_path/caps``."""
    (tmp_path / 'images').mkdir()
    (tmp_path / 'caps').mkdir()

    def make(records, **options):
        (tmp_path / 'data.json').write_text(json.dumps(records))
        return CaptionDataset(str(tmp_path / 'data.json'), tokenizer=tokenizer, prompt_template=prompt_template,
                              **{'image_folder': str(tmp_path / 'images'), 'cap_folder': str(tmp_path / 'caps'),
                                 'image_size': 32, 'unconditional': 0, 'seed': 0, **options})
    return make


def failure(dataset, idx: int) -> SampleError:
    with pytest.raises(SampleError) as err:
        dataset.prepare_data(idx)
    return err.value


@pytest.fixture
def longest_text(monkeypatch):
    """The longest text the tokenizer was given, as the test goes."""
    seen = [0]
    one = TokenIds.one

    def spy(self, text):
        seen[0] = max(seen[0], len(text))
        return one(self, text)
    monkeypatch.setattr(TokenIds, 'one', spy)
    return seen


# ---- a caption file of tens of MB ---------------------------------------------------------------
def test_a_caption_file_of_tens_of_mb_is_refused_unread_and_counted(tmp_path, dataset_over, monkeypatch):
    from src.datasets.storage import files
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(3)]
    for i, record in enumerate(records):
        del record['caption']
        record['annotation'] = f'{i}.txt'
        (tmp_path / 'caps' / f'{i}.txt').write_text(f'caption {i}')
    with open(tmp_path / 'caps' / '1.txt', 'w') as file:  # 24 MB, one line
        file.write('word ' * (24 << 18))
    dataset = dataset_over(records, cap_source='caption')
    reads, read_bounded = [], files._read_bounded
    monkeypatch.setattr(files, '_read_bounded', lambda fd, path, *rest: reads.append(path) or read_bounded(fd, path, *rest))
    err = failure(dataset, 1)
    assert not [path for path in reads if path.endswith('1.txt')]  # its size said enough
    assert err.reason == 'too-large' and '1.txt' in str(err) and str(MAX_CAPTION_BYTES) in str(err)
    dataset[1]  # replaced, and counted
    assert dataset.failures['too-large'] >= 1


@pytest.mark.parametrize('shape', ['words', 'one line of one word', 'lines', 'punctuation', 'leading blanks'])
def test_a_huge_caption_is_cut_before_tokenizing_and_gives_the_same_ids(tmp_path, dataset_over, shape,
                                                                        longest_text):
    rng = random.Random(shape)
    words = [''.join(rng.choice('abcdefghij') for _ in range(rng.randint(1, 12))) for _ in range(40_000)]
    caption = {'words': ' '.join(words), 'one line of one word': ''.join(words),
               'lines': '\n'.join(' '.join(words[i:i + 7]) for i in range(0, len(words), 7)),
               'punctuation': '.\n\n'.join(words) + '!',
               'leading blanks': ' ' * 100_000 + ' '.join(words)}[shape]
    records = [good_image(tmp_path / 'images', '0.jpg')]
    records[0]['caption'] = caption
    for truncation in ('ids', 'caption'):
        dataset = dataset_over(records, max_length=64, truncation=truncation)
        bound = 2 * dataset.max_length * dataset._tokens().longest_token
        longest_text[0] = 0
        ids = dataset.prepare_data(0)['input_ids']
        assert longest_text[0] < 4 * bound + 1000  # never the megabytes of the caption
        if shape != 'one line of one word':  # a single word of megabytes is cut hard: its ids may differ
            if truncation == 'ids':
                whole = dataset._encode(dataset.prompt_of(caption.strip()))[:dataset.max_length]
            else:
                whole = dataset._fit_caption(caption.strip())
            assert ids.tolist() == whole.tolist()
        assert len(ids) == dataset.max_length or truncation == 'caption'


def test_an_image_to_text_answer_of_megabytes_is_cut_before_tokenizing_with_the_same_ids(tmp_path, tokenizer,
                                                                                        monkeypatch):
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE
    from src.datasets.understanding.caption_datasets import CaptionDataset as ImageToText
    words = ' '.join(f'w{i % 977}x' for i in range(60_000))
    (tmp_path / 'images').mkdir()
    records = [dict(good_image(tmp_path / 'images', '0.jpg'), caption=words)]
    (tmp_path / 'data.json').write_text(json.dumps(records))
    dataset = ImageToText(str(tmp_path / 'data.json'), str(tmp_path / 'images'), 32, tokenizer=tokenizer,
                          template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen_chat),
                          max_length=64, image_length=8, seed=0)
    cut = dataset.conversation_of(words, random.Random(0))
    assert len(cut['conversation'][0]['output']) < len(words) // 20
    monkeypatch.setattr(ImageToText, 'cut_caption', lambda self, caption: caption.strip())
    whole = dataset.conversation_of(words, random.Random(0))
    assert cut['input_ids'] == whole['input_ids'] and cut['labels'] == whole['labels']


def test_a_caption_file_with_a_number_of_thousands_of_digits_is_a_bad_annotation(tmp_path, dataset_over):
    good_image(tmp_path / 'images', '0.jpg')
    records = [{'image': '0.jpg', 'annotation': '0.json'}]
    (tmp_path / 'caps' / '0.json').write_text('{"caption": 1' + '0' * 100_000 + '}')
    err = failure(dataset_over(records), 0)
    assert err.reason == 'bad-annotation' and '0.json' in str(err) and '000000' not in str(err)


def test_short_captions_are_not_cut():
    assert cut_caption('  a short caption \n', 100) == 'a short caption'
    text = 'x ' * 60
    assert cut_caption(text, 200) == text.strip()
    cut = cut_caption('ab ' * 100, 30)  # after the word that follows character 30
    assert cut.startswith(('ab ' * 10).strip()) and len(cut) <= 40 and not cut.endswith(' ')


# ---- a caption of zero-width spaces -------------------------------------------------------------
@pytest.mark.parametrize('caption', ['\u200b' * 40, ' \u200b\u200c\u200d\u2060\ufeff \n', '\u200e\u200f\x00 ',
                                     '\u3164\u2800\u200b' * 1000])
def test_a_caption_of_invisible_characters_is_an_empty_caption(tmp_path, dataset_over, caption):
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(2)]
    records[1]['caption'] = caption
    dataset = dataset_over(records)
    err = failure(dataset, 1)
    assert err.reason == 'empty-caption' and '1.jpg' in str(err)
    assert dataset_over(records, empty_captions='keep').prepare_data(1)['input_ids'].tolist() == \
        dataset_over(records, empty_captions='keep').process_text('', random.Random(0))['input_ids'].tolist()


def test_visible_text_with_invisible_characters_is_a_caption():
    assert not is_blank('\u200bcat') and not is_blank('a\u200b') and not is_blank('東京') and not is_blank('\u3000x')
    assert is_blank('') and is_blank(' \t\n') and is_blank('\u200b\u3000\u200b')


# ---- a compressed latent record that inflates 1000x; a zero-byte .pt ----------------------------
def deflated(tensor, claim: dict | None = None) -> bytes:
    """``torch.save(tensor)`` with its records deflated (a zip archive may hold them so); ``claim``
    overwrites the sizes the archive's directory gives for records ending so (a lying header)."""
    import io
    import struct
    import zipfile
    saved = io.BytesIO()
    torch.save(tensor, saved)
    source, out = zipfile.ZipFile(saved), io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info.filename))
    data = bytearray(out.getvalue())
    for suffix, size in (claim or {}).items():
        for signature, name_at, size_at in ((b'PK\x01\x02', 28, 24), (b'PK\x03\x04', 26, 22)):
            at = data.find(signature)
            while at != -1:
                length = struct.unpack_from('<H', data, at + name_at)[0]
                start = at + (46 if signature == b'PK\x01\x02' else 30)
                if bytes(data[start:start + length]).endswith(suffix.encode()):
                    struct.pack_into('<I', data, at + size_at, size)
                at = data.find(signature, at + 1)
    return bytes(data)


@pytest.fixture
def latent_dataset(tmp_path, dataset_over):
    """Three samples with latents; ``make(bytes of 1.jpg.pt)`` gives the dataset."""
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(3)]
    latents = tmp_path / 'latents'
    latents.mkdir()
    for record in records:
        torch.save(torch.zeros(4, 4, 4), latents / f'{record["image"]}.pt')

    def make(data: bytes):
        (latents / '1.jpg.pt').write_bytes(data)
        return dataset_over(records, image_latents_folder=str(latents))
    return make


def test_a_latent_that_inflates_a_thousandfold_is_refused_before_inflating(latent_dataset):
    import resource
    bomb = deflated(torch.zeros(1 << 28, dtype=torch.uint8))  # 256 MB of zeros in about 250 kB
    assert len(bomb) < (1 << 28) // 500
    dataset = latent_dataset(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = failure(dataset, 1)
    assert err.reason == 'too-large' and '1.jpg.pt' in str(err) and 'compressed' in str(err)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < (64 << 10)  # kB: never inflated
    assert dataset.prepare_data(0)['image_latents'].shape == (4, 4, 4)
    dataset[1]
    assert dataset.failures['too-large'] >= 1


def test_a_latent_whose_archive_claims_less_than_it_holds_never_inflates_more(latent_dataset):
    bomb = deflated(torch.zeros(1 << 26, dtype=torch.uint8), claim={'data/0': 4096})
    err = failure(latent_dataset(bomb), 1)
    assert err.reason == 'bad-tensor' and '1.jpg.pt' in str(err)


def test_a_small_deflated_latent_still_loads(latent_dataset):
    latent = torch.arange(64, dtype=torch.float32).reshape(4, 4, 4)
    assert torch.equal(latent_dataset(deflated(latent)).prepare_data(1)['image_latents'], latent)


def test_a_latent_archive_of_a_million_records_is_refused_before_its_directory_is_parsed(latent_dataset):
    import io
    import zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w') as archive:
        for i in range(20_000):
            archive.writestr(f'archive/data/{i}', b'')
    err = failure(latent_dataset(out.getvalue()), 1)
    assert err.reason == 'too-large' and 'directory' in str(err) and '1.jpg.pt' in str(err)


@pytest.mark.parametrize('data, reason, words', [
    (b'', 'empty-file', 'empty file (0 bytes)'),
    (b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.', 'bad-tensor', 'not a torch.save archive'),
    (b'PK\x03\x04' + b'\0' * 60, 'bad-tensor', 'damaged torch.save archive')], ids=['empty', 'legacy', 'damaged'])
def test_an_empty_or_foreign_pt_is_a_counted_skip_with_its_reason(latent_dataset, data, reason, words):
    dataset = latent_dataset(data)
    err = failure(dataset, 1)
    assert err.reason == reason and '1.jpg.pt' in str(err) and words in str(err)
    dataset[1]
    assert dataset.failures[reason] >= 1


# ---- a progressive JPEG of thousands of scans ---------------------------------------------------
def progressive_jpeg(scans: int, *, exif_thumbnail: bool = False) -> bytes:
    """A 120x100 progressive JPEG of ``scans`` scans: libjpeg's 10, then copies of one AC scan
    (libjpeg-turbo decodes each again, with a warning), as a hostile file repeats tiny ones."""
    import io
    import numpy as np
    from PIL import Image
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8))
    out = io.BytesIO()
    picture.save(out, 'JPEG', progressive=True)
    data = out.getvalue()
    starts = [data.index(b'\xff\xda')]
    while (at := data.find(b'\xff\xda', starts[-1] + 2)) != -1:
        starts.append(at)
    end = data.rindex(b'\xff\xd9')
    assert len(starts) == 10
    data = data[:end] + data[starts[1]:starts[2]] * (scans - 10) + data[end:]
    if exif_thumbnail:  # a segment before the scans that holds a whole JPEG, its scan markers included
        thumbnail = io.BytesIO()
        picture.resize((16, 16)).save(thumbnail, 'JPEG', progressive=True)
        segment = b'Exif\0\0' + thumbnail.getvalue()
        data = data[:2] + b'\xff\xe1' + (len(segment) + 2).to_bytes(2, 'big') + segment + data[2:]
        assert data.count(b'\xff\xda') == scans + 10
    return data


def test_a_jpeg_of_thousands_of_scans_is_a_counted_bad_image_never_decoded(tmp_path, dataset_over, monkeypatch):
    from PIL import ImageFile
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(3)]
    (tmp_path / 'images' / '1.jpg').write_bytes(progressive_jpeg(5000))
    dataset = dataset_over(records)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self: decoded.append(self) or None)
    err = failure(dataset, 1)
    assert err.reason == 'bad-image' and '1.jpg' in str(err) and '5000 scans' in str(err) and not decoded
    monkeypatch.undo()
    dataset[1]
    assert dataset.failures['bad-image'] >= 1


def test_a_large_jpeg_may_have_fewer_scans(tmp_path):
    import io
    import numpy as np
    from PIL import Image
    from src.datasets.storage.images import MAX_JPEG_SCANS, MIN_JPEG_SCANS, jpeg_scans, max_jpeg_scans, open_image
    assert max_jpeg_scans(120 * 100) == max_jpeg_scans(2048 * 2048) == MAX_JPEG_SCANS
    assert max_jpeg_scans(4096 * 4096) == max_jpeg_scans(8192 * 8192) == MIN_JPEG_SCANS
    assert MIN_JPEG_SCANS < max_jpeg_scans(3000 * 2000) < MAX_JPEG_SCANS
    out = io.BytesIO()
    Image.fromarray(np.zeros((4096, 4096, 3), np.uint8)).save(out, 'JPEG', progressive=True)
    data = out.getvalue()
    second = data.index(b'\xff\xda', data.index(b'\xff\xda') + 2)
    scan, end = data[second:data.index(b'\xff\xda', second + 2)], data.rindex(b'\xff\xd9')
    assert jpeg_scans(data) == 10
    with pytest.raises(SampleError, match='a JPEG of 33 scans, more than the 32 a 4096x4096'):
        open_image(data[:end] + scan * 23 + data[end:], 'big.jpg')


def test_counting_scans_steps_over_a_header_of_endless_markers_in_bounded_time():
    from src.datasets.storage.images import jpeg_scans
    data = progressive_jpeg(10)
    hostile = data[:2] + b'\xff\xd0' * 2_000_000 + b'\xff' * 1_000_000 + data[2:]
    assert jpeg_scans(hostile) == 10  # the whole file's markers: stepping stops after a few thousand


@pytest.mark.parametrize('scans', [10, 99, 100, 101])
def test_the_scan_limit_holds_just_under_and_over(tmp_path, dataset_over, scans):
    from src.datasets.storage.images import MAX_JPEG_SCANS, jpeg_scans
    data = progressive_jpeg(scans, exif_thumbnail=scans == 10)
    assert jpeg_scans(data) == scans  # a thumbnail's scan in the EXIF block is not one of the picture's
    records = [good_image(tmp_path / 'images', '0.jpg')]
    (tmp_path / 'images' / '0.jpg').write_bytes(data)
    dataset = dataset_over(records)
    if scans <= MAX_JPEG_SCANS:
        assert dataset.prepare_data(0)['pixel_values'].shape == (3, 32, 32)
    else:
        assert failure(dataset, 0).reason == 'bad-image'


# ---- 16-bit and float pictures ------------------------------------------------------------------
def grey_pictures(side: int):
    import numpy as np
    from PIL import Image
    count = side * side
    yield 'I;16', Image.frombytes('I;16', (side, side), (np.arange(count, dtype=np.uint32) * 7 % 65536)
                                  .astype('<u2').tobytes())
    floats = (np.arange(count, dtype=np.float32) / count * 1.2 - 0.1).reshape(side, side)
    floats[0, :3] = np.nan, np.inf, -np.inf
    yield 'F', Image.fromarray(floats, 'F')
    yield 'I', Image.fromarray((np.arange(count, dtype=np.int32) * 9973 - 5000).reshape(side, side), 'I')
    yield 'I small', Image.fromarray((np.arange(count, dtype=np.int32) % 65536).reshape(side, side), 'I')


def test_16_bit_and_float_pictures_convert_as_before_without_float64_copies():
    import tracemalloc
    import warnings
    import numpy as np
    from src.datasets.sample.image_io import to_rgb
    for name, picture in grey_pictures(64):  # the values: those of the float64 formula
        values = np.asarray(picture, dtype=np.float64)
        top = float(values.max(initial=0))
        scale = 255.0 if picture.mode == 'F' else 255 / 65535 if picture.mode.startswith('I;16') or top <= 65535 \
            else 255 / top
        with warnings.catch_warnings(), np.errstate(invalid='ignore'):
            warnings.simplefilter('ignore')
            expected = np.nan_to_num(np.clip(values * scale + 0.5, 0, 255), nan=0).astype(np.uint8)
        assert np.array_equal(np.asarray(to_rgb(picture))[..., 0], expected), name
    side = 2048
    for name, picture in grey_pictures(side):
        picture.load()
        tracemalloc.start()
        to_rgb(picture)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < side * side * 8, (name, peak)  # less than one float64 copy (three were made)


# ---- an index whose records each bring their own keys -------------------------------------------
def test_an_index_whose_records_bring_their_own_keys_is_refused_naming_the_file(tmp_path, dataset_over):
    from src.datasets.errors import IndexFormatError
    from src.datasets.index.sample_index import MAX_INDEX_KEYS
    records = [{'image': f'{i}.jpg', 'caption': 'c', f'key{i}': i} for i in range(50_000)]  # 1.6 MB
    with pytest.raises(IndexFormatError) as err:
        dataset_over(records)
    message = str(err.value)
    assert 'data.json' in message and f'record {MAX_INDEX_KEYS - 2}' in message and "'key254'" in message
    assert not [p for p in tmp_path.iterdir() if 'sampleindex' in p.name and p.stat().st_size > 1 << 20]


def test_an_index_of_many_shared_keys_is_read(tmp_path):
    from src.datasets.index.sample_index import MAX_INDEX_KEYS, SampleIndex
    shared = {f'field{k}': k for k in range(MAX_INDEX_KEYS - 1)}
    (tmp_path / 'data.jsonl').write_text(''.join(json.dumps({'image': f'{i}.jpg', **shared}) + '\n'
                                                 for i in range(100)))
    index = SampleIndex.load(tmp_path / 'data.jsonl')
    assert len(index) == 100 and len(index.columns) == MAX_INDEX_KEYS and index[99]['field3'] == 3


@pytest.mark.parametrize('layout', ['folder of arrays', 'parquet', 'one record of many keys'])
def test_the_key_bound_holds_across_files_and_in_tables(tmp_path, layout):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from src.datasets.errors import IndexFormatError
    from src.datasets.index.sample_index import MAX_INDEX_KEYS, SampleIndex
    if layout == 'folder of arrays':
        path = tmp_path / 'index'
        path.mkdir()
        for part in range(3):  # 150 keys each: the second file passes the bound
            (path / f'{part}.json').write_text(json.dumps([{'image': 'a.jpg', **{f'p{part}k{k}': 1 for k in range(150)}}]))
        named = '1.json'
    elif layout == 'parquet':
        path = tmp_path / 'data.parquet'
        pq.write_table(pa.table({f'c{k}': [1] for k in range(MAX_INDEX_KEYS + 1)}), path)
        named = 'data.parquet'
    else:
        path = tmp_path / 'data.json'
        path.write_text(json.dumps([{'image': 'a.jpg'}, {f'k{k}': 1 for k in range(10_000)}]))
        named = 'record 1'
    with pytest.raises(IndexFormatError, match=named):
        SampleIndex.load(path)


# ---- a gzip file named .tar ---------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['gzip tar', 'gzip data', 'bzip2', 'zip'])
@pytest.mark.parametrize('no_extract', [False, True])
def test_a_compressed_file_named_tar_says_what_it_is_and_how_to_mend_it(tmp_path, kind, no_extract):
    import bz2
    import gzip
    import zipfile
    from src.prepare.datasets import prepare_blip3o60k
    from src.synthetic.downloads import MAKERS
    root = tmp_path / 'blip'
    MAKERS['blip3o60k'](root, n=4, faults=False)
    tar = sorted((root / 'raw').glob('*.tar'))[0]
    plain = tar.read_bytes()
    if kind == 'zip':
        with zipfile.ZipFile(tar, 'w') as archive:
            archive.writestr('a.txt', 'a')
    else:
        tar.write_bytes({'gzip tar': gzip.compress, 'gzip data': lambda d: gzip.compress(b'x' * 2048),
                         'bzip2': bz2.compress}[kind](plain))
    from src.prepare.tar_members import INDEX_MEMBERS
    options = {'step': INDEX_MEMBERS} if no_extract else {}
    report = prepare_blip3o60k(str(root), num_processes=1, **options)
    assert report.exit_code() != 0
    error = json.dumps(report.to_dict() if hasattr(report, 'to_dict') else vars(report), default=str)
    assert 'invalid header' not in error and tar.name in error
    expected = {'gzip tar': ['a gzip-compressed tar (a .tar.gz named .tar)', 'gunzip'],
                'gzip data': ['gzip-compressed data, not a tar'],
                'bzip2': ['bzip2-compressed', 'bunzip2'], 'zip': ['a zip archive, not a tar']}[kind]
    assert all(words in error for words in expected), error
    if kind == 'gzip tar':  # mended as the message says, the tar is prepared
        compressed = tar.with_name(tar.name + '.gz')
        tar.rename(compressed)
        tar.write_bytes(gzip.decompress(compressed.read_bytes()))
        compressed.unlink()
        assert prepare_blip3o60k(str(root), num_processes=1, **options).exit_code() == 0


# ---- the S3 prefetch bound ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def bucket():
    """moto's standalone S3 server on 127.0.0.1, a bucket of twelve 100 kB objects, and a petrel config."""
    from moto.server import ThreadedMotoServer
    import boto3
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f'http://{host}:{port}'
    client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='a', aws_secret_access_key='s',
                          region_name='us-east-1')
    client.create_bucket(Bucket='data')
    for i in range(12):
        client.put_object(Bucket='data', Key=f'objects/{i}.jpg', Body=bytes([i]) * 100_000)
    yield endpoint
    server.stop()


@pytest.mark.slow
def test_the_prefetch_keeps_within_its_bound_and_fetches_each_object_once(bucket, tmp_path):
    from src.datasets.storage.object_store import ObjectFolder
    config = tmp_path / 'petreloss.conf'
    config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = a\nsecret_key = s\nhost_base = {bucket}\n')
    folder = ObjectFolder('s3://data/objects', str(config))
    folder._kept.limit = 350_000  # room for three of the batch's objects
    gets, most_kept = [], [0]
    folder.client().meta.events.register('before-call.s3.GetObject', lambda params, **_: gets.append(params['url_path'].split('/', 1)[1]))
    put = folder._kept.put

    def watched_put(path, data):
        put(path, data)
        most_kept[0] = max(most_kept[0], folder._kept._bytes)
    folder._kept.put = watched_put
    paths = [f's3://data/objects/{i}.jpg' for i in range(12)]
    folder.prefetch([[path] for path in paths])
    assert len(gets) == 3 and most_kept[0] <= 350_000  # only what the bound holds is fetched ahead
    for i, path in enumerate(paths):
        assert folder.read(path) == bytes([i]) * 100_000
    assert sorted(gets) == sorted(f'objects/{i}.jpg' for i in range(12))  # each once: none evicted, fetched again

    gets.clear()  # a batch whose first objects were fetched ahead already (a sample read alone first)
    folder.prefetch([[paths[0]]])
    folder.prefetch([[path] for path in paths[:4]])
    assert sorted(gets) == sorted(f'objects/{i}.jpg' for i in range(3))  # objects 0-2 fill the bound
    assert [folder.read(path) == bytes([i]) * 100_000 for i, path in enumerate(paths[:4])] == [True] * 4
    assert len(gets) == 4

    folder = ObjectFolder('s3://data/objects', str(config))  # objects larger than the whole bound
    folder._kept.limit = 50_000
    gets.clear()
    folder.client().meta.events.register('before-call.s3.GetObject', lambda params, **_: gets.append(params['url_path']))
    folder.prefetch([[paths[0]], [paths[1]]])
    assert len(gets) == 1 and len(folder._kept) == 0  # the first tells the size: dropped, and no more fetched
    folder.prefetch([[paths[2]], [paths[3]]])
    assert len(gets) == 1  # known now: nothing fetched ahead


def test_fetching_within_a_room_of_known_sizes_fetches_only_what_fits():
    import threading
    from src.datasets.storage.object_store import PREFETCH_THREADS, fetch_within
    running, most, lock = [0], [0], threading.Lock()

    def fetch(job):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        import time
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return b'x' * job

    sizes = [10] * 30 + [500] + [10] * 5
    fetched = [job for job, _ in fetch_within(fetch, sizes, 305, size=lambda job: job)]
    assert fetched == [10] * 30 and most[0] <= PREFETCH_THREADS
    assert [job for job, _ in fetch_within(fetch, [50, 50, 50], 120)] == [50, 50]  # sizes learnt from the first
    assert list(fetch_within(fetch, [10], 0)) == []
