# BLIP3o-60k (OpenUni): prepare with `tools/prepare_blip3o60k.py`. Captions are .txt files beside
# the images, one folder per downloaded tar.
from mmengine.config import read_base

from src.datasets.text2image.blip3_o import BLIP3oDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=BLIP3oDataset,
               image_size=image_size,
               data_path='data/BLIP3o-60k/data.json',
               cap_folder='data/BLIP3o-60k/raw',
               image_folder='data/BLIP3o-60k/raw',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
