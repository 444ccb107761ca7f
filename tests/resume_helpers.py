"""Training runs for the resume tests: mmengine's Runner, a toy model that records every batch it
is given, and a dataset that records every draw it reads. Also run under torchrun by
``python tests/resume_helpers.py`` (see ``main``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

import torch
from mmengine.model import BaseModel
from mmengine.registry import DATASETS
from mmengine.runner import Runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.collate_functions import collate_func_gen  # noqa: E402
from src.datasets.text2image.caption_datasets import CaptionDataset  # noqa: E402
from src.engine import ResumableTrainLoop  # noqa: E402


@DATASETS.register_module()
class RecordingCaptionDataset(CaptionDataset):
    """Appends the draw number of every sample it reads to ``$T2I_READ_LOG`` (workers included)."""

    def prepare_data(self, idx):
        position = getattr(idx, 'position', None)
        log = os.environ.get('T2I_READ_LOG')
        if log and position is not None:
            with open(log, 'a') as f:
                f.write(f'{position}\n')
        return super().prepare_data(idx)


def collate_with_files(instances, pad_index=0):
    """collate_func_gen, keeping each sample's image file for the comparison."""
    batch = collate_func_gen(instances, pad_index)
    batch['data']['image_files'] = [sample['image_file'] for sample in instances]
    return batch


class RecordingModel(BaseModel):
    """Records (image files, input ids, pixel sum) of every batch; a linear layer to optimise."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.batches = []

    def forward(self, data, data_samples=None, mode='loss'):  # upstream's models take the batch's 'data'
        pixel_values = data['pixel_values']
        self.batches.append({'image_files': data['image_files'],
                             'input_ids': data['input_ids'][data['attention_mask']].tolist(),
                             'pixels': round(float(pixel_values.double().sum()), 3)})
        return {'loss': self.linear(pixel_values.mean().reshape(1, 1)).sum() * 0}


def train(work_dir, loader_cfg: dict, max_iters: int, checkpoint_every: int, resume_from=None,
          launcher: str = 'none', loop=ResumableTrainLoop, model=None, **loop_options) -> list[dict]:
    """Train ``max_iters`` iterations (resuming from ``resume_from``); the batches the model saw
    (``model``: one with a ``batches`` list, a ``RecordingModel`` by default)."""
    model = model or RecordingModel()
    runner = Runner(
        model=model, work_dir=str(work_dir), train_dataloader=loader_cfg,
        train_cfg=dict(type=loop, max_iters=max_iters, **loop_options),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=checkpoint_every, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=100)),
        log_processor=dict(by_epoch=False), randomness=dict(seed=0), launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend='gloo')), resume=resume_from is not None, load_from=resume_from,
        # CPU ranks: DistributedDataParallel without the per-rank GPU mmengine would give it
        cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)),
        default_scope=None, experiment_name=f'{Path(work_dir).name}-{uuid.uuid4().hex}')  # a hub of its own
    runner.train()
    return model.batches


def main() -> None:
    """Under torchrun: an uninterrupted run, then a run resumed from its checkpoint; each rank
    writes what its model saw and what its dataset read to ``<out>/rank<r>.json``."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--loader', required=True, help='the dataloader config, as JSON (paths from the cwd)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--iters', type=int, default=12)
    parser.add_argument('--every', type=int, default=6)
    args = parser.parse_args()
    loader = json.loads(Path(args.loader).read_text())
    loader['collate_fn'] = dict(type=collate_with_files, pad_index=0)
    # mmengine 0.10.6's own init_dist calls torch.cuda.set_device even for gloo: start the CPU group here.
    torch.distributed.init_process_group('gloo')
    rank = int(os.environ['RANK'])
    out = Path(args.out)
    whole = train(out / 'whole', dict(loader), args.iters, args.every, launcher='pytorch')
    reads = out / f'reads{rank}.log'
    os.environ['T2I_READ_LOG'] = str(reads)
    resumed = train(out / 'resumed', dict(loader), args.iters, args.every, launcher='pytorch',
                    resume_from=str(out / 'whole' / f'iter_{args.every}.pth'))
    (out / f'rank{rank}.json').write_text(json.dumps({'whole': whole, 'resumed': resumed}))


if __name__ == '__main__':
    main()
