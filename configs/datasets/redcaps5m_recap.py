# RedCaps 5M re-captioned, the route upstream (OpenUni) uses today: URL + caption parquets in
# data/redcaps5m/parquets, images fetched with img2dataset by `tools/prepare_redcaps5m.py` into
# raw/<shard>/<key>.jpg beside <key>.json, which holds the parquet's re_caption. As upstream's config.
from mmengine.config import read_base

from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

max_length = 128

dataset = dict(type=CaptionDataset,
               image_size=image_size,
               cap_source='re_caption',
               cap_folder='data/redcaps5m/raw',
               data_path='data/redcaps5m/data.json',
               image_folder='data/redcaps5m/raw',
               unconditional=0.1,
               prompt_template=prompt_template,
               ceph_folder=None,
               ceph_config=None,
               tokenizer=tokenizer,
               max_length=max_length)

train_dataloader.update(dataset=dataset)
