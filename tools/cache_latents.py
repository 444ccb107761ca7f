"""Cache image latents for ``*_latents`` configs: every usable image of CONFIG's dataset (or of each
part of its ConcatDataset) encoded once by a diffusers autoencoder.

    .venv/bin/python tools/cache_latents.py configs/datasets/laion6m_recap.py --vae mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers
    torchrun --nproc_per_node 8 tools/cache_latents.py CONFIG [--cfg-options dataset.image_size=512 ...]

Output, as upstream's script writes it and its *_latents configs read it:
<image_folder>_dc32_<image_size>/<image_file>.pt, one tensor each (bfloat16, scaled as the
autoencoder's config declares). A dataset with aspect-ratio buckets (buckets=...) gets each latent at
its bucket's shape, the crop fixed and stored with it, in <image_folder>_dc32_<image_size>_<buckets>/,
with every picture's size (image_sizes.npy) so that the latents config assigns the same buckets; or, with --format shards, the same tensors packed in tar shards
with one index, which the same *_latents config reads unchanged. Under torchrun (NCCL on GPUs, gloo on CPU) each rank takes a
disjoint share. A latent that is there already is skipped before its image is read; every write is
atomic, so a killed run resumes where it stopped; a .pt that upstream's script left cut short is
redone. Images that cannot be used are counted by reason and named in the summary, saved as
cache_latents_report.json in each latent folder.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger('cache_latents')
DEFAULT_VAE = 'mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers'


def parse_args(argv=None) -> argparse.Namespace:
    from src.cli.config import add_config_options
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a dataset or training config whose train_dataloader.dataset (or dataset) '
                                       'reads the images')
    add_config_options(parser)
    parser.add_argument('--vae', default=DEFAULT_VAE, help='hub id or local folder of an AutoencoderDC or '
                                                            'AutoencoderKL (default: %(default)s)')
    parser.add_argument('--format', choices=['pt', 'shards'], default='pt',
                        help="pt: one .pt per image, upstream's layout (default); shards: the latents packed in "
                             'tar shards under <folder>/shards/ with <folder>/tar_index.arrow, which CaptionDataset '
                             'reads through the same image_latents_folder (23M latents in a few thousand files)')
    parser.add_argument('--shard-size', type=int, default=4096, help='latents per shard (default: %(default)s)')
    parser.add_argument('--out', help='latent folder (one dataset only; default: <image_folder>_dc32_<image_size>)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--num-workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='DataLoader workers decoding per rank (default: %(default)s, at most one per core)')
    parser.add_argument('--device', default=None, help='default: the rank\'s GPU, else the CPU')
    parser.add_argument('--dtype', choices=['bfloat16', 'float32'], default=None,
                        help='model dtype (default: bfloat16 on GPU, float32 on CPU); latents are saved as bfloat16')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.cli.data_paths import DataMissing
    from src.cli.hub import HubUnreachable, resolve
    from src.cli.logs import setup_logging
    from src.cli.models import Model, preflight
    from src.datasets.extras import MissingExtra
    setup_logging('cache_latents')
    try:  # before torch is even imported: every model out of reach is said at once, in seconds
        preflight(args.config, args.tokenizer, Model(args.vae, 'the autoencoder', '--vae'),
                  cfg_options=args.cfg_options)
        from src.cli.config import load_config
        cfg = load_config(args.config, args.cfg_options, args.tokenizer)
        vae_options = resolve(args.vae, 'the autoencoder', '--vae')
    except (HubUnreachable, DataMissing, MissingExtra) as e:
        logger.error('%s', e)
        return 2
    import torch
    import torch.distributed as dist
    from src.datasets.progress import tqdm

    from src.datasets.errors import DatasetConfigError
    from src.latents.autoencoder import AutoencoderError, load_encoder
    from src.datasets.build import build_leaf_datasets
    from src.latents.cache import RankReport, encode_dataset, output_folder
    from src.latents.store import check_and_record
    from src.prepare.latent_shards import index_shards
    from src.datasets.storage.atomic import write_json
    from src.prepare.extract import storage_problem

    distributed = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group('nccl' if cuda else 'gloo')
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(args.device or (f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}' if cuda else 'cpu'))
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype or ('bfloat16' if device.type == 'cuda' else 'float32'))

    try:
        datasets = build_leaf_datasets(cfg)
        if args.out and len(datasets) > 1:
            raise SystemExit('--out names one folder; this config has several datasets: leave --out out')
        encoder = load_encoder(args.vae, device, dtype, **vae_options)
    except (AutoencoderError, DatasetConfigError, MissingExtra) as e:
        logger.error('%s', e)
        return 2

    reports, stopped = [], ''
    for dataset in datasets:
        report = RankReport()
        reports.append(report)
        if stopped:
            continue
        buckets = None if dataset.buckets is None else dataset.buckets.record()
        try:  # every rank checks; rank 0 writes the record
            folder = output_folder(dataset, args.out)
            check_and_record(folder, args.vae, encoder.kind, dataset.image_size, buckets, write=rank == 0)
        except ValueError as e:
            logger.error('%s', e)
            return 2
        except OSError as e:
            stopped = f'rank {rank} stopped: {storage_problem(e) or e} ({e}); nothing was written'
            continue
        with tqdm(total=len(range(rank, len(dataset), world)), unit='image', desc=f'latents of {dataset.data_path}',
                  disable=rank != 0) as bar:
            try:
                encode_dataset(dataset, encoder, report, rank=rank, world=world, out=folder,
                               batch_size=args.batch_size, num_workers=args.num_workers, fmt=args.format,
                               shard_size=args.shard_size, progress=bar)
            except OSError as e:
                problem = storage_problem(e)
                if problem is None:
                    raise
                stopped = f'rank {rank} stopped: {problem} ({e}); every latent written so far is whole and kept'

    gathered = [None] * world
    payload = {'reports': [report.to_dict() for report in reports], 'stopped': stopped}
    if distributed:
        dist.all_gather_object(gathered, payload)
    else:
        gathered = [payload]
    if rank == 0 and args.format == 'shards' and not any(ranked['stopped'] for ranked in gathered):
        for dataset in datasets:  # every rank's shards are whole now: one index over them
            logger.info('indexed the shards: %s', index_shards(output_folder(dataset, args.out)))
    if rank == 0:
        for number, dataset in enumerate(datasets):
            total = RankReport()
            for ranked in gathered:
                total.add(ranked['reports'][number])
            folder = output_folder(dataset, args.out)
            failed = sum(total.failed.values())
            logger.info('%s -> %s: %d encoded now, %d there already (skipped unread), %d failed%s',
                        dataset.data_path, folder, total.encoded, total.already_there, failed,
                        ''.join(f'\n  {reason} {n}: e.g. {"; ".join(total.examples[reason][:2])}'
                                for reason, n in sorted(total.failed.items())))
            summary = {'data_path': dataset.data_path, 'latent_folder': folder, 'vae': args.vae,
                       'world_size': world, **total.to_dict(), 'ranks': [r['reports'][number] for r in gathered]}
            try:
                check_and_record(folder, args.vae, encoder.kind, dataset.image_size,
                                 None if dataset.buckets is None else dataset.buckets.record(), shapes=total.shapes,
                                 sizes=None if dataset.buckets is None else dataset.size_table())
                write_json(os.path.join(folder, 'cache_latents_report.json'), summary)
            except OSError as e:
                logger.warning('report not saved (%s)', e)
        for ranked in gathered:
            if ranked['stopped']:
                logger.error('%s. Free space or make the folder writable, then run the same command again.',
                             ranked['stopped'])
    code = 1 if any(ranked['stopped'] for ranked in gathered) else 0
    if distributed:
        dist.destroy_process_group()
    return code


if __name__ == '__main__':
    sys.exit(main())
