# Conceptual Captions as Harmon's image-to-text training reads it (the understanding CaptionDataset:
# the picture padded to a square, a drawn instruction, the caption as the answer, input_ids and labels):
# prepare with `tools/prepare_cc3m.py`. Needs xtuner (its template_map_fn), as Harmon's configs do.
from mmengine.config import read_base
from xtuner.dataset.map_fns import template_map_fn_factory

from src.datasets.collate_functions import collate_func_und
from src.datasets.understanding.caption_datasets import CaptionDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

dataset = dict(type=CaptionDataset,
               data_path='data/cc3m/cc3m_densecaps.json',
               local_folder='data/cc3m/raw',
               image_size=image_size,
               tokenizer=tokenizer,
               template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
               max_length=512,
               image_length=256)

train_dataloader.update(dataset=dataset, collate_fn=dict(type=collate_func_und, pad_index=pad_index))
