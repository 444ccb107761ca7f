# Generation and editing in one stream, as a unified model trains on both: each batch comes from one
# source (FixedBatchMultiSourceSampler), two text-to-image batches for each editing one, and is
# collated by its type (CollateConcat): {'data': {'text2image': ...}} or {'data': {'image2image': ...}}.
from mmengine.config import read_base

from src.datasets.collate_functions import CollateConcat, collate_func_gen, collate_func_img2img
from src.datasets.mixes import ConcatDataset  # xtuner's arguments; reads a batch a source's share at a time
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler

with read_base():
    from ..processors import pad_index
    from .megalith10m_reconstruct import dataset as editing
    from .midjourney23m import dataset as generation

dataset = dict(type=ConcatDataset, datasets=[generation, editing])

batch_size = 32
train_dataloader = dict(batch_size=batch_size,
                        num_workers=4,
                        pin_memory=True,
                        dataset=dataset,
                        sampler=dict(type=FixedBatchMultiSourceSampler, repeat=[2, 1], batch_size=batch_size,
                                     shuffle=True),
                        collate_fn=dict(type=CollateConcat,
                                        collate_fns=[dict(type=collate_func_gen, pad_index=pad_index),
                                                     dict(type=collate_func_img2img, pad_index=pad_index)],
                                        keys=['text2image', 'image2image']))
