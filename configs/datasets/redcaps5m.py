# RedCaps 5M resized (OpenUni): prepare with `tools/prepare_redcaps5m.py`. Caption json files sit
# beside the images; 're_caption' is read first, 'caption' otherwise.
from mmengine.config import read_base

from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=CaptionDataset,
               image_size=image_size,
               cap_folder='data/redcaps5m/raw',
               cap_source=['re_caption', 'caption'],
               data_path='data/redcaps5m/redcaps5m_data.json',
               image_folder='data/redcaps5m/raw',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
