# A runnable training example: the midjourney23m dataset config's train_dataloader (any dataset
# config's would do) and a model small enough to train on a CPU in seconds (src/examples/tiny_t2i.py),
# with mmengine's Runner, ResumableTrainLoop and checkpoints:
#     .venv/bin/python tools/train.py configs/examples/tiny_t2i.py --work-dir work [--resume] [--tokenizer PATH]
# Run it from the folder that holds data/ (make demo writes one: demo_output/).
from mmengine.config import read_base
from mmengine.hooks import CheckpointHook, LoggerHook

from src.datasets.data_preprocessor import T2IDataPreprocessor
from src.engine import ResumableTrainLoop
from src.examples.tiny_t2i import TinyT2I

with read_base():
    from ..datasets.midjourney23m import train_dataloader

train_dataloader.batch_size = 4
train_dataloader.num_workers = 2
train_dataloader.pin_memory = False
train_dataloader.dataset.image_size = 64
train_dataloader.dataset.pixel_dtype = 'uint8'  # a quarter of the bytes from the workers: normalised below

model = dict(type=TinyT2I, image_key='pixel_values', data_preprocessor=dict(type=T2IDataPreprocessor))
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2))
train_cfg = dict(type=ResumableTrainLoop, max_iters=80)
default_hooks = dict(logger=dict(type=LoggerHook, interval=1),
                     checkpoint=dict(type=CheckpointHook, interval=20, by_epoch=False, save_param_scheduler=False))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
