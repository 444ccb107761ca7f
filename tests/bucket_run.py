"""Under torchrun (``tests/test_buckets.py``): bucketed training runs of 3 epochs on every rank, with
2 DataLoader workers, over images, over latents cached per bucket, and over two bucketed sources
mixed by ``FixedBatchMultiSourceSampler``; then runs resumed from checkpoints inside an epoch and
at an epoch's end. Each rank writes what its model saw to ``<out>/rank<r>.json``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from mmengine.model import BaseModel
from mmengine.registry import DATASETS
from torch.utils.data import ConcatDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.collate_functions import collate_func_gen, collate_func_gen_latents  # noqa: E402
from src.datasets.samplers.bucket_sampler import BucketBatches, bucket_ids_of  # noqa: E402
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler  # noqa: E402
from src.datasets.text2image.caption_datasets import CaptionDataset  # noqa: E402
from tests.resume_helpers import train  # noqa: E402

BATCH, WORKERS, EPOCHS = 2, 2, 3


def collate_recording(instances, pad_index=0):
    """The project's collate (pixels or latents), keeping the files and folder of each sample."""
    collate = collate_func_gen_latents if 'image_latents' in instances[0] else collate_func_gen
    batch = collate(instances, pad_index)
    batch['data'].update(image_files=[sample['image_file'] for sample in instances],
                         image_dirs=[str(sample['image_dir']) for sample in instances])
    return batch


class ShapeRecordingModel(BaseModel):
    """Records each batch's shape, files and source folder; a linear layer to optimise."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.batches = []

    def forward(self, data, data_samples=None, mode='loss'):
        images = data['pixel_values'] if 'pixel_values' in data else data['image_latents']
        self.batches.append({'shape': list(images.shape[2:]), 'files': data['image_files'],
                             'source': sorted(set(data['image_dirs']))})
        return {'loss': self.linear(images.float().mean().reshape(1, 1)).sum() * 0}


def dataset_cfg(data: str, tokenizer: str, **options) -> dict:
    from transformers import AutoTokenizer
    from mmengine.config import Config
    template = Config.fromfile(str(Path(__file__).resolve().parents[1] / 'configs' / 'processors.py'))
    return dict(type=CaptionDataset, data_path=f'{data}/data.json', image_size=256, unconditional=0.0, seed=0,
                tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=tokenizer),
                prompt_template=template.prompt_template.to_dict(), buckets=dict(table='pixart-256'), **options)


def concat(datasets: list[dict]) -> ConcatDataset:
    """A ConcatDataset of dataset configs, as xtuner's builds it (without importing xtuner)."""
    return ConcatDataset([DATASETS.build(cfg) for cfg in datasets])


def loader(dataset: dict, sampler: dict) -> dict:
    return dict(batch_size=BATCH, num_workers=WORKERS, persistent_workers=False, dataset=dataset, sampler=sampler,
                collate_fn=dict(type=collate_recording))


def members(dataset) -> dict[str, list[str]]:
    """Each bucket's shape -> the image files in it."""
    shapes = {}
    for i, bucket in enumerate(dataset.bucket_ids):
        height, width = dataset.buckets.shapes[bucket]
        shapes.setdefault(str([height, width]), []).append(dataset.index[i]['image'])
    return shapes


def run(name: str, cfg: dict, iters: int, starts: list[int], out: Path) -> dict:
    whole = train(out / name, dict(cfg), iters, 1, launcher='pytorch', model=ShapeRecordingModel())
    resumed = [train(out / f'{name}-from{start}', dict(cfg), iters, 1, launcher='pytorch',
                     model=ShapeRecordingModel(), resume_from=str(out / name / f'iter_{start}.pth'))
               for start in starts]
    return {'whole': whole, 'resumed': resumed, 'starts': starts, 'iters': iters}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--data', required=True)
    parser.add_argument('--latents', required=True)
    parser.add_argument('--tokenizer', required=True)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    torch.distributed.init_process_group('gloo')  # mmengine's init_dist would set a CUDA device
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = Path(args.out)
    result = {}

    images = dataset_cfg(args.data, args.tokenizer, image_folder=f'{args.data}/images')
    built = CaptionDataset(**{k: v for k, v in images.items() if k != 'type'} | {'tokenizer': _tokenizer(args)})
    plan = BucketBatches(*bucket_ids_of(built), BATCH, rank, world, seed=0)
    iters = plan.batches_before(EPOCHS)
    # Inside the first epoch, at the end of the first, inside the third.
    starts = [plan.batches_before(1) // 2, plan.batches_before(1), plan.batches_before(2) + 1]
    sampler = dict(type='BucketSampler', batch_size=BATCH, seed=0)
    result['images'] = run('images', loader(images, sampler), iters, starts, out)
    result['images'].update(members=members(built), global_batch=BATCH * world)

    latents = dataset_cfg(args.data, args.tokenizer, image_latents_folder=args.latents)
    result['latents'] = run('latents', loader(latents, sampler), iters, starts[2:], out)
    result['latents'].update(members=members(built), global_batch=BATCH * world)

    second = dataset_cfg(f'{args.data}2', args.tokenizer, image_folder=f'{args.data}2/images')
    mix = dict(type=concat, datasets=[images, second])
    mixed = dict(type=FixedBatchMultiSourceSampler, repeat=[2, 1], batch_size=BATCH, seed=0)
    result['mix'] = run('mix', loader(mix, mixed), iters, starts[:1], out)
    (out / f'rank{rank}.json').write_text(json.dumps(result))


def _tokenizer(args):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(args.tokenizer)


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    main()
