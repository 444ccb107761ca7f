# LAION 6M re-captioned (OpenUni): prepare with `tools/prepare_laion6m.py`. Captions are json files
# under cap_folder; 're_caption' (OpenUni's re-captions) is read first, the guide's 'caption' otherwise.
from mmengine.config import read_base

from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=CaptionDataset,
               image_size=image_size,
               cap_folder='data/laion6m/captions',
               cap_source=['re_caption', 'caption'],
               data_path='data/laion6m/data.json',
               image_folder='data/laion6m/raw',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
