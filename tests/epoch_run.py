"""Epoch-based reading of a bucketed dataset under every loop a user runs (``tests/test_epochs.py``),
in this process or under torchrun (``main``): each batch the model sees records the sampler epoch and
global positions of its samples, so a test can tell where every epoch ended."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.sample.buckets import Buckets  # noqa: E402
from src.engine import ResumableTrainLoop  # noqa: E402

BUCKET_SIZES = (9, 7, 6)  # with a global batch of 4: epochs of 4, 6 and 5 batches (records carried)


class BucketedRecords(Dataset):
    """Records in buckets, as ``CaptionDataset(buckets=...)`` has them, whose samples are their draw:
    index, bucket, sampler epoch and global position (no image read: the loops are under test)."""

    def __init__(self, sizes=BUCKET_SIZES):
        ids = np.repeat(np.arange(len(sizes)), sizes).astype(np.int16)
        np.random.default_rng(0).shuffle(ids)
        self.bucket_ids = ids
        self.buckets = Buckets.from_options(dict(table='pixart-256'))

    def __len__(self) -> int:
        return len(self.bucket_ids)

    def __getitem__(self, idx):
        return {'index': int(idx), 'bucket': int(self.bucket_ids[int(idx)]), 'epoch': idx.epoch,
                'position': idx.position}


class DrawRecordingModel(BaseModel):
    """Records each batch's draws; a linear layer to optimise."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.batches = []

    def forward(self, index, bucket, epoch, position, mode='loss'):
        self.batches.append({'index': index.tolist(), 'bucket': bucket.tolist(), 'epoch': epoch.tolist(),
                             'position': position.tolist()})
        return {'loss': self.linear(torch.ones(1, 1)).sum() * 0}


def loader(batch_size: int, workers: int = 0) -> dict:
    return dict(batch_size=batch_size, num_workers=workers, persistent_workers=False, dataset=BucketedRecords(),
                sampler=dict(type='BucketSampler', batch_size=batch_size, seed=0), collate_fn=dict(type='default_collate'))


def train(work_dir, train_cfg: dict, batch_size: int, workers: int = 0, launcher: str = 'none',
          resume_from=None, dataloader: dict | None = None) -> list[dict]:
    """The batches the model saw under ``train_cfg`` (any loop: mmengine's, xtuner's, the project's),
    reading ``dataloader`` (a bucketed one of ``batch_size`` by default)."""
    model = DrawRecordingModel()
    by_epoch = train_cfg.get('type', 'EpochBasedTrainLoop') == 'EpochBasedTrainLoop'
    runner = Runner(
        model=model, work_dir=str(work_dir), train_dataloader=dataloader or loader(batch_size, workers), train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=by_epoch),
                           logger=dict(type='LoggerHook', interval=100)),
        log_processor=dict(by_epoch=by_epoch), randomness=dict(seed=0), launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend='gloo')), resume=resume_from is not None, load_from=resume_from,
        cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)),
        default_scope=None, experiment_name=f'{Path(work_dir).name}-{uuid.uuid4().hex}')
    runner.train()
    return model.batches


def main() -> None:
    """Under torchrun: 3 epochs under mmengine's EpochBasedTrainLoop and under ResumableTrainLoop
    (max_epochs), 2 DataLoader workers; each rank writes the batches it saw to ``<out>/rank<r>.json``."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args()
    torch.distributed.init_process_group('gloo')  # mmengine's init_dist would set a CUDA device
    out = Path(args.out)
    runs = {'epoch-loop': train(out / 'epoch-loop', dict(by_epoch=True, max_epochs=3), args.batch_size, 2, 'pytorch'),
            'resumable': train(out / 'resumable', dict(type=ResumableTrainLoop, max_epochs=3), args.batch_size, 2,
                               'pytorch')}
    (out / f'rank{torch.distributed.get_rank()}.json').write_text(json.dumps(runs))


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    main()
