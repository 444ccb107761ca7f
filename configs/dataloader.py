# The train_dataloader the dataset configs share (upstream style): a config imports it with
# read_base() and adds its dataset, `train_dataloader.update(dataset=dataset)`, or changes what
# differs (its collate function, its batch size).
from mmengine.config import read_base
from mmengine.dataset import InfiniteSampler

from src.datasets.collate_functions import collate_func_gen

with read_base():
    from .processors import pad_index

train_dataloader = dict(batch_size=32,
                        num_workers=4,
                        pin_memory=True,
                        sampler=dict(type=InfiniteSampler, shuffle=True),
                        collate_fn=dict(type=collate_func_gen, pad_index=pad_index))
