# DALL-E 3 1M synthetic: prepare with `tools/prepare_dalle3.py`. The parquet table is the index
# (images under its 'filename' column, captions inline in its 'caption' column).
from mmengine.config import read_base
from mmengine.dataset import InfiniteSampler

from src.datasets.collate_functions import collate_func_gen
from src.datasets.text2image.caption_datasets import CaptionDataset

with read_base():
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

train_dataloader = dict(batch_size=32,
                        num_workers=4,
                        pin_memory=True,
                        dataset=dataset,
                        sampler=dict(type=InfiniteSampler, shuffle=True),
                        collate_fn=dict(type=collate_func_gen, pad_index=pad_index))
