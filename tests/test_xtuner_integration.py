"""An upstream-style pure-python config: xtuner's ConcatDataset of a CaptionDataset and a
BLIP3oDataset, built and iterated by mmengine's Runner.build_dataloader with worker processes.

xtuner is imported here and in the config only: the data layer itself never imports it.
"""
from __future__ import annotations

import json
import shutil
import textwrap

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import PROCESSORS_CONFIG
from src.synthetic.images import encode_image

IMAGE_SIZE = 32

CONFIG = '''
from mmengine.config import read_base
from mmengine.dataset import InfiniteSampler
from xtuner.dataset import ConcatDataset

from src.datasets.collate_functions import collate_func_gen
from src.datasets.text2image.blip3_o import BLIP3oDataset
from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from .processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128
image_size = {image_size}

dataset = dict(type=ConcatDataset, datasets=[
    dict(type=CaptionDataset, image_size=image_size, data_path='{root}/midjourney/data.json',
         image_folder='{root}/midjourney', cap_source='caption', unconditional=0.1,
         prompt_template=prompt_template, tokenizer=tokenizer, max_length=max_length),
    dict(type=BLIP3oDataset, image_size=image_size, data_path='{root}/BLIP3o-60k/data.json',
         cap_folder='{root}/BLIP3o-60k/raw', image_folder='{root}/BLIP3o-60k/raw', unconditional=0.1,
         prompt_template=prompt_template, ceph_folder=None, ceph_config=None, tokenizer=tokenizer,
         max_length=max_length),
])

train_dataloader = dict(batch_size=3, num_workers=2, persistent_workers=True,
                        sampler=dict(type=InfiniteSampler, shuffle=True),
                        dataset=dataset,
                        collate_fn=dict(type=collate_func_gen, pad_index=pad_index))
'''


def make_data(root):
    """A miniature midjourney layout (inline captions) and BLIP3o layout (.txt captions)."""
    (root / 'midjourney' / 'images').mkdir(parents=True)
    records = []
    for i in range(3):
        (root / 'midjourney' / 'images' / f'{i}.webp').write_bytes(encode_image(150, 100, fmt='WEBP', seed=i))
        records.append({'image': f'images/{i}.webp', 'caption': f'midjourney {i}', 'width': 150, 'height': 100})
    (root / 'midjourney' / 'data.json').write_text(json.dumps(records))
    records = []
    for i in range(4):
        folder = root / 'BLIP3o-60k' / 'raw' / f'{i // 2:05d}'
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f'{i}.jpg').write_bytes(encode_image(100, 130, seed=10 + i))
        (folder / f'{i}.txt').write_text(f'blip3o {i}\n')
        records.append({'image': f'{i // 2:05d}/{i}.jpg', 'annotation': f'{i // 2:05d}/{i}.txt'})
    (root / 'BLIP3o-60k' / 'data.json').write_text(json.dumps(records))


def test_concat_dataset_config_through_runner(tmp_path, tokenizer_path):
    make_data(tmp_path / 'data')
    shutil.copy(PROCESSORS_CONFIG, tmp_path / 'processors.py')
    config_path = tmp_path / 'mixture.py'
    config_path.write_text(textwrap.dedent(CONFIG.format(root=tmp_path / 'data', image_size=IMAGE_SIZE)))

    cfg = Config.fromfile(str(config_path))
    for dataset in cfg.train_dataloader.dataset.datasets:  # the local tokenizer, as processors.py says
        dataset.tokenizer.pretrained_model_name_or_path = tokenizer_path
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    assert len(loader.dataset) == 7 and [len(d) for d in loader.dataset.datasets] == [3, 4]

    batches = iter(loader)
    texts = []
    for _ in range(6):
        data = next(batches)['data']
        assert data['pixel_values'].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert data['input_ids'].dtype == torch.int64 and data['attention_mask'].shape == data['input_ids'].shape
        for row, mask in zip(data['input_ids'], data['attention_mask']):
            text = loader.dataset.datasets[0].tokenizer.decode(row[mask])
            assert text.startswith('<|im_start|>user\nGenerate an image') and text.endswith('<img>')
            texts.append(text)
    assert any('midjourney' in text for text in texts) and any('blip3o' in text for text in texts)
    del batches, loader  # stops the persistent workers now, not at exit
