# The runnable training example on cached latents: tools/cache_latents.py with
# --cfg-options dataset.image_size=64 writes data/midjourney-23m_dc32_64/, which this reads.
#     .venv/bin/python tools/train.py configs/examples/tiny_t2i_latents.py --work-dir work [--resume]
from mmengine.config import read_base

from src.datasets.collate_functions import collate_func_gen_latents

with read_base():
    from .tiny_t2i import (default_hooks, env_cfg, log_processor, model, optim_wrapper, randomness, train_cfg,
                           train_dataloader)

train_dataloader.dataset.image_latents_folder = 'data/midjourney-23m_dc32_64'
train_dataloader.collate_fn.type = collate_func_gen_latents
model.image_key = 'image_latents'
