# Midjourney Captioned 23M (VGT): prepare with `tools/prepare_midjourney23m.py`; captions are inline.
from mmengine.config import read_base

from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=CaptionDataset,
               image_size=image_size,
               cap_source='caption',
               data_path='data/midjourney-23m/data.json',
               cap_folder='data/midjourney-23m',
               image_folder='data/midjourney-23m',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
