"""One leg of the ledger test (``tests/test_ledger.py``), under torchrun with gloo: a bucketed
two-source mix (``FixedBatchMultiSourceSampler``) trained by ``ResumableTrainLoop`` with this leg's
ranks, workers and batch size, from a checkpoint or from the start. Each rank writes, per step, one
ledger line per sample: its stream (source and bucket shape), its record, and a hash of (record,
pixels as cropped, prompt ids as dropped or kept)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from mmengine.model import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.collate_functions import collate_func_gen  # noqa: E402
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler  # noqa: E402
from tests.bucket_run import concat, dataset_cfg  # noqa: E402
from tests.resume_helpers import train  # noqa: E402

UNCONDITIONAL = 0.3  # captions dropped: the ledger sees the dropout


def ledger(instances, pad_index=0):
    """collate_func_gen, and each sample's ledger entry."""
    batch = collate_func_gen(instances, pad_index)
    entries = []
    for sample in instances:
        record = f'{Path(str(sample["image_dir"])).parent.name}/{sample["image_file"]}'
        digest = hashlib.blake2b(record.encode(), digest_size=8)
        digest.update(sample['pixel_values'].numpy().tobytes())
        digest.update(sample['input_ids'].numpy().tobytes())
        stream = f'{Path(str(sample["image_dir"])).parent.name}:{list(sample["pixel_values"].shape[1:])}'
        entries.append([stream, record, digest.hexdigest()])
    batch['data']['ledger'] = entries
    return batch


class LedgerModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.batches = []

    def forward(self, data, data_samples=None, mode='loss'):
        self.batches.append(data['ledger'])
        return {'loss': self.linear(data['pixel_values'].mean().reshape(1, 1)).sum() * 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--data', nargs=2, required=True)
    parser.add_argument('--tokenizer', required=True)
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--batch-size', type=int, required=True)
    parser.add_argument('--workers', type=int, required=True)
    parser.add_argument('--stop-at', type=int, help='iterations to stop at (default: the end of epoch 1)')
    parser.add_argument('--resume-from')
    args = parser.parse_args()
    torch.distributed.init_process_group('gloo')  # mmengine's init_dist would set a CUDA device
    sources = []
    for data in args.data:
        cfg = dataset_cfg(data, args.tokenizer, image_folder=f'{data}/images')
        cfg['unconditional'] = UNCONDITIONAL
        sources.append(cfg)
    loader = dict(batch_size=args.batch_size, num_workers=args.workers, persistent_workers=False,
                  dataset=dict(type=concat, datasets=sources), collate_fn=dict(type=ledger),
                  sampler=dict(type=FixedBatchMultiSourceSampler, repeat=[2, 1], batch_size=args.batch_size, seed=0))
    batches = train(args.work_dir, loader, args.stop_at, 1000, resume_from=args.resume_from, launcher='pytorch',
                    model=LedgerModel(), **({} if args.stop_at else dict(max_epochs=1)))
    out = Path(args.work_dir) / f'ledger-rank{torch.distributed.get_rank()}.json'
    out.write_text(json.dumps(batches))


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    main()
