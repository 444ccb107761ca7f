"""Latent caching: upstream's script (as OpenUni's tokenize_images_ddp_dc32_hf.py works, written here
from its description) against tools/cache_latents.py, same data, same model, same batch and workers.

Upstream's loop builds the dataset, reads every sample through ``__getitem__`` (image, caption and
tokenizer), encodes the batch, and only then skips latents that exist; ours skips them before their
image is read. Two cases: a fresh run, and a restart after a run killed at half (half of the latents
there). On CPU with a small random AutoencoderDC unless ``--device cuda`` and ``--vae`` say otherwise.

    PYTHONPATH=. .venv/bin/python bench/bench_latents.py [--images 240 | --small] [--device cuda --vae ID]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def upstream_run(dataset, encoder, folder: str, batch_size: int, num_workers: int) -> None:
    """Upstream's loop: every sample read and encoded, then saved unless its file exists."""
    from torch.utils.data import DataLoader

    def collate(instances):
        return torch.stack([sample['pixel_values'] for sample in instances]), instances

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    for pixels, samples in loader:
        latents = encoder(pixels)
        for latent, sample in zip(latents, samples):
            path = os.path.join(folder, sample['image_file'] + '.pt')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                continue
            torch.save(latent.to(torch.bfloat16).cpu(), path)


def ours_run(dataset, encoder, folder: str, batch_size: int, num_workers: int) -> None:
    from src.latents.cache import RankReport, encode_dataset
    encode_dataset(dataset, encoder, RankReport(), out=folder, batch_size=batch_size, num_workers=num_workers)


def tiny_dc(folder: str) -> str:
    import diffusers
    torch.manual_seed(0)
    diffusers.AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8, encoder_block_types='ResBlock',
        decoder_block_types='ResBlock', encoder_block_out_channels=(32, 64, 64, 128, 128, 128),
        decoder_block_out_channels=(32, 64, 64, 128, 128, 128), encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6, encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
        upsample_block_type='interpolate', downsample_block_type='Conv').save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=240)
    parser.add_argument('--small', action='store_true', help='60 images')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--vae', help='default: a small random AutoencoderDC (f32, 32 channels)')
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--num-workers', type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    from src.latents.autoencoder import load_encoder
    from src.prepare.datasets import prepare_midjourney23m
    from src.synthetic.downloads import make_midjourney23m
    from src.synthetic.tokenizer import build_tokenizer

    count = 60 if args.small else args.images
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        make_midjourney23m(Path('data/midjourney-23m'), n=count, faults=False)
        prepare_midjourney23m('data/midjourney-23m', num_processes=2)
        cfg = Config.fromfile(str(REPO / 'configs/datasets/midjourney23m.py'))
        cfg.dataset.tokenizer.pretrained_model_name_or_path = build_tokenizer(Path(work) / 'tokenizer')
        cfg.dataset.image_size = args.image_size
        cfg.dataset.seed = 0
        dataset = DATASETS.build(cfg.dataset)
        device = torch.device(args.device)
        encoder = load_encoder(args.vae or tiny_dc(os.path.join(work, 'vae')), device,
                               torch.bfloat16 if device.type == 'cuda' else torch.float32)
        runs = {'upstream script': upstream_run, 'cache_latents': ours_run}
        print(f'{len(dataset)} images, {args.image_size} px, batch {args.batch_size}, {args.num_workers} workers, '
              f'device {device}, images per second (of the whole dataset)')
        results = {}
        for case in ('fresh run', 'restart after a kill at half'):
            for name, run in runs.items():
                folder = os.path.join(work, f'latents-{name.replace(" ", "-")}')
                shutil.rmtree(folder, ignore_errors=True)
                if case.startswith('restart'):
                    first_half(dataset, encoder, folder, args)
                start = time.perf_counter()
                run(dataset, encoder, folder, args.batch_size, args.num_workers)
                seconds = time.perf_counter() - start
                results[case, name] = seconds
                print(f'  {case:30} {name:16} {seconds:7.2f} s  {len(dataset) / seconds:8.1f} images/s', flush=True)
            ratio = results[case, 'upstream script'] / results[case, 'cache_latents']
            print(f'  {case:30} cache_latents / upstream: {ratio:.2f}x faster')
    return 0


def first_half(dataset, encoder, folder: str, args) -> None:
    """What a run killed at half leaves: the latents of the first half of the records."""
    import random

    from src.latents.store import latent_path, save_latent
    half = len(dataset) // 2
    for start in range(0, half, args.batch_size):
        files = [dataset.index[i][dataset.image_key] for i in range(start, min(start + args.batch_size, half))]
        pixels = torch.stack([dataset.load_image_data(f, random.Random(f'latents/{f}'))['pixel_values'] for f in files])
        for f, latent in zip(files, encoder(pixels).to('cpu', torch.bfloat16)):
            save_latent(latent, latent_path(folder, f))


if __name__ == '__main__':
    sys.exit(main())
