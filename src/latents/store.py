"""Where a cached latent lives and how it is written: upstream's path rule and tensor file.

``<image_folder>_dc32_<image_size>/<image_file>.pt`` holding one tensor, as upstream's latent
script writes it and its ``*_latents`` configs read it. Every write goes to a temporary file first
and is renamed into place, so a killed run never leaves a partial latent. A ``.pt`` that upstream's
script left cut short is told by its missing zip end record and redone, never trusted.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import tarfile

import numpy as np
import torch

from src.datasets.errors import SampleError, write_error
from src.datasets.storage.files import join_inside, open_regular
from src.datasets.storage.latent_store import FORMAT, INFO_NAME, SIZES_NAME, read_info
from src.datasets.storage.storage import LocalFiles
from src.datasets.storage.atomic import TEMP_MARK, atomic_write, write_json
from src.datasets.storage.locks import HOST

_ZIP_END = b'PK\x05\x06'  # torch.save writes a zip archive; its last record starts so
_ZIP_END_MIN = 22  # the end record's size without a comment


def latent_folder(image_folder: str, image_size: int, buckets=None) -> str:
    """Upstream's rule: ``<image_folder>_dc32_<image_size>``; with aspect-ratio buckets (a
    ``Buckets``), ``_<their label>`` added, so that square and bucketed latents never share one."""
    folder = f'{os.path.normpath(image_folder)}_dc32_{image_size}'
    return folder if buckets is None else f'{folder}_{buckets.label()}'


def latent_path(folder: str, image_file: str) -> str:
    """``<folder>/<image_file>.pt``; ``SampleError('unsafe-path')`` for an image path that is
    absolute or climbs out of the folder (it would be written elsewhere)."""
    return join_inside(folder, image_file + '.pt')


def is_complete(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file (cheap: only its end is read; a FIFO or a
    device in its place is not one, and is not waited on)."""
    try:
        fd, info = open_regular(path)
    except SampleError:
        return False
    try:
        if info.st_size < _ZIP_END_MIN:
            return False
        start = max(0, info.st_size - _ZIP_END_MIN - 65535)
        return _ZIP_END in os.pread(fd, info.st_size - start, start)
    except OSError:
        return False
    finally:
        os.close(fd)


def stored_form(latent: torch.Tensor, placement: dict | None = None):
    """What a latent file holds: the tensor (upstream's form), or with aspect-ratio buckets a dict of
    it and where its picture came from (``original_size``, ``crop_coords``: 2 ints each)."""
    tensor = latent.contiguous().clone()  # a view would save the whole batch's storage
    if placement is None:
        return tensor
    return {'latent': tensor, **{key: torch.as_tensor(value, dtype=torch.int32) for key, value in placement.items()}}


def save_latent(stored, path: str) -> None:
    """``torch.save`` of ``stored_form(...)`` atomically (a temp file renamed into place); not synced
    one by one, as the million files of a dataset would take longer to sync than to write."""
    with atomic_write(path, 'wb', durable=False) as f:
        torch.save(stored, f)


def check_and_record(folder: str, vae: str, kind: str, image_size: int, buckets=None, shapes=None,
                     write: bool = True, sizes=None) -> None:
    """The latent folder's record (``src.datasets.storage.latent_store``): refuse a folder that holds latents
    of another autoencoder, image size or buckets (``Buckets.record()``: mixed shapes in one folder),
    then write the record with ``shapes`` added (when ``write``), and with ``sizes`` (the index's
    image-path digest and an ``int32 [rows, 2]`` array of picture sizes) stored beside it."""
    recorded = read_info(LocalFiles().read, folder) or {}
    made_with = {'vae': vae, 'vae_kind': kind, 'image_size': image_size, 'buckets': buckets}
    earlier = {key: recorded[key] for key in made_with if key in recorded}
    if earlier and earlier != made_with:
        raise ValueError(f'{os.path.join(folder, INFO_NAME)}: this folder holds latents made with {earlier}; this run '
                         f'would add latents made with {made_with}. Give --out another folder, or remove this one.')
    if write:
        info = {'format': FORMAT, **made_with, 'shapes': {**recorded.get('shapes', {}), **(shapes or {})}}
        if sizes is not None:
            digest, table = sizes
            with atomic_write(os.path.join(folder, SIZES_NAME), 'wb') as f:
                np.save(f, np.ascontiguousarray(table, dtype=np.int32))
            info['sizes'] = {'index': digest, 'rows': len(table)}
        elif 'sizes' in recorded:
            info['sizes'] = recorded['sizes']
        write_json(os.path.join(folder, INFO_NAME), info)


# ---- the sharded store (--format shards) ---------------------------------------------------------
# Latents packed as members <image_file>.pt of tar shards (thousands each, webdataset-compatible)
# under <folder>/shards/, indexed by the tar member index (<folder>/tar_index.arrow) that
# --no-extract uses: CaptionDataset reads a latent with one pread, the index memory-mapped and
# shared by workers. A shard is written under a temporary name and renamed once whole: a killed
# run loses at most the shard it was writing, whose latents the next run encodes again.
SHARDS = 'shards'


def completed_shards(folder: str) -> list[str]:
    """The whole shards of a latent folder, relative to it, sorted."""
    shard_dir = os.path.join(folder, SHARDS)
    if not os.path.isdir(shard_dir):
        return []
    return sorted(f'{SHARDS}/{name}' for name in os.listdir(shard_dir) if name.endswith('.tar'))


def stored_latents(folder: str) -> set[str]:
    """The member names (``<image_file>.pt``) of the whole shards: the latents that are done."""
    from src.datasets.storage.tar_headers import scan_tar  # the header scan: no latent is read
    done = set()
    for shard in completed_shards(folder):
        done.update(name for name, _, _ in scan_tar(os.path.join(folder, shard))[0])
    return done


class ShardWriter:
    """Appends latents to this rank's shards of ``folder``, ``shard_size`` to a shard."""

    def __init__(self, folder: str, rank: int, shard_size: int):
        self.folder, self.rank, self.shard_size = folder, rank, shard_size
        os.makedirs(os.path.join(folder, SHARDS), exist_ok=True)
        taken = {os.path.basename(shard) for shard in completed_shards(folder)}
        self._numbers = (n for n in itertools.count() if f'r{rank:03d}-{n:05d}.tar' not in taken)
        self._tar = None

    def add(self, image_file: str, stored) -> None:
        if self._tar is None:
            name = f'r{self.rank:03d}-{next(self._numbers):05d}.tar'
            self._final = os.path.join(self.folder, SHARDS, name)
            self._tmp = f'{self._final}{TEMP_MARK}{HOST}-{os.getpid()}'
            self._tar, self._count = tarfile.open(self._tmp, 'w', format=tarfile.PAX_FORMAT), 0
        data = io.BytesIO()
        torch.save(stored, data)
        info = tarfile.TarInfo(image_file + '.pt')
        info.size, info.mtime = data.tell(), 0
        data.seek(0)
        try:
            self._tar.addfile(info, data)
        except OSError as exc:
            raise write_error(exc, self._final) from None
        self._count += 1
        if self._count == self.shard_size:
            self.close()

    def close(self) -> None:
        """Finish the open shard: synced, then renamed into place."""
        if self._tar is None:
            return
        try:
            self._tar.close()
            with open(self._tmp, 'rb+') as f:
                os.fsync(f.fileno())
        except OSError as exc:
            raise write_error(exc, self._final) from None
        os.replace(self._tmp, self._final)
        self._tar = None

    def discard(self) -> None:
        """Drop the open shard (after a failure): its latents are encoded again by the next run. A
        tar that cannot write its end (the disk is full) is dropped all the same."""
        if self._tar is not None:
            with contextlib.suppress(OSError):
                self._tar.close()
            self._tar = None
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)
