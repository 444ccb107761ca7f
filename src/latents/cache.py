"""The latent cache job: every usable image of a dataset (or of each part of a ConcatDataset)
encoded once, on one process or many ranks.

Each rank takes a disjoint share of every dataset's records (record ``i`` goes to rank ``i %
world``), drops those whose latent is already complete *before* reading their image, and encodes
the rest: DataLoader workers decode and crop while the model encodes. The crop of an image is drawn
from a generator keyed on its path, so a killed and resumed run writes the very latents an
uninterrupted one would; the temp files a killed run was writing are removed. Images that cannot be
used are counted by reason and named; a full disk or an unwritable output stops the job with what
is done kept.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from src.datasets.errors import SampleError
from src.datasets.storage.files import link_outside
from src.datasets.storage.latent_store import size_key
from src.latents.store import ShardWriter, is_complete, latent_folder, latent_path, save_latent, stored_form, \
    stored_latents
from src.datasets.storage.cleanup import remove_temp_leftovers

EXAMPLES = 5


@dataclass
class RankReport:
    """What one rank did: latents written, found complete already, images that failed by reason."""

    encoded: int = 0
    already_there: int = 0
    failed: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)  # '<height>x<width>' of the crop -> the latent shape written

    def fail(self, reason: str, message: str) -> None:
        self.failed[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES:
            kept.append(message)

    def to_dict(self) -> dict:
        return {'encoded': self.encoded, 'already_there': self.already_there, 'failed': dict(self.failed),
                'examples': self.examples, 'shapes': self.shapes}

    def add(self, other: dict) -> None:
        self.encoded += other['encoded']
        self.already_there += other['already_there']
        self.failed.update(other['failed'])
        self.shapes.update(other['shapes'])
        for reason, messages in other['examples'].items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(messages[:EXAMPLES - len(kept)])


def output_folder(dataset, out: str | None = None) -> str:
    if dataset.image_latents_folder is not None or dataset.image_tokens_folder is not None:
        raise ValueError(f'{dataset.data_path}: the config reads latents or tokens already; give the config '
                         'that reads the images (image_folder), whose latents are to be cached')
    if out:
        return out  # the caller's own choice
    folder = latent_folder(dataset.image_folder or '.', dataset.image_size, dataset.buckets)
    parent = os.path.dirname(os.path.abspath(folder))
    if link_outside(folder, parent):  # a download that ships '<image_folder>_dc32_N' as a link out
        raise ValueError(f'{folder}: a symbolic link out of {parent}: latents are not written through it '
                         '(remove it, or name the folder to write with --out)')
    return folder


class Pending(Dataset):
    """The images of one rank's share whose latent is missing: decoded and cropped in workers (at
    each record's bucket shape, with buckets; the crop drawn from the image's path, so fixed)."""

    def __init__(self, dataset, items: list[tuple[str, str, int]]):
        self.dataset, self.items = dataset, items  # (image file, latent path, record)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        image_file, out, record = self.items[k]
        try:
            data = self.dataset.load_image_data(image_file, random.Random(f'latents/{image_file}'),
                                                self.dataset.target_of(record))
        except SampleError as err:
            return {'image': image_file, 'out': out, 'error': (err.reason, str(err))}
        placement = {key: data[key] for key in ('original_size', 'crop_coords') if key in data}
        return {'image': image_file, 'out': out, 'pixels': data['pixel_values'], 'placement': placement or None}


def _collate(samples: list[dict]) -> list[dict]:
    return samples


def _by_shape(samples) -> list[list[dict]]:
    """A batch's samples grouped by picture shape (buckets): each group is encoded as one batch."""
    groups = {}
    for sample in samples:
        groups.setdefault(tuple(sample['pixels'].shape), []).append(sample)
    return list(groups.values())


class _Files:
    """The .pt layout: one file per latent, complete ones done."""

    def __init__(self, folder: str):
        self.folder = folder

    def done(self, image_file: str, path: str) -> bool:
        return is_complete(path)

    def save(self, image_file: str, path: str, stored) -> None:
        save_latent(stored, path)

    def close(self, ok: bool) -> None:
        pass


class _Shards:
    """The sharded layout: latents in this rank's tar shards, those in whole shards done."""

    def __init__(self, folder: str, rank: int, shard_size: int):
        self.stored = stored_latents(folder)
        self.writer = ShardWriter(folder, rank, shard_size)

    def done(self, image_file: str, path: str) -> bool:
        return f'{image_file}.pt' in self.stored

    def save(self, image_file: str, path: str, stored) -> None:
        self.writer.add(image_file, stored)

    def close(self, ok: bool) -> None:
        self.writer.close() if ok else self.writer.discard()


def encode_dataset(dataset, encoder, report: RankReport, *, rank: int = 0, world: int = 1, out: str | None = None,
                   batch_size: int = 16, num_workers: int = 2, fmt: str = 'pt', shard_size: int = 4096,
                   save_dtype=torch.bfloat16, progress=None) -> None:
    """Encode this rank's share of ``dataset`` into its latent folder (see the module). ``fmt`` is
    'pt' (upstream's file per latent) or 'shards' (see ``store``; index them once every rank is done)."""
    folder = output_folder(dataset, out)
    if rank == 0:  # one walk of the folder; the temp files of live ranks are told apart by pid or age
        remove_temp_leftovers(folder)
    store = _Shards(folder, rank, shard_size) if fmt == 'shards' else _Files(folder)
    items = []
    for i in range(rank, len(dataset), world):  # this rank's share; none of its images read here
        image_file = dataset.index[i][dataset.image_key]
        try:
            path = latent_path(folder, image_file)
        except SampleError as err:  # a path that would write outside the latent folder
            report.fail(err.reason, str(err))
            continue
        if store.done(image_file, path):
            report.already_there += 1
        else:
            items.append((image_file, path, i))
    if progress is not None:  # what is done already counts: a re-run's bar runs to its end too
        progress.update(len(range(rank, len(dataset), world)) - len(items))
    ok = False
    try:
        if items:
            loader = DataLoader(Pending(dataset, items), batch_size=batch_size, num_workers=num_workers,
                                collate_fn=_collate, persistent_workers=False)
            for batch in loader:
                for sample in batch:
                    if 'error' in sample:
                        report.fail(*sample['error'])
                for good in _by_shape(sample for sample in batch if 'pixels' in sample):
                    latents = encoder(torch.stack([sample['pixels'] for sample in good])).to('cpu', save_dtype)
                    for sample, latent in zip(good, latents):
                        store.save(sample['image'], sample['out'], stored_form(latent, sample['placement']))
                        report.encoded += 1
                    height, width = good[0]['pixels'].shape[-2:]
                    report.shapes[size_key(height, width)] = list(latents.shape[1:])
                if progress is not None:
                    progress.update(len(batch))
        ok = True
    finally:
        store.close(ok)
