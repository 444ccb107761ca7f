"""Golden batches: the first batches of every dataset class and collate function on the miniatures
(square, buckets, latents, tokens, tar shards, objects, pretokenized, upstream hooks, edit,
image-to-text, uint8 pixels, the dataset configs) are fixed as digests in tests/golden/batches.json,
so that a reorganisation of the sample pipeline cannot change what users get.

Each batch's digest is a sha256 over every tensor's dtype, shape and bytes and over the other
values (strings with the case's temporary folder written as ``<root>``), keyed ``<case>/<batch>``.
Everything is seeded, read with ``num_workers=0`` and a fixed sampler.

Regenerate (only when a change of the batches is intended, and say so in the commit)::

    GOLDEN_REGENERATE=1 PYTHONPATH=$PWD .venv/bin/python -m pytest -q -n 0 -p no:cacheprovider \\
        tests/test_golden_batches.py
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from src.datasets import collate_functions as cf
from src.datasets import collate_generation as cg
from src.synthetic.images import EXTENSIONS, FORMAT_MODES, encode_image

GOLDEN = Path(__file__).resolve().parent / 'golden' / 'batches.json'
REGENERATE = os.environ.get('GOLDEN_REGENERATE') == '1'
BATCHES = 3  # per case
SIZES = [(97, 131), (160, 120), (300, 300), (83, 400)]


# ---- digests ---------------------------------------------------------------------------------------
def _feed(h, value, root: str) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        h.update(f'T{tensor.dtype}{tuple(tensor.shape)}'.encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    elif isinstance(value, np.ndarray):
        h.update(f'N{value.dtype}{value.shape}'.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(b'{')
        for key in sorted(value, key=str):
            _feed(h, str(key), root)
            _feed(h, value[key], root)
        h.update(b'}')
    elif isinstance(value, (list, tuple)):
        h.update(b'[' if isinstance(value, list) else b'(')
        for item in value:
            _feed(h, item, root)
        h.update(b']')
    elif isinstance(value, str):
        h.update(b'S' + value.replace(root, '<root>').encode() + b'\0')
    else:
        h.update(f'V{type(value).__name__}:{value!r}'.encode().replace(root.encode(), b'<root>'))


def digest(batch, root) -> str:
    h = hashlib.sha256()
    _feed(h, batch, str(root))
    return h.hexdigest()


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def first_batches(dataset, collate, batch_size=4, sampler=None, count=BATCHES) -> list:
    seed_all()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate,
                        sampler=sampler if sampler is not None else range(min(len(dataset), batch_size * count)))
    return list(itertools.islice(loader, count))


# ---- miniatures ------------------------------------------------------------------------------------
def square_data(root: Path) -> Path:
    """Every format and mode at assorted sizes, captions inline (as tests/test_uint8_handoff.py)."""
    (root / 'images').mkdir(parents=True)
    records = []
    for fmt, modes in FORMAT_MODES.items():
        for mode in modes:
            for number, (width, height) in enumerate(SIZES[:2]):
                name = f'{fmt}-{mode}-{number}{EXTENSIONS[fmt]}'
                (root / 'images' / name).write_bytes(encode_image(width, height, fmt, mode, seed=len(records)))
                records.append({'image': name, 'caption': f'a {mode} {fmt} picture {number}'})
    (root / 'data.json').write_text(json.dumps(records))
    return root


def stored_data(root: Path, kind: str) -> tuple[Path, Path]:
    """Records without image files, their latents (or tokens) as ``.pt`` files."""
    folder = root / kind
    generator = torch.Generator().manual_seed(0)
    records = []
    for i in range(10):
        name = f'sub/{i}.jpg'
        records.append({'image': name, 'caption': f'stored picture {i}'})
        tensor = (torch.randn(4, 8, 8, generator=generator) if kind == 'latents'
                  else torch.randint(0, 1000, (16,), generator=generator, dtype=torch.int32))
        (folder / 'sub').mkdir(parents=True, exist_ok=True)
        torch.save(tensor, folder / f'{name}.pt')
    (root / 'data.json').write_text(json.dumps(records))
    return root / 'data.json', folder


def edit_data(root: Path) -> Path:
    (root / 'images').mkdir(parents=True)
    (root / 'captions').mkdir()
    records = []
    for i in range(8):
        for role, seed in (('src', i), ('tgt', i + 10)):
            (root / 'images' / f'{i}_{role}.jpg').write_bytes(encode_image(200, 120 + 7 * i, seed=seed))
        (root / 'captions' / f'{i}.json').write_text(json.dumps({'caption': f'make picture {i} brighter'}))
        records.append({'source_image': f'{i}_src.jpg', 'target_image': f'{i}_tgt.jpg', 'annotation': f'{i}.json',
                        'image': f'{i}_tgt.jpg'})
    (root / 'edits.json').write_text(json.dumps(records))
    return root


def caption_layout(root: Path, n: int = 8) -> Path:
    from src.synthetic.downloads import make_caption_layout
    make_caption_layout(root, 'data.json', 'images', 'caption', 'captions', n=n)
    return root


# ---- the cases -------------------------------------------------------------------------------------
def _square(root, tokenizer, template, cls=None, **options):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    square_data(root)
    return (cls or CaptionDataset)('data.json', image_folder='images', tokenizer=tokenizer,
                                   prompt_template=template, image_size=48, unconditional=0.2, seed=0, **options)


def case_square(root, tokenizer, template, **_):
    return first_batches(_square(root, tokenizer, template), cf.collate_func_gen)


def case_square_uint8(root, tokenizer, template, **_):
    return first_batches(_square(root, tokenizer, template, pixel_dtype='uint8'), cf.collate_func_gen)


def case_square_vgt_collate(root, tokenizer, template, **_):
    return first_batches(_square(root, tokenizer, template),
                         functools.partial(cf.collate_func_gen, resolutions=(40, 32), crop_mode='pad_resize'))


def case_square_text_dynamic_collate(root, tokenizer, template, **_):
    dataset = _square(root, tokenizer, template)
    return first_batches(dataset, lambda samples: cf.collate_func_gen(samples) if 'text' not in samples[0]
                         else cg.collate_func_gen_txt_dynamic(samples))


def case_pretokenized(root, tokenizer, template, **_):
    return first_batches(_square(root, tokenizer, template, pretokenize=True), cf.collate_func_gen)


def case_blip3o(root, tokenizer, template, **_):
    from src.datasets.text2image.blip3_o import BLIP3oDataset
    return first_batches(_square(root, tokenizer, template, cls=BLIP3oDataset), cf.collate_func_gen)


def case_harmon_text2image(root, tokenizer, template, **_):
    from src.datasets.text2image.text2image import Text2ImageDataset
    square_data(root)
    dataset = Text2ImageDataset('data.json', 'images', 48, unconditional=0.2,
                                tokenizer=tokenizer, prompt_template=template, seed=0)
    return first_batches(dataset, cf.collate_func_gen)


def case_buckets(root, tokenizer, template, **_):
    from test_buckets import write_bucket_data
    from src.datasets.samplers.bucket_sampler import BucketSampler
    from src.datasets.text2image.caption_datasets import CaptionDataset
    write_bucket_data(root, count=12)
    dataset = CaptionDataset('data.json', image_folder='images', tokenizer=tokenizer,
                             prompt_template=template, image_size=256, unconditional=0.2, seed=0,
                             buckets=dict(table='pixart-256'))
    return first_batches(dataset, cf.collate_func_gen, batch_size=2, sampler=BucketSampler(dataset, 2, seed=3),
                         count=4)


def case_buckets_uint8(root, tokenizer, template, **_):
    from test_buckets import make_dataset, write_bucket_data
    from src.datasets.samplers.bucket_sampler import BucketSampler
    write_bucket_data(root, count=12)
    dataset = make_dataset(root, tokenizer, template, pixel_dtype='uint8')
    return first_batches(dataset, cf.collate_func_gen, batch_size=2, sampler=BucketSampler(dataset, 2, seed=3))


def _stored(root, tokenizer, template, kind, key, collate):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    data_path, folder = stored_data(root, kind)
    dataset = CaptionDataset(str(data_path.relative_to(root)), image_folder='no-images', tokenizer=tokenizer,
                             prompt_template=template, image_size=32, unconditional=0.2, seed=0,
                             **{key: str(folder.relative_to(root))})
    return first_batches(dataset, collate)


def case_latents(root, tokenizer, template, **_):
    return _stored(root, tokenizer, template, 'latents', 'image_latents_folder', cf.collate_func_gen_latents)


def case_tokens(root, tokenizer, template, **_):
    return _stored(root, tokenizer, template, 'tokens', 'image_tokens_folder', cf.collate_func_gen_tokens)


def _config_batches(workdir: Path, name: str, tokenizer_path: str, **dataset_overrides) -> list:
    from mmengine.runner import Runner
    from config_helpers import load
    from src.synthetic.local_config import localize
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        seed_all()
        loader_cfg = localize(load(name), tokenizer_path,
                              dataset_overrides=dict(image_size=64, unconditional=0.2, seed=0, **dataset_overrides),
                              batch_size=4, num_workers=0, pin_memory=False)
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        return list(itertools.islice(loader, BATCHES))
    finally:
        os.chdir(cwd)


def _prepared(workdir: Path, name: str, **options) -> None:
    from src.prepare import datasets as prepare
    from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
    MAKERS[name](workdir / DEFAULT_ROOTS[name], n=8, faults=False)
    report = getattr(prepare, f'prepare_{name}')(str(workdir / DEFAULT_ROOTS[name]), num_processes=1, **options)
    assert report.exit_code() == 0, report.summary()


def _config_case(name):
    def case(root, tokenizer, template, tokenizer_path, **_):
        _prepared(root, name)
        return _config_batches(root, name, tokenizer_path)
    case.__name__ = f'case_config_{name}'
    return case


def case_tar_shards(root, tokenizer, template, tokenizer_path, **_):
    from src.datasets.storage.tar_index import INDEX_NAME
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import DEFAULT_ROOTS
    _prepared(root, 'laion6m', step=INDEX_MEMBERS)
    assert not list((root / DEFAULT_ROOTS['laion6m'] / 'raw').rglob('*.jpg'))  # read from the tars
    return _config_batches(root, 'laion6m', tokenizer_path, tar_index=f'{DEFAULT_ROOTS["laion6m"]}/{INDEX_NAME}')


def case_upstream_hooks(root, tokenizer, template, tokenizer_path, **_):
    from test_family import UpstreamStyleReconstruct
    caption_layout(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dataset = UpstreamStyleReconstruct('data.json', image_folder='images', cap_folder='captions',
                                           tokenizer=tokenizer, prompt_template=template, image_size=32, seed=0)
        return first_batches(dataset, cf.collate_func_img2img)
    finally:
        os.chdir(cwd)


def case_upstream_hooks_tar_shards(root, tokenizer, template, tokenizer_path, **_):
    from test_family import UpstreamStyleReconstruct
    from src.datasets.storage.tar_index import INDEX_NAME
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import DEFAULT_ROOTS
    _prepared(root, 'laion6m', step=INDEX_MEMBERS)
    return _config_batches(root, 'laion6m', tokenizer_path, type=UpstreamStyleReconstruct, cap_source='re_caption',
                           tar_index=f'{DEFAULT_ROOTS["laion6m"]}/{INDEX_NAME}')


def _editing(cls_name, tokenizer, template, **options):
    from src.datasets.image2image import edit_datasets
    return getattr(edit_datasets, cls_name)(
        options.pop('data_path', 'edits.json'), image_folder='images', cap_folder='captions', tokenizer=tokenizer,
        prompt_template=template, image_size=32, image_length=4, seed=0, **options)


def case_edit(root, tokenizer, template, **_):
    edit_data(root)
    return first_batches(_editing('ImageEditDataset', tokenizer, template), cf.collate_func_img2img)


def case_edit_pretokenized_text_dynamic(root, tokenizer, template, **_):
    edit_data(root)
    dataset = _editing('ImageEditDataset', tokenizer, template, pretokenize=True)
    batches = first_batches(dataset, cf.collate_func_img2img)
    samples = [dataset[i] for i in range(4)]
    if 'text' in samples[0]:
        batches.append(cg.collate_func_img2img_txt_dynamic(samples))
    return batches


def case_reconstruct(root, tokenizer, template, **_):
    caption_layout(root)
    records = json.loads((root / 'data.json').read_text())
    (root / 'data.json').write_text(json.dumps([{**r, 'annotation': r.get('annotation', r['image'] + '.json')}
                                                for r in records]))
    return first_batches(_editing('ReconstructDataset', tokenizer, template, data_path='data.json'),
                         cf.collate_func_img2img)


def case_image_to_text(root, tokenizer, template, **_):
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE
    from src.datasets.understanding.caption_datasets import CaptionDataset as ImageToText
    square_data(root)
    dataset = ImageToText('data.json', 'images', 32, tokenizer=tokenizer,
                          template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen_chat),
                          max_length=64, image_length=8, seed=0)
    return first_batches(dataset, cf.collate_func_und)


def case_objects(root, tokenizer, template, **_):
    from moto.server import ThreadedMotoServer
    import boto3
    from test_object_store import ACCESS, SECRET, petrel_config
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.prepare.datasets import prepare_redcaps5m
    from src.synthetic.downloads import MAKERS
    data = root / 'redcaps5m'
    MAKERS['redcaps5m'](data, n=8, faults=False)
    assert prepare_redcaps5m(str(data), num_processes=1).exit_code() == 0
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f'http://{host}:{port}'
        client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                              region_name='us-east-1')
        client.create_bucket(Bucket='data')
        for path in sorted((data / 'raw').rglob('*')):
            if path.is_file() and path.suffix != '.tar':
                client.put_object(Bucket='data', Key=f'redcaps5m/raw/{path.relative_to(data / "raw")}',
                                  Body=path.read_bytes())
        generator = torch.Generator().manual_seed(0)
        records = json.loads((data / 'redcaps5m_data.json').read_text())
        for record in records:
            buf = io.BytesIO()
            torch.save(torch.randn(4, 2, 2, generator=generator).to(torch.bfloat16), buf)
            client.put_object(Bucket='data', Key=f'latents/{record["image"]}.pt', Body=buf.getvalue())
        config = petrel_config(root / 'petreloss.conf', endpoint)
        options = dict(tokenizer=tokenizer, prompt_template=template, image_size=64, cap_source='re_caption', seed=0,
                       unconditional=0.2, ceph_config=config)
        pictures = CaptionDataset('redcaps5m/redcaps5m_data.json', ceph_folder='cluster1:s3://data/redcaps5m/raw',
                                  **options)
        latents = CaptionDataset('redcaps5m/redcaps5m_data.json', cap_folder='redcaps5m/raw',
                                 latents_ceph_folder='s3://data/latents', **options)
        return (first_batches(pictures, cf.collate_func_gen, count=2) +
                first_batches(latents, cf.collate_func_gen_latents, count=2))
    finally:
        server.stop()


CASES = {case.__name__[len('case_'):]: case for case in [
    case_square, case_square_uint8, case_square_vgt_collate, case_square_text_dynamic_collate, case_pretokenized,
    case_blip3o, case_harmon_text2image, case_buckets, case_buckets_uint8, case_latents, case_tokens,
    case_tar_shards, case_upstream_hooks, case_upstream_hooks_tar_shards, case_edit,
    case_edit_pretokenized_text_dynamic, case_reconstruct, case_image_to_text, case_objects,
    *[_config_case(name) for name in ('midjourney23m', 'laion6m', 'dalle3', 'redcaps5m', 'blip3o60k')]]}


def digests_of(name, root, tokenizer, prompt_template, tokenizer_path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(root)  # paths relative to it: the datasets' random streams are keyed on their data_path
    try:
        batches = CASES[name](root, tokenizer, prompt_template, tokenizer_path=tokenizer_path)
    finally:
        os.chdir(cwd)
    assert batches, f'{name}: no batch'
    return {f'{name}/{i}': digest(batch, root.resolve()) for i, batch in enumerate(batches)}


@pytest.mark.parametrize('name', list(CASES))
def test_batches_equal_the_golden_digests(name, tmp_path, tokenizer, prompt_template, tokenizer_path):
    found = digests_of(name, tmp_path / 'work', tokenizer, prompt_template, tokenizer_path)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if REGENERATE:
        stored = {key: value for key, value in stored.items() if not key.startswith(f'{name}/')}
        stored.update(found)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + '\n')
        return
    expected = {key: value for key, value in stored.items() if key.startswith(f'{name}/')}
    assert expected, f'{name}: no golden digests; regenerate (see the module docstring)'
    assert found == expected, f'{name}: the batches changed'
