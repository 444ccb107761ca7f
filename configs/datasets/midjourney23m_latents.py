# Midjourney-23M from cached latents, as upstream's *_latents configs read them: fill the folder with
# `tools/cache_latents.py configs/datasets/midjourney23m.py` (DC-AE by default), then train with this.
from mmengine.config import read_base

from src.datasets.collate_functions import collate_func_gen_latents
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
               # image_folder='data/midjourney-23m',
               image_latents_folder=f'data/midjourney-23m_dc32_{image_size}',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset, collate_fn=dict(type=collate_func_gen_latents, pad_index=pad_index))
