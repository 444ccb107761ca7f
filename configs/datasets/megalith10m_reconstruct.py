# megalith-10m as OpenUni's image-editing pretraining reads it (ReconstructDataset: each picture is
# its own target, "Keep the image as it is."): prepare with `tools/prepare_megalith10m.py`.
from mmengine.config import read_base

from src.datasets.collate_functions import collate_func_img2img
from src.datasets.image2image.edit_datasets import ReconstructDataset

with read_base():
    from ..dataloader import train_dataloader
    from ..processors import image_size, pad_index, prompt_template, tokenizer

dataset = dict(type=ReconstructDataset,
               image_size=image_size,
               cap_folder='data/megalith-10m/captions',
               data_path='data/megalith-10m/megalith10m_all.json',
               image_folder='data/megalith-10m/raw',
               prompt_template=prompt_template,
               tokenizer=tokenizer)

train_dataloader.update(dataset=dataset, batch_size=16, collate_fn=dict(type=collate_func_img2img, pad_index=pad_index))
