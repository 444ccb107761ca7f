# The training half of the runnable examples: a model small enough to train on a CPU in seconds
# (src/examples/tiny_t2i.py), its optimizer, ResumableTrainLoop and checkpoints. Pair it with any
# dataset config's train_dataloader (configs/examples/tiny_t2i.py takes midjourney23m's); from a
# config in your own folder:
#     with read_base():
#         from configs.datasets.blip3o60k import train_dataloader
#         from configs.examples.tiny_model import *
from mmengine.hooks import CheckpointHook, LoggerHook

from src.datasets.data_preprocessor import T2IDataPreprocessor
from src.engine import ResumableTrainLoop
from src.examples.tiny_t2i import TinyT2I

# The preprocessor normalises uint8 pixels on the device (pixel_dtype='uint8'); float ones pass as they are.
model = dict(type=TinyT2I, image_key='pixel_values', data_preprocessor=dict(type=T2IDataPreprocessor))
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2))
train_cfg = dict(type=ResumableTrainLoop, max_iters=80)
default_hooks = dict(logger=dict(type=LoggerHook, interval=1),
                     checkpoint=dict(type=CheckpointHook, interval=20, by_epoch=False, save_param_scheduler=False))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
