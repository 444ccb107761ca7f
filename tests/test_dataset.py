"""CaptionDataset / BLIP3oDataset on data made here: every caption source and index format, the
prompt template, pixels / latents / tokens, mmengine building, randomness, and every bad input."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pandas as pd
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import InfiniteSampler
from mmengine.registry import DATASETS
from mmengine.runner import Runner
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from conftest import PROCESSORS_CONFIG
from src.datasets.collate_functions import collate_func_gen, collate_func_gen_latents, collate_func_gen_tokens
from src.datasets import failure_policy
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.sample import records as kept_records
from src.datasets.text2image.blip3_o import BLIP3oDataset
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import (EXTENSIONS, FORMAT_MODES, decompression_bomb_png, encode_image,
                                  not_an_image, truncated)

IMAGE_SIZE = 32
GOOD_SIZES = [(120, 90), (97, 211), (300, 300), (640, 480)]


# ---- helpers ------------------------------------------------------------------------------------
def write(path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def write_good_images(folder, count=3, size=(160, 100)) -> list[dict]:
    """``count`` JPEGs under ``folder`` and their records with inline captions."""
    records = []
    for i in range(count):
        write(folder / f'good{i}.jpg', encode_image(*size, seed=i))
        records.append({'image': f'good{i}.jpg', 'caption': f'good picture {i}'})
    return records


def prompt(template, caption=None, img_start=True) -> str:
    """The prompt upstream builds, written out by hand."""
    body = template['CFG'] if caption is None else template['GENERATION'].format(input=caption.strip())
    return template['INSTRUCTION'].format(input=body) + (template['IMG_START_TOKEN'] if img_start else '')


def expected_ids(tokenizer, text) -> list[int]:
    return tokenizer.encode(text, return_tensors='pt', add_special_tokens=True)[0].tolist()


@pytest.fixture
def make_dataset(tmp_path, tokenizer, prompt_template):
    """A dataset over ``records`` (written as ``data.json``) and images in ``tmp_path/images``."""
    def make(records, cls=CaptionDataset, **kwargs):
        data_path = kwargs.pop('data_path', None) or write(tmp_path / 'data.json', json.dumps(records))
        options = dict(data_path=data_path, image_folder=str(tmp_path / 'images'), tokenizer=tokenizer,
                       prompt_template=prompt_template, image_size=IMAGE_SIZE, unconditional=0.0, seed=0)
        (tmp_path / 'images').mkdir(exist_ok=True)
        return cls(**{**options, **kwargs})
    return make


@pytest.fixture
def logged(monkeypatch):
    """What the dataset logs, as (level, message)."""
    lines = []
    for module in (kept_records, failure_policy):
        monkeypatch.setattr(module, 'print_log', lambda msg, logger=None, level=None: lines.append((level, msg)))
    return lines


def warnings_of(lines):
    return [msg for level, msg in lines if level == 30]


def stream(dataset, seed_torch=None, count=8):
    """What each of two DataLoader workers returns for the same index, as comparable tuples."""
    if seed_torch is not None:
        torch.manual_seed(seed_torch)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, sampler=[0] * count)
    items = [(tuple(s['input_ids'].tolist()), s['pixel_values'].sum().item()) for s in loader]
    return items[0::2], items[1::2]  # round robin: worker 0, worker 1


# ---- caption sources and index formats ----------------------------------------------------------
def test_every_format_and_mode(tmp_path, make_dataset, tokenizer, prompt_template):
    records = []
    cases = [(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]
    for i, (fmt, mode) in enumerate(cases):
        name = f'{fmt.lower()}/{mode}{EXTENSIONS[fmt]}'
        write(tmp_path / 'images' / name, encode_image(*GOOD_SIZES[i % 4], fmt=fmt, mode=mode, seed=i))
        records.append({'image': name, 'caption': f' a {mode} {fmt} picture '})
    dataset = make_dataset(records)
    assert len(dataset) == len(cases)
    for i, record in enumerate(records):
        sample = dataset[i]
        assert set(sample) == {'pixel_values', 'input_ids', 'image_dir', 'image_file', 'type'}
        pixels = sample['pixel_values']
        assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == torch.float32
        assert -1.0 <= pixels.min() < pixels.max() <= 1.0
        assert sample['image_file'] == record['image'] and sample['image_dir'] == str(tmp_path / 'images')
        assert sample['type'] == 'text2image'
        assert sample['input_ids'].dtype == torch.int64 and sample['input_ids'].dim() == 1
        assert sample['input_ids'].tolist() == expected_ids(tokenizer, prompt(prompt_template, record['caption']))
    assert not dataset.failures


def test_json_annotation_in_cap_folder(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images')
    for record in records:
        record['annotation'] = record['image'].replace('.jpg', '.json')
        write(tmp_path / 'captions' / record['annotation'],
              json.dumps({'prompt': record.pop('caption'), 'url': 'http://example.com'}))
    dataset = make_dataset(records, cap_folder=str(tmp_path / 'captions'), cap_source=['caption', 'prompt'])
    assert dataset.tokenizer.decode(dataset[1]['input_ids']).count('good picture 1') == 1


@pytest.mark.parametrize('cls', [CaptionDataset, BLIP3oDataset])
def test_txt_annotation(tmp_path, make_dataset, cls):
    records = write_good_images(tmp_path / 'raw')
    for record in records:
        record['annotation'] = record['image'].replace('.jpg', '.txt')
        write(tmp_path / 'raw' / record['annotation'], f"\n  {record.pop('caption')}  \n")
    dataset = make_dataset(records, cls=cls, image_folder=str(tmp_path / 'raw'), cap_folder=str(tmp_path / 'raw'))
    text = dataset.tokenizer.decode(dataset[2]['input_ids'])
    assert 'Generate an image: good picture 2<|im_end|>' in text


def test_blip3o_reads_any_annotation_as_text(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=1)
    records[0]['annotation'] = 'good0.caption'
    write(tmp_path / 'images' / 'good0.caption', records[0].pop('caption'))
    blip3o = make_dataset(records, cls=BLIP3oDataset, cap_folder=str(tmp_path / 'images'))
    assert 'good picture 0' in blip3o.tokenizer.decode(blip3o[0]['input_ids'])
    with pytest.raises(SampleError, match="unsupported annotation type '.caption'"):
        make_dataset(records, cap_folder=str(tmp_path / 'images')).prepare_data(0)


def test_parquet_index_with_filename_column(tmp_path, make_dataset, logged):
    """The dalle3 table: ``filename`` holds the image, sizes let the index drop small images up front."""
    rows = []
    for i, (w, h) in enumerate([(120, 90), (60, 200), (97, 211)]):
        write(tmp_path / 'data' / f'{i:05d}.png', encode_image(w, h, fmt='PNG', seed=i))
        rows.append({'width': w, 'height': h, 'caption': f'synthetic {i}', 'filename': f'{i:05d}.png'})
    data_path = tmp_path / 'dalle3.parquet'
    pd.DataFrame(rows).to_parquet(data_path, index=False)
    dataset = make_dataset(None, data_path=str(data_path), image_folder=str(tmp_path / 'data'), image_key='filename')
    assert len(dataset) == 2
    assert [dataset[i]['image_file'] for i in range(2)] == ['00000.png', '00002.png']
    assert any('1 of 3 records' in msg and 'no larger than 80' in msg and 'record #1' in msg
               for msg in warnings_of(logged))


@pytest.mark.parametrize('layout', ['jsonl', 'folder'])
def test_jsonl_and_folder_indexes(tmp_path, make_dataset, layout):
    records = write_good_images(tmp_path / 'images', count=4)
    if layout == 'jsonl':
        data_path = write(tmp_path / 'data.jsonl', ''.join(json.dumps(r) + '\n' for r in records))
    else:
        write(tmp_path / 'index' / 'part-0.json', json.dumps(records[:3]))
        write(tmp_path / 'index' / 'part-1.json', json.dumps(records[3:]))
        data_path = str(tmp_path / 'index')
    dataset = make_dataset(None, data_path=data_path)
    assert [dataset[i]['image_file'] for i in range(len(dataset))] == [r['image'] for r in records]


# ---- the prompt ---------------------------------------------------------------------------------
def test_template_truncation_and_img_start(tmp_path, make_dataset, tokenizer, prompt_template):
    records = write_good_images(tmp_path / 'images', count=1)
    expected = prompt(prompt_template, 'good picture 0')
    sample = make_dataset(records)[0]
    assert tokenizer.decode(sample['input_ids']) == expected
    full = expected_ids(tokenizer, expected)
    assert make_dataset(records, max_length=5)[0]['input_ids'].tolist() == full[:5]
    no_start = make_dataset(records, prompt_template={**prompt_template, 'IMG_START_TOKEN_FOR_GENERATION': False})
    assert tokenizer.decode(no_start[0]['input_ids']) == prompt(prompt_template, 'good picture 0', img_start=False)
    always_cfg = make_dataset(records, unconditional=1.0)[0]
    assert always_cfg['input_ids'].tolist() == expected_ids(tokenizer, prompt(prompt_template))


def test_caption_dropout_rate(tmp_path, make_dataset, tokenizer, prompt_template):
    dataset = make_dataset(write_good_images(tmp_path / 'images', count=1))
    cfg_ids = expected_ids(tokenizer, prompt(prompt_template))

    def dropped(rate, draws, rng):
        dataset.unconditional = rate
        return sum(dataset.process_text('a cat', rng)['input_ids'].tolist() == cfg_ids for _ in range(draws))

    rng = random.Random(1)
    n, p = 2000, 0.3
    bound = 4 * (n * p * (1 - p)) ** 0.5  # four standard deviations of the binomial count
    assert abs(dropped(p, n, rng) - n * p) < bound
    assert dropped(0.0, 200, rng) == 0
    assert dropped(1.0, 200, rng) == 200


HEAVY = ('pandas', 'matplotlib', 'diffusers', 'boto3', 'botocore', 'img2dataset', 'numba', 'xtuner', 'cv2')


def test_a_dataset_on_a_cached_index_imports_nothing_heavy(tmp_path, tokenizer, tokenizer_path, prompt_template):
    # Every rank and every spawned worker builds the dataset: what it imports, each of them pays
    # (pandas alone was 0.1 s and 60 MB, numba 0.4 s and 169 MB). A fresh process; what importing
    # the tokenizer brings (transformers imports accelerate, which imports boto3) is not the dataset's.
    write(tmp_path / 'data.json', json.dumps(write_good_images(tmp_path / 'images')))
    (tmp_path / 'latents').mkdir()
    options = dict(data_path=str(tmp_path / 'data.json'), prompt_template=prompt_template, image_size=64)
    code = f"""if True:
        import sys
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({tokenizer_path!r})
        before = set(sys.modules)
        from src.datasets.text2image.caption_datasets import CaptionDataset
        options = dict({options!r}, tokenizer=tokenizer, seed=0)
        CaptionDataset(image_latents_folder={str(tmp_path / 'latents')!r}, **options)
        dataset = CaptionDataset(image_folder={str(tmp_path / 'images')!r}, **options)
        dataset[0]
        print('heavy:', sorted(name for name in set(sys.modules) - before if name.split('.')[0] in {HEAVY!r}))
    """
    CaptionDataset(image_folder=str(tmp_path / 'images'), tokenizer=tokenizer, **options)  # builds the cache
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'heavy: []' in result.stdout.splitlines()


# ---- latents and tokens -------------------------------------------------------------------------
@pytest.mark.parametrize('mode, key, collate', [('image_latents_folder', 'image_latents', collate_func_gen_latents),
                                                ('image_tokens_folder', 'image_tokens', collate_func_gen_tokens)])
def test_latents_and_tokens(tmp_path, make_dataset, mode, key, collate):
    records = [{'image': f'sub/{i}.jpg', 'caption': f'stored {i}'} for i in range(3)]
    stored = [torch.randn(4, 8, 8) if key == 'image_latents' else torch.arange(16, dtype=torch.int32) + i
              for i in range(3)]
    for record, tensor in zip(records, stored):
        (tmp_path / 'pt' / 'sub').mkdir(parents=True, exist_ok=True)
        torch.save(tensor, tmp_path / 'pt' / (record['image'] + '.pt'))
    # no image files at all: nothing is decoded in this mode
    dataset = make_dataset(records, image_folder=str(tmp_path / 'no-images'), **{mode: str(tmp_path / 'pt')})
    samples = [dataset[i] for i in range(3)]
    for sample, tensor in zip(samples, stored):
        assert 'pixel_values' not in sample and torch.equal(sample[key], tensor)
    if key == 'image_tokens':
        assert samples[0][key].dtype == torch.int64
    batch = collate(samples, pad_index=0)['data']
    assert batch[key].shape == (3, *stored[0].shape) and batch['attention_mask'].shape == batch['input_ids'].shape

    write(tmp_path / 'pt' / 'sub' / '1.jpg.pt', b'not a torch file')
    (tmp_path / 'pt' / 'sub' / '2.jpg.pt').unlink()
    for idx, reason in [(1, 'bad-tensor'), (2, 'missing-file')]:
        with pytest.raises(SampleError, match=f'{idx}.jpg.pt') as err:
            dataset.prepare_data(idx)
        assert err.value.reason == reason


class MemberStore:
    """Files served by path, as the tar member index serves them (its ``relpath`` and ``read``)."""

    def __init__(self, root, files: dict):
        self.root, self.files, self.asked = str(root), files, []

    def relpath(self, path):
        return os.path.relpath(path, self.root)

    def read(self, relpath):
        self.asked.append(relpath)
        if relpath not in self.files:
            raise SampleError('missing-file', f'{relpath}: no such member')
        return self.files[relpath]


def test_images_from_tar_shards(tmp_path, make_dataset):
    records = [{'image': f'{i}.jpg', 'caption': f'in a tar {i}'} for i in range(3)]
    store = MemberStore(tmp_path, {f'raw/{i}.jpg': encode_image(120, 100, seed=i) for i in range(2)})
    # image_folder need not exist: the images are members of tars, not files
    dataset = make_dataset(records, image_folder=str(tmp_path / 'raw'), tar_index=store)
    assert dataset[1]['pixel_values'].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(SampleError, match='raw/2.jpg: no such member'):
        dataset.prepare_data(2)
    assert store.asked[:2] == ['raw/1.jpg', 'raw/2.jpg']


def test_tokenizer_and_template_are_required(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=1)
    with pytest.raises(ValueError, match='needs a tokenizer and a prompt_template'):
        make_dataset(records, prompt_template=None)


# ---- building from configs ----------------------------------------------------------------------
@pytest.mark.parametrize('type_', ['CaptionDataset', CaptionDataset, 'BLIP3oDataset'])
def test_registry_build_with_tokenizer_config(tmp_path, tokenizer_path, prompt_template, type_):
    records = write_good_images(tmp_path / 'images', count=2)
    dataset = DATASETS.build(dict(
        type=type_, data_path=write(tmp_path / 'data.json', json.dumps(records)),
        image_folder=str(tmp_path / 'images'), prompt_template=prompt_template, image_size=IMAGE_SIZE,
        tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=tokenizer_path)))
    assert isinstance(dataset, CaptionDataset) and len(dataset) == 2
    assert dataset[0]['pixel_values'].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_runner_build_dataloader_from_processors_config(tmp_path, tokenizer_path):
    records = write_good_images(tmp_path / 'images', count=5)
    cfg = Config.fromfile(str(PROCESSORS_CONFIG))
    cfg.tokenizer.pretrained_model_name_or_path = tokenizer_path  # the local copy, as the config says
    train_dataloader = dict(
        batch_size=2, num_workers=2, persistent_workers=True,
        sampler=dict(type=InfiniteSampler, shuffle=True),
        collate_fn=dict(type=collate_func_gen, pad_index=cfg.pad_index),
        dataset=dict(type=CaptionDataset, data_path=write(tmp_path / 'data.json', json.dumps(records)),
                     image_folder=str(tmp_path / 'images'), cap_source='caption', tokenizer=cfg.tokenizer,
                     prompt_template=cfg.prompt_template, image_size=IMAGE_SIZE, unconditional=0.1))
    loader = Runner.build_dataloader(train_dataloader, seed=0)
    batches = iter(loader)
    for _ in range(4):  # more batches than samples: the sampler is infinite
        data = next(batches)['data']
        assert data['pixel_values'].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert data['input_ids'].dtype == torch.int64 and data['attention_mask'].dtype == torch.bool
        lengths = data['attention_mask'].sum(dim=1)
        for row, length in zip(data['input_ids'], lengths):
            assert (row[length:] == cfg.pad_index).all()
    del batches, loader  # stops the persistent workers now, not at exit


# ---- randomness ---------------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [7, None])
def test_workers_draw_different_reproducible_streams(tmp_path, make_dataset, seed):
    records = write_good_images(tmp_path / 'images', count=1, size=(300, 100))  # crops vary along x
    dataset = make_dataset(records, seed=seed, unconditional=0.5)
    dataset[0]  # the parent's draws must not leak into the forked workers
    # 24 draws: with 8, all prompts alike (each a coin flip) had a 1-in-128 chance, and happened.
    worker0, worker1 = stream(dataset, seed_torch=3, count=24)
    assert worker0 != worker1
    assert len({pixels for _, pixels in worker0}) > 1 and len({ids for ids, _ in worker0 + worker1}) == 2
    assert stream(dataset, seed_torch=3, count=24) == (worker0, worker1)


def test_same_seed_same_samples(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=4, size=(300, 100))

    def samples(seed):
        dataset = make_dataset(records, seed=seed, unconditional=0.5)
        return [(dataset[i]['input_ids'].tolist(), dataset[i]['pixel_values']) for i in [0, 1, 2, 3, 0, 1, 2, 3]]

    first, again, other = samples(11), samples(11), samples(12)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(a[0] != b[0] or not torch.equal(a[1], b[1]) for a, b in zip(first, other))


# ---- bad images ---------------------------------------------------------------------------------
BAD_IMAGES = {
    'missing': (None, 'missing-file'),
    'truncated-jpeg': (truncated(encode_image(400, 300, fmt='JPEG')), 'bad-image'),
    'truncated-png': (truncated(encode_image(400, 300, fmt='PNG')), 'bad-image'),
    'not-an-image': (not_an_image(), 'bad-image'),
    'zero-bytes': (b'', 'bad-image'),
    'too-small': (encode_image(60, 200), 'too-small'),
    'aspect-1-20': (encode_image(100, 2000, fmt='PNG'), 'bad-aspect'),
    'decompression-bomb': (decompression_bomb_png(), 'too-large'),
}


@pytest.mark.parametrize('case', BAD_IMAGES)
def test_bad_image_is_counted_logged_and_replaced(tmp_path, make_dataset, logged, case):
    data, reason = BAD_IMAGES[case]
    records = [{'image': f'broken/{case}.img', 'caption': 'broken'}] + write_good_images(tmp_path / 'images')
    if data is not None:
        write(tmp_path / 'images' / 'broken' / f'{case}.img', data)
    dataset = make_dataset(records)
    with pytest.raises(SampleError) as err:
        dataset.prepare_data(0)
    assert err.value.reason == reason
    assert 'sample #0' in str(err.value) and str(tmp_path / 'images' / 'broken' / f'{case}.img') in str(err.value)

    sample = dataset[0]
    assert sample['image_file'].startswith('good')
    assert set(dataset.failures) == {reason} and dataset.failures[reason] >= 1
    warnings = warnings_of(logged)
    assert warnings and f'[{reason}]' in warnings[0] and f'{case}.img' in warnings[0]


def test_index_sizes_drop_records_up_front(tmp_path, make_dataset, logged):
    records = write_good_images(tmp_path / 'images', count=3)
    for record in records:
        record.update(width=160, height=100)
    records[1:1] = [{'image': 'small.jpg', 'caption': 'x', 'width': 80, 'height': 400},
                    {'caption': 'no image at all'},
                    {'image': 'thin.jpg', 'caption': 'x', 'width': 2000, 'height': 100}]
    dataset = make_dataset(records)
    assert len(dataset) == 3 and [dataset[i]['image_file'] for i in range(3)] == ['good0.jpg', 'good1.jpg', 'good2.jpg']
    warnings = warnings_of(logged)
    assert f"1 of 6 records in {tmp_path / 'data.json'} have no 'image' (first: record #2)" in warnings
    assert any('no larger than 80 px' in msg and 'record #1' in msg for msg in warnings)
    assert any('aspect ratio outside' in msg and 'record #3' in msg for msg in warnings)
    assert any("Loaded 3 samples" in msg and "1 without 'image', 1 too small, 1 bad aspect" in msg
               for _, msg in logged)


# ---- bad captions -------------------------------------------------------------------------------
BAD_CAPTIONS = {
    'annotation-missing': ({'annotation': 'gone.json'}, None, 'missing-file', ['gone.json']),
    'json-malformed': ({'annotation': 'a.json'}, b'{"caption": "x"', 'bad-annotation', ['a.json', 'line 1']),
    'key-absent': ({'annotation': 'a.json'}, b'{"url": "u", "tags": []}', 'no-caption',
                   ['a.json', "['tags', 'url']", "'caption'"]),
    'json-empty-caption': ({'annotation': 'a.json'}, b'{"caption": "  "}', 'empty-caption', ['a.json']),
    'inline-empty-caption': ({'caption': ' \n'}, None, 'empty-caption', ["inline 'caption'"]),
    'txt-whitespace': ({'annotation': 'a.txt'}, b' \n\t', 'empty-caption', ['a.txt']),
    'txt-not-utf8': ({'annotation': 'a.txt'}, 'caf\u00e9 au lait'.encode('cp1252'), 'bad-annotation',
                     ['a.txt', 'offset 3']),
    'no-caption-anywhere': ({'width': 160}, None, 'no-caption', ["['image', 'width']", "'annotation'"]),
}


@pytest.mark.parametrize('case', BAD_CAPTIONS)
def test_bad_caption(tmp_path, make_dataset, logged, case):
    fields, annotation_bytes, reason, expected = BAD_CAPTIONS[case]
    records = write_good_images(tmp_path / 'images')
    records[0] = {'image': 'good0.jpg', **fields}
    if annotation_bytes is not None:
        write(tmp_path / 'captions' / fields['annotation'], annotation_bytes)
    (tmp_path / 'captions').mkdir(exist_ok=True)
    dataset = make_dataset(records, cap_folder=str(tmp_path / 'captions'))
    with pytest.raises(SampleError) as err:
        dataset.prepare_data(0)
    assert err.value.reason == reason
    message = str(err.value)
    assert "sample #0 (image 'good0.jpg')" in message and str(tmp_path / 'data.json') in message
    for part in expected:
        assert part in message
    assert dataset[0]['image_file'] != 'good0.jpg' and dataset.failures[reason] >= 1
    assert f'[{reason}]' in warnings_of(logged)[0]


# ---- bad indexes and paths ----------------------------------------------------------------------
@pytest.mark.parametrize('content', ['[{"image": "a.jpg", "caption": "x"},', '', '[]', '{"image": "a.jpg"}'])
def test_bad_index_file(make_dataset, tmp_path, content):
    with pytest.raises(IndexFormatError, match='data.json'):
        make_dataset(None, data_path=write(tmp_path / 'data.json', content))


def test_index_without_usable_records(make_dataset):
    with pytest.raises(ValueError, match="none of its 2 records is usable.*2 without 'image'"):
        make_dataset([{'caption': 'a'}, {'caption': 'b'}])


def test_wrong_paths_name_the_path(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=1)
    with pytest.raises(FileNotFoundError, match='nowhere.json'):
        make_dataset(None, data_path=str(tmp_path / 'nowhere.json'))
    with pytest.raises(FileNotFoundError, match="image_folder .*no-such-folder"):
        make_dataset(records, image_folder=str(tmp_path / 'no-such-folder'))
    with pytest.raises(FileNotFoundError, match="cap_folder .*no-captions"):
        make_dataset(records, cap_folder=str(tmp_path / 'no-captions'))


def test_ceph_folders_without_a_ceph_config_file_read_the_local_folders(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=1)
    for config in (None, str(tmp_path / 'no-such-petreloss.conf')):  # upstream's rule: the file must exist
        dataset = make_dataset(records, ceph_folder='s3://bucket/images', latents_ceph_folder='s3://bucket/latents',
                               ceph_config=config)
        assert len(dataset) == 1 and dataset[0]['pixel_values'].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


# ---- failure bounds -----------------------------------------------------------------------------
def broken_records(count):
    return [{'image': f'missing{i}.jpg', 'caption': 'x'} for i in range(count)]


def never_endless(dataset, draws=5000):
    """Fails the test, instead of hanging it, if the dataset draws on and on without stopping."""
    prepare, calls = dataset.prepare_data, iter(range(draws))

    def bounded(idx):
        if next(calls, None) is None:
            raise AssertionError(f'{draws} draws and the failure policy has not stopped the run')
        return prepare(idx)
    dataset.prepare_data = bounded
    return dataset


def test_all_broken_raises_with_the_counts_and_last_messages(make_dataset, logged):
    dataset = never_endless(make_dataset(broken_records(5)))
    with pytest.raises(RuntimeError) as err:
        dataset[0]
    message = str(err.value)
    assert '50 of the last 50 samples' in message and 'every one of them failed' in message
    assert "{'missing-file': 50}" in message and 'no such file' in message
    assert message.count('[missing-file]') == 5  # the last few errors, not all of them
    assert dataset.failures == {'missing-file': 50}
    # Past max_refetch in a row the draw went on, and said why.
    assert any('11 samples in a row could not be used (max_refetch=10)' in w for w in warnings_of(logged))


def test_a_rate_above_the_ratio_stops_even_when_some_samples_work(tmp_path, make_dataset):
    records = write_good_images(tmp_path / 'images', count=1) + broken_records(9)  # 90% fail
    dataset = never_endless(make_dataset(records, image_folder=str(tmp_path / 'images'), seed=0))
    with pytest.raises(RuntimeError, match=r'above max_failure_ratio=0.5 beyond doubt'):
        for idx in range(1000):
            dataset[idx % len(dataset)]


def test_a_rate_below_the_ratio_never_stops_a_run_through_a_streak(make_dataset, monkeypatch):
    """38% of samples fail (as with 38% of latents missing): a million draws, no error, though
    streaks longer than max_refetch happen, as they must at that rate."""
    dataset = make_dataset(broken_records(100), seed=0)
    failing = {i for i in range(100) if i % 50 < 19}  # 38 of 100
    streaks = {'now': 0, 'longest': 0}

    def prepare(idx):
        if idx in failing:
            streaks['now'] += 1
            streaks['longest'] = max(streaks['longest'], streaks['now'])
            raise SampleError('missing-file', f'sample {idx}: no such file')
        streaks['now'] = 0
        return {'idx': idx}

    monkeypatch.setattr(dataset, 'prepare_data', prepare)
    monkeypatch.setattr('src.datasets.failure_policy.print_log', lambda *args, **kwargs: None)
    for call in range(1_000_000):
        dataset[call % 100]
    failed = dataset.failures['missing-file']
    assert 0.37 < failed / (1_000_000 + failed) < 0.39
    assert streaks['longest'] > dataset.max_refetch + 1  # what used to end the run


def test_all_broken_in_dataloader_workers_raises(make_dataset):
    loader = DataLoader(never_endless(make_dataset(broken_records(5))), batch_size=2, num_workers=2,
                        collate_fn=collate_func_gen)
    batches = iter(loader)
    try:
        with pytest.raises(RuntimeError, match='missing-file'):
            next(batches)
    finally:
        # torch's re-raise leaves the iterator in a reference cycle: stop its workers now rather than
        # from the garbage collector, where the join waits out a 5 s timeout per worker
        batches._shutdown_workers()


def test_repeated_failures_are_logged_sparingly(tmp_path, make_dataset, logged):
    records = write_good_images(tmp_path / 'images', count=1) + broken_records(4)
    dataset = make_dataset(records, image_folder=str(tmp_path / 'images'), max_failure_ratio=1.0, seed=0)
    while sum(dataset.failures.values()) < 250:
        dataset[1]
    warnings = [w for w in warnings_of(logged) if 'Skipped a sample' in w]
    assert len(warnings) == 4 + 2  # each of the 4 broken records once, then every 100th skip with the count
    assert all('counted, not logged' in w for w in warnings[:4])
    assert len({w.split(':')[2] for w in warnings[:4]}) == 4
    assert "100 skipped so far in this process, " in warnings[4] and "repeats not logged" in warnings[4]
    assert "{'missing-file': 100}" in warnings[4]


def test_other_errors_propagate(tmp_path, make_dataset, monkeypatch):
    dataset = make_dataset(write_good_images(tmp_path / 'images', count=2))

    def bug(*args, **kwargs):
        raise KeyError('a bug, not bad data')

    monkeypatch.setattr(dataset, 'process_text', bug)
    with pytest.raises(KeyError, match='a bug'):
        dataset[0]
    assert not dataset.failures


def test_debug_always_reads_the_first_sample(tmp_path, make_dataset):
    dataset = make_dataset(write_good_images(tmp_path / 'images', count=3), debug=True)
    assert [dataset[i]['image_file'] for i in range(3)] == ['good0.jpg'] * 3


def test_truncation_by_caption_keeps_the_template_end_and_image_start(tmp_path, make_dataset, tokenizer,
                                                                      prompt_template):
    long_caption = ' '.join(['a very long and detailed description of the picture'] * 40)
    records = write_good_images(tmp_path / 'images', count=1)
    records[0]['caption'] = long_caption
    upstream = make_dataset(records, max_length=40, unconditional=0)
    ours = make_dataset(records, max_length=40, unconditional=0, truncation='caption')
    full = tokenizer.encode(upstream.prompt_of(long_caption))
    cut = upstream[0]['input_ids'].tolist()
    assert cut == full[:40]  # upstream's cut: IMG_START_TOKEN and the template's end are gone
    end = tokenizer.encode(upstream.prompt_of('x'))[-6:]  # the template's last tokens, IMG_START_TOKEN last
    kept = ours[0]['input_ids'].tolist()
    assert len(kept) <= 40 and kept[-6:] == end and kept != cut
    assert kept[:len(tokenizer.encode(upstream.prompt_of('')))][:5] == full[:5]  # the caption's start is kept
    with pytest.raises(ValueError, match="truncation='words'"):
        make_dataset(records, truncation='words')
