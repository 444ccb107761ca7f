# A runnable training example: the midjourney23m dataset config's train_dataloader (any dataset
# config's would do) and the tiny model of tiny_model.py, with mmengine's Runner, ResumableTrainLoop
# and checkpoints. It reads data/midjourney-23m/ of the folder it runs from (make demo writes one in
# demo_output/; docs/walkthrough.md makes one step by step):
#     cd demo_output
#     ../.venv/bin/python ../tools/train.py ../configs/examples/tiny_t2i.py --tokenizer tokenizer --work-dir work
from mmengine.config import read_base

with read_base():
    from ..datasets.midjourney23m import train_dataloader
    from .tiny_model import default_hooks, env_cfg, log_processor, model, optim_wrapper, randomness, train_cfg

train_dataloader.batch_size = 4
train_dataloader.num_workers = 2
train_dataloader.pin_memory = False
train_dataloader.dataset.image_size = 64
# uint8 pixels: a quarter of the bytes from the workers; the model's data_preprocessor normalises them.
train_dataloader.dataset.pixel_dtype = 'uint8'
