# All five datasets in one training stream, as OpenUni mixes its text-to-image sets.
from mmengine.config import read_base

from src.datasets.mixes import ConcatDataset  # xtuner's arguments; reads a batch a source's share at a time

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import pad_index
    from .blip3o60k import dataset as blip3o60k_dataset
    from .dalle3 import dataset as dalle3_dataset
    from .laion6m import dataset as laion6m_dataset
    from .midjourney23m import dataset as midjourney23m_dataset
    from .redcaps5m import dataset as redcaps5m_dataset

dataset = dict(type=ConcatDataset,
               datasets=[midjourney23m_dataset, laion6m_dataset, dalle3_dataset,
                         redcaps5m_dataset, blip3o60k_dataset])

train_dataloader.update(dataset=dataset)
