"""The second generation's configs (deepgen, Puffin; tests/fork_configs/, as the forks write them)
built by mmengine's ``Runner.build_dataloader`` on miniature data made for each of their datasets,
and their batches checked against the structure the forks' own code gives: keys, list or tensor,
each picture's shape by the fork's ``image_process`` arithmetic, dtypes, texts, conversations.

Their dataset configs give no tokenizer (their models tokenize ``texts``), so nothing is changed in
them; only ``num_workers`` is lowered to keep the tests quick on 2 cores."""
from __future__ import annotations

import itertools
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.runner import Runner
from PIL import Image, ImageOps

from src.datasets.image2image.edit_datasets import ImageEditDataset
from src.datasets.samplers.multi_source_sampler import MultiSourceBatchSampler, MultiSourceSampler
from src.datasets.text2image.blip3_o import BLIP3oDataset
from src.synthetic.downloads import make_caption_layout
from src.synthetic.images import encode_image
from src.synthetic.local_config import dataset_configs

from resume_helpers import train

FORKS = Path(__file__).resolve().parent / 'fork_configs'


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative paths
    return tmp_path


def write(path, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def picture(path, seed: int) -> None:
    rng = random.Random(seed)
    write(path, encode_image(rng.randint(96, 400), rng.randint(96, 400), seed=seed))


def upright_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).size


# ---- the forks' arithmetic, as their code computes each picture's shape ----------------------------
def fix_pixels_shape(path, image_size=512, unit=32) -> tuple[int, int, int]:
    w, h = upright_size(path)
    ratio = image_size / ((h * w) ** 0.5)
    return 3, math.ceil(h * ratio / unit) * unit, math.ceil(w * ratio / unit) * unit


def dynamic_shape(path, image_size=512, unit=32) -> tuple[int, int, int]:
    w, h = upright_size(path)
    if w >= h and w >= image_size:
        tw, th = image_size, math.ceil(h * (image_size / w) / unit) * unit
    elif h >= w and h >= image_size:
        th, tw = image_size, math.ceil(w * (image_size / h) / unit) * unit
    else:
        th, tw = math.ceil(h / unit) * unit, math.ceil(w / unit) * unit
    return 3, th, tw


# ---- miniature data for every dataset a config names -------------------------------------------
def make_edit_layout(cfg, n: int = 4) -> dict[str, str]:
    """deepgen's editing records: ``{"input_image": [source], "output_image", "instruction"}``."""
    records, expected = [], {}
    for i in range(n):
        source, target = f'edit/{i}_src.jpg', f'edit/{i}_tgt.png' if i % 2 else f'edit/{i}_tgt.jpg'
        picture(Path(cfg.image_folder, source), hash((cfg.data_path, i, 0)) & 0xFFFF)
        picture(Path(cfg.image_folder, target), hash((cfg.data_path, i, 1)) & 0xFFFF)
        instruction = f'make picture {i} of {Path(cfg.data_path).stem} bluer'
        records.append({'input_image': [source], 'output_image': target, 'instruction': instruction})
        expected[instruction] = (Path(cfg.image_folder, source), Path(cfg.image_folder, target))
    write(cfg.data_path, json.dumps(records).encode())
    return expected


def make_blip3o_layout(cfg, n: int = 4) -> dict[str, Path]:
    """deepgen's BLIP3oDataset records: ``{"image_path", "txt"}``."""
    records, expected = [], {}
    for i in range(n):
        name, text = f'{i}.jpg', f'{Path(cfg.data_path).stem} picture {i}'
        picture(Path(cfg.image_folder, name), hash((cfg.data_path, i)) & 0xFFFF)
        records.append({'image_path': name, 'txt': text})
        expected[text] = Path(cfg.image_folder, name)
    write(cfg.data_path, json.dumps(records).encode())
    return expected


def make_deepgen_data(dataset_cfg) -> dict[str, Path | tuple]:
    """Every leaf dataset of ``dataset_cfg``: text -> the picture(s) its sample must hold."""
    expected = {}
    for cfg in dataset_configs(dataset_cfg):
        if cfg.type is ImageEditDataset:
            expected.update(make_edit_layout(cfg))
        elif cfg.type is BLIP3oDataset:
            expected.update(make_blip3o_layout(cfg))
        else:
            captions = make_caption_layout('.', cfg.data_path, cfg.image_folder, cfg.get('cap_source', 'caption'),
                                           cfg.cap_folder, n=4)
            expected.update({caption: Path(cfg.image_folder, image) for image, caption in captions.items()})
    return expected


PUFFIN = 'Puffin-4M/training_data'


def make_puffin_data(root: str = PUFFIN, n: int = 4, seed: int = 0) -> list[dict]:
    """Puffin-4M's layout: ``summary.json`` of ``{"image", "annotation", "camera"[, "image_init"]}``,
    captions under ``cap_folder/``, reasoning under ``cap_folder_cot/``, scene and camera captions under
    ``cap_folder_scene/`` and ``cap_folder_cam/``, camera maps under ``cam_folder/``, first views under
    ``local_folder_init/``. Returns each sample's parts."""
    samples, records = [], []
    for i in range(n):
        stem = f'{seed}{i:03d}'
        parts = dict(image=f'{stem}.jpg', annotation=f'{stem}.json', camera=f'{stem}.pt', image_init=f'{stem}.jpg')
        records.append(parts)
        caption = f'scene {stem} by the lake. The camera parameters (roll, pitch, fov) are {i}, {i + 1}, 60.'
        reasoning = f'the horizon of {stem} tilts by {i} degrees'
        camera = torch.full((2, 8, 8), float(i + 1))
        picture(f'{root}/local_folder/{stem}.jpg', seed * 100 + i)
        picture(f'{root}/local_folder_init/{stem}.jpg', seed * 100 + i + 50)
        write(f'{root}/cap_folder/{stem}.json', json.dumps({'caption': f'  {caption} '}).encode())
        write(f'{root}/cap_folder_cot/{stem}.json',
              json.dumps({'caption': f'<think> {reasoning} </think> the answer'}).encode())
        for folder in ('cap_folder_scene', 'cap_folder_cam'):  # the cross-view scene and camera captions
            write(f'{root}/{folder}/{stem}.json', json.dumps({'caption': f'{folder} of {stem}'}).encode())
        os.makedirs(f'{root}/cam_folder', exist_ok=True)
        torch.save(camera, f'{root}/cam_folder/{stem}.pt')
        samples.append(dict(caption=caption, reasoning=reasoning, camera=camera,
                            image=Path(f'{root}/local_folder/{stem}.jpg'),
                            image_init=Path(f'{root}/local_folder_init/{stem}.jpg')))
    write(f'{root}/summary.json', json.dumps(records).encode())
    return samples


def build(config: Path, **overrides):
    cfg = Config.fromfile(str(config))
    loader = cfg.train_dataloader
    loader.update(num_workers=2, **overrides)  # fewer workers only to keep the test quick on 2 cores
    return cfg, Runner.build_dataloader(loader, seed=0)


def epochs(loader):
    """The loader's batches epoch after epoch, as a training loop reads them (an epoch ends)."""
    for epoch in itertools.count():
        loader.batch_sampler.sampler.set_epoch(epoch)
        yield from loader


def assert_pictures(pixel_values, shapes) -> None:
    assert isinstance(pixel_values, list) and len(pixel_values) == len(shapes)
    for tensor, shape in zip(pixel_values, shapes):
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == shape
        assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


# ---- deepgen ---------------------------------------------------------------------------------------
def test_deepgen_text_to_image_config_gives_deepgens_batches(workdir):
    cfg = Config.fromfile(str(FORKS / 'deepgen' / 't2i_pretrain.py'))
    expected = make_deepgen_data(cfg.train_dataloader.dataset)
    _, loader = build(FORKS / 'deepgen' / 't2i_pretrain.py')
    assert len(loader.dataset) == 6 * 4  # redcaps5m, laion6m, text2image2m (two), megalith10m, cc12m
    batch = next(iter(loader))
    assert set(batch) == {'data', 'data_samples'} and batch['data_samples'] is None
    data = batch['data']
    assert set(data) == {'pixel_values', 'texts'} and len(data['texts']) == 4
    assert all(text in expected for text in data['texts'])
    assert_pictures(data['pixel_values'], [fix_pixels_shape(expected[text]) for text in data['texts']])


def test_deepgen_sft_config_reads_its_blip3o_records(workdir):
    cfg = Config.fromfile(str(FORKS / 'deepgen' / 't2i_sft_zh.py'))
    expected = make_deepgen_data(cfg.train_dataloader.dataset)
    _, loader = build(FORKS / 'deepgen' / 't2i_sft_zh.py')
    data = next(iter(loader))['data']
    assert set(data) == {'pixel_values', 'texts'} and all(text in expected for text in data['texts'])
    assert_pictures(data['pixel_values'], [fix_pixels_shape(expected[text]) for text in data['texts']])


def test_deepgen_joint_config_alternates_editing_and_generation(workdir):
    cfg = Config.fromfile(str(FORKS / 'deepgen' / 'joint_pretrain.py'))
    expected = make_deepgen_data(cfg.train_dataloader.dataset)
    _, loader = build(FORKS / 'deepgen' / 'joint_pretrain.py')
    assert isinstance(loader.batch_sampler, MultiSourceBatchSampler)
    assert isinstance(loader.batch_sampler.sampler, MultiSourceSampler)
    batches = list(itertools.islice(epochs(loader), 8))
    kinds = [next(iter(batch['data'])) for batch in batches]
    assert kinds == ['image2image', 'text2image', 'text2image', 'text2image'] * 2  # repeats [1, 3]
    edit = batches[0]['data']['image2image']
    assert set(edit) == {'pixel_values', 'pixel_values_src', 'texts'} and len(edit['texts']) == 4
    sources, targets = zip(*(expected[text] for text in edit['texts']))
    assert_pictures(edit['pixel_values'], [fix_pixels_shape(path) for path in targets])
    assert all(isinstance(srcs, list) and len(srcs) == 1 for srcs in edit['pixel_values_src'])
    assert_pictures([srcs[0] for srcs in edit['pixel_values_src']], [fix_pixels_shape(path) for path in sources])
    generation = batches[1]['data']['text2image']
    assert set(generation) == {'pixel_values', 'texts'}
    assert_pictures(generation['pixel_values'], [fix_pixels_shape(expected[t]) for t in generation['texts']])


# ---- Puffin ----------------------------------------------------------------------------------------
def test_puffin_text_to_image_config_gives_puffins_batches(workdir):
    samples = {s['caption']: s for s in make_puffin_data()}
    _, loader = build(FORKS / 'puffin' / 'basic' / 'text2image.py', batch_size=4)
    batch = next(iter(loader))
    assert set(batch['data']) == {'text2image'}
    data = batch['data']['text2image']
    assert set(data) == {'pixel_values', 'texts'} and all(text in samples for text in data['texts'])
    assert_pictures(data['pixel_values'], [dynamic_shape(samples[t]['image']) for t in data['texts']])


def test_puffin_camera_configs_give_cameras_and_first_views(workdir):
    samples = {s['caption']: s for s in make_puffin_data()}
    cross = {s['caption']: s for s in make_puffin_data(f'{PUFFIN}/cross_view', seed=1)}
    _, loader = build(FORKS / 'puffin' / 'basic' / 'cam2image.py', batch_size=4)
    data = next(iter(loader))['data']['cam2image']
    assert set(data) == {'pixel_values', 'texts', 'cam_values'}
    for text, cams in zip(data['texts'], data['cam_values']):
        assert len(cams) == 1 and torch.equal(cams[0], samples[text]['camera'] / (math.pi / 2))

    _, loader = build(FORKS / 'puffin' / 'instruction' / 'cross_view_gen.py', batch_size=4)
    data = next(iter(loader))['data']  # CollateFuncGen built by mmengine itself: no CollateConcat
    assert set(data) == {'pixel_values', 'texts', 'cam_values', 'pixel_values_init'}
    for text, inits in zip(data['texts'], data['pixel_values_init']):
        # mixed_motion: the caption, or only its camera part
        owner = next(s for caption, s in cross.items() if caption == text or caption.endswith(text))
        assert len(inits) == 1 and tuple(inits[0].shape) == dynamic_shape(owner['image_init'])


def test_puffin_understanding_configs_give_conversations(workdir):
    samples = {s['caption']: s for s in make_puffin_data()}
    cfg, loader = build(FORKS / 'puffin' / 'basic' / 'image2text.py', batch_size=4)
    data = next(iter(loader))['data']['image2text']
    assert set(data) == {'conversations', 'pixel_values'}
    for conversation, pixels in zip(data['conversations'], data['pixel_values']):
        (turn,) = conversation
        assert turn['input'].startswith('<image>\n') and turn['input'][len('<image>\n'):] in cfg.caption_prompts
        assert tuple(pixels.shape) == dynamic_shape(samples[turn['output']]['image'])

    cfg, loader = build(FORKS / 'puffin' / 'reasoning' / 'text2text.py', batch_size=4)
    data = next(iter(loader))['data']
    assert set(data) == {'conversations'}
    for (turn,) in data['conversations']:
        caption = turn['input'][len(cfg.caption_prompts[0]) + 1:]
        assert turn['output'] == samples[caption]['reasoning']


def test_puffin_concat_config_alternates_understanding_and_generation(workdir):
    make_puffin_data()
    _, loader = build(FORKS / 'puffin' / 'basic' / 'concat_datasets.py')
    batches = list(itertools.islice(epochs(loader), 4))
    assert [next(iter(batch['data'])) for batch in batches] == ['image2text', 'text2image'] * 2
    assert len(batches[0]['data']['image2text']['conversations']) == 16
    assert len(batches[1]['data']['text2image']['texts']) == 16


# ---- the sampler pair, shared by deepgen, Puffin and UniPic-1 --------------------------------------
class Sized:
    def __init__(self, *sizes):
        self.datasets = [range(size) for size in sizes]
        self.cumulative_sizes = list(itertools.accumulate(sizes))

    def __len__(self):
        return self.cumulative_sizes[-1]


def test_multi_source_batches_take_each_sources_size_and_resume_in_place():
    dataset = Sized(10, 7)
    sampler = MultiSourceSampler(repeats=[1, 2], dataset=dataset, batch_sizes=[3, 2], seed=5)
    batches = MultiSourceBatchSampler(sampler, batch_sizes=[3, 2], repeats=[1, 2], batch_size=2)
    assert batches.batch_size == sampler.batch_size == (3 + 2 * 2) // 3
    first = list(itertools.islice(iter(batches), 9))
    assert [len(b) for b in first] == [3, 2, 2] * 3
    assert all(i < 10 for b in first[0::3] for i in b) and all(10 <= i < 17 for b in first[1::3] + first[2::3]
                                                                for i in b)
    resumed_sampler = MultiSourceSampler(repeats=[1, 2], dataset=dataset, batch_sizes=[3, 2], seed=5)
    resumed_sampler.resume_at(4)
    resumed = list(itertools.islice(iter(MultiSourceBatchSampler(resumed_sampler, [3, 2], [1, 2])), 5))
    assert resumed == first[4:]
    with pytest.raises(ValueError, match='batch_sizes'):
        MultiSourceBatchSampler(sampler, batch_sizes=[3, 3], repeats=[1, 2])
    # As ResumableTrainLoop places it: the loop counts iterations x the mean batch size, the sampler
    # is moved by whole batches, so the resumed batches are the uninterrupted ones, unequal sizes too.
    from src.engine.positions import PositionedSampler, StartPoint
    placed = MultiSourceSampler(repeats=[1, 2], dataset=dataset, batch_sizes=[3, 2], seed=5)
    start = StartPoint(epoch=0, skip=4 * placed.batch_size, position=4 * placed.batch_size)
    loop_resumed = MultiSourceBatchSampler(PositionedSampler(placed, start, rank=0), [3, 2], [1, 2])
    assert [list(map(int, batch)) for batch in itertools.islice(iter(loop_resumed), 5)] == first[4:]


# ---- resuming a fork's mix under ResumableTrainLoop ---------------------------------------------
class RecordingMixModel(BaseModel):
    """Records every batch of a CollateConcat mix: its kind, texts, picture shapes and pixel sums."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.batches = []

    def forward(self, data, data_samples=None, mode='loss'):
        ((kind, batch),) = data.items()
        pictures = batch['pixel_values']
        self.batches.append(dict(kind=kind, texts=batch['texts'], shapes=[tuple(p.shape) for p in pictures],
                                 pixels=[round(float(p.double().sum()), 3) for p in pictures]))
        return {'loss': self.linear(torch.zeros(1, 1)).sum() * 0}


def test_a_deepgen_mix_resumes_with_the_uninterrupted_batches(workdir):
    cfg = Config.fromfile(str(FORKS / 'deepgen' / 'joint_pretrain.py'))
    make_deepgen_data(cfg.train_dataloader.dataset)
    loader = cfg.train_dataloader
    for dataset in dataset_configs(loader.dataset):
        dataset.image_size = 64  # small pictures: this test is about the stream, not the shapes
    loader.update(num_workers=2, pin_memory=False)
    whole = train(workdir / 'whole', loader, 8, 4, model=RecordingMixModel())
    resumed = train(workdir / 'resumed', loader, 8, 4, model=RecordingMixModel(),
                    resume_from=str(workdir / 'whole' / 'iter_4.pth'))
    assert [batch['kind'] for batch in whole] == ['image2image', 'text2image', 'text2image', 'text2image'] * 2
    assert resumed == whole[4:]


# ---- image_process on its own ------------------------------------------------------------------
@pytest.mark.parametrize('image_process, square', [('crop2square', True), ('resize2square', True),
                                                   ('dynamic', False), ('fix_pixels', False)])
def test_each_image_process_shapes_pictures_as_the_forks(workdir, image_process, square):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    captions = make_caption_layout('.', 'data.json', 'images', 'caption', n=4)
    dataset = CaptionDataset('data.json', image_folder='images', image_size=128, image_process=image_process, seed=0)
    shape_of = dict(dynamic=lambda p: dynamic_shape(p, 128), fix_pixels=lambda p: fix_pixels_shape(p, 128))
    for idx in range(len(dataset)):
        sample = dataset[idx]
        assert 'input_ids' not in sample and sample['text'] == captions[sample['image_file']]
        path = Path('images', sample['image_file'])
        expected = (3, 128, 128) if square else shape_of[image_process](path)
        assert tuple(sample['pixel_values'].shape) == expected
    with pytest.raises(ValueError, match='image_process='):
        CaptionDataset('data.json', image_folder='images', image_process='letterbox')
    with pytest.raises(ValueError, match='buckets both'):
        CaptionDataset('data.json', image_folder='images', image_process='dynamic', buckets=dict(table='pixart-256'))


def test_puffins_generation_prompt_with_a_tokenizer(workdir, tokenizer, prompt_template):
    from src.datasets.generation.caption_datasets import CaptionDatasetGen
    samples = {s['caption']: s for s in make_puffin_data()}
    dataset = CaptionDatasetGen(data_path=f'{PUFFIN}/summary.json', image_folder=f'{PUFFIN}/local_folder',
                                cap_folder=f'{PUFFIN}/cap_folder', cap_folder_cot=f'{PUFFIN}/cap_folder_cot',
                                tokenizer=tokenizer, prompt_template=prompt_template, image_length=4,
                                unconditional=0, image_size=128, image_process='dynamic')
    sample = dataset[1]
    caption = next(c for c in samples if sample['text'].startswith(c))
    assert sample['text'] == f"{caption} {samples[caption]['reasoning']}"  # the caption, then its reasoning
    t = prompt_template
    image_tokens = t['IMG_START_TOKEN'] + t['IMG_CONTEXT_TOKEN'] * 4 + t['IMG_END_TOKEN']
    prompt = t['INSTRUCTION'].format(input=f"{image_tokens}\n{t['GENERATION'].format(input=sample['text'])}")
    assert sample['input_ids'].tolist() == tokenizer.encode(prompt + t['IMG_START_TOKEN'])


# ---- every config of both forks: deepgen's 11, Puffin's 13 -------------------------------------
CONFIGS = sorted(str(path.relative_to(FORKS)) for path in FORKS.rglob('*.py') if path.name != 'processors.py')
UNIT = 32  # unit_image_size, both forks


def collate_keys(collate_cfg) -> set[str]:
    """The batch keys the forks' collate function of ``collate_cfg`` gives (read from their code)."""
    from src.datasets.collate_functions import (CollateFuncGen, CollateFuncUnd, collate_func_gen_txt_dynamic,
                                                collate_func_img2img_txt_dynamic)
    kind, data_type = collate_cfg['type'], collate_cfg.get('data_type')
    if kind is collate_func_gen_txt_dynamic:
        return {'pixel_values', 'texts'}
    if kind is collate_func_img2img_txt_dynamic:
        return {'pixel_values', 'pixel_values_src', 'texts'}
    if kind is CollateFuncGen:
        return {'pixel_values', 'texts'} | ({'cam_values'} if data_type != 'text2image' else set()) | (
            {'pixel_values_init'} if data_type == 'image2image' else set())
    assert kind is CollateFuncUnd
    return {'conversations'} | ({'pixel_values'} if data_type == 'image2text' else set())


def check_picture(tensor) -> None:
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.dim() == 3
    assert tensor.shape[0] == 3 and tensor.shape[1] % UNIT == 0 and tensor.shape[2] % UNIT == 0
    assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def check_data(data: dict, keys: set[str], size: int) -> None:
    """One collate function's batch: its keys, a list of ``size`` per key, each item as the fork's."""
    assert set(data) == keys and all(isinstance(value, list) and len(value) == size for value in data.values())
    for picture in data.get('pixel_values', []):
        check_picture(picture)
    for key in ('pixel_values_src', 'pixel_values_init', 'cam_values'):
        for pictures in data.get(key, []):
            assert isinstance(pictures, list) and len(pictures) == 1 and isinstance(pictures[0], torch.Tensor)
            if key != 'cam_values':
                check_picture(pictures[0])
    assert all(isinstance(text, str) and text for text in data.get('texts', []))
    for conversation in data.get('conversations', []):
        assert [set(turn) for turn in conversation] == [{'input', 'output'}]


@pytest.mark.parametrize('config', CONFIGS)
def test_every_fork_config_builds_unchanged_with_the_forks_batch_structure(workdir, config):
    cfg = Config.fromfile(str(FORKS / config))
    if config.startswith('deepgen'):
        make_deepgen_data(cfg.train_dataloader.dataset)
    else:
        for root, seed in ((PUFFIN, 0), (f'{PUFFIN}/cross_view', 1), (f'{PUFFIN}/photography', 2)):
            make_puffin_data(root, seed=seed)
    loader_cfg = cfg.train_dataloader
    _, loader = build(FORKS / config)
    collate = loader_cfg.collate_fn
    sampler = loader_cfg.get('batch_sampler')
    for number, batch in enumerate(itertools.islice(iter(loader), 2)):
        assert set(batch) == {'data', 'data_samples'} and batch['data_samples'] is None
        if collate['type'].__name__ != 'CollateConcat':
            check_data(batch['data'], collate_keys(collate), loader_cfg.batch_size)
            continue
        turns = [s for s, r in enumerate(sampler.repeats) for _ in range(r)] if sampler else [0]
        source = turns[number % len(turns)]
        (kind,) = batch['data']
        assert kind == collate['keys'][source]
        size = sampler.batch_sizes[source] if sampler else loader_cfg.batch_size
        check_data(batch['data'][kind], collate_keys(collate['collate_fns'][source]), size)
