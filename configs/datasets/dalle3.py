# DALL-E 3 1M synthetic: prepare with `tools/prepare_dalle3.py`. The parquet table is the index
# (images under its 'filename' column, captions inline in its 'caption' column).
from mmengine.config import read_base

from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=CaptionDataset,
               image_size=image_size,
               cap_source='caption',
               data_path='data/dalle3/dalle3.parquet',
               image_folder='data/dalle3/data',
               image_key='filename',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
