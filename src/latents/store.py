"""Where a cached latent lives and how it is written: upstream's path rule and tensor file.

``<image_folder>_dc32_<image_size>/<image_file>.pt`` holding one tensor, as upstream's latent
script writes it and its ``*_latents`` configs read it. Every write goes to a temporary file first
and is renamed into place, so a killed run never leaves a partial latent. A ``.pt`` that upstream's
script left cut short is told by its missing zip end record and redone, never trusted.
"""
from __future__ import annotations

import os

import torch

from src.prepare.atomic import TEMP_MARK
from src.prepare.lock import HOST

_ZIP_END = b'PK\x05\x06'  # torch.save writes a zip archive; its last record starts so
_ZIP_END_MIN = 22  # the end record's size without a comment


def latent_folder(image_folder: str, image_size: int) -> str:
    """Upstream's rule: ``<image_folder>_dc32_<image_size>``."""
    return f'{os.path.normpath(image_folder)}_dc32_{image_size}'


def latent_path(folder: str, image_file: str) -> str:
    return os.path.join(folder, image_file + '.pt')


def is_complete(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file (cheap: only its end is read)."""
    try:
        with open(path, 'rb') as f:
            size = f.seek(0, os.SEEK_END)
            if size < _ZIP_END_MIN:
                return False
            f.seek(max(0, size - _ZIP_END_MIN - 65535))
            return _ZIP_END in f.read()
    except OSError:
        return False


def save_latent(tensor: torch.Tensor, path: str) -> None:
    """``torch.save`` atomically (a temp file renamed into place)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}{TEMP_MARK}{HOST}-{os.getpid()}'
    try:
        torch.save(tensor.contiguous().clone(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
