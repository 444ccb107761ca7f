"""Loading a downloaded ``.pt`` (a stored latent, image tokens), trusting nothing in it.

``torch.save`` writes a zip archive of records (the pickle, one record per storage). torch reads a
record into a buffer of the size the archive's central directory gives for it, and inflates a
compressed one: a few kB of file may claim, and hold, gigabytes of zeros. So the archive is looked
at first (:func:`check_archive`): the sizes its directory gives, all of them together, must stay
within a bound far above any latent (``MAX_TENSOR_BYTES``), or the file is refused unread. A
directory that claims less than a record holds cannot trick torch into more: it reads no more than
the claimed size, and then finds the record short of its tensor.

A zero-byte file, a file that is no zip archive (torch's pre-1.6 format allocates storages of the
sizes its pickle claims before reading them: refused), and every ``torch.load`` failure are
``SampleError``s naming the file. ``weights_only`` always: a pickle could run code otherwise.
"""
from __future__ import annotations

import io
import zipfile

import torch

from src.datasets.errors import SampleError

# The most a stored tensor file may hold, inflated: a 1024 px image's latent is about 1 MB (16
# channels of 128 x 128 float32), image tokens a few kB; a file holding a batch's storage (a
# latent saved as a view of its batch) stays within it too.
MAX_TENSOR_BYTES = 64 << 20
# The archive's directory, read before anything else: a tensor is a record, a latent has three at
# most; a directory of a million records would cost its parsers (Python's and torch's) gigabytes.
MAX_DIRECTORY_BYTES = 256 << 10
_ZIP_START, _ZIP_END = b'PK\x03\x04', b'PK\x05\x06'


def check_archive(data: bytes, path: str, max_bytes: int = MAX_TENSOR_BYTES) -> None:
    """``SampleError`` unless ``data`` is a ``torch.save`` archive whose records, inflated, hold
    at most ``max_bytes``: 'empty-file' (0 bytes), 'bad-tensor' (not a zip archive), 'too-large'."""
    if not data:
        raise SampleError('empty-file', f'{path}: an empty file (0 bytes), not a saved tensor')
    if not data.startswith(_ZIP_START):
        raise SampleError('bad-tensor', f'{path}: not a torch.save archive (a zip file); torch\'s format '
                                        'of before 1.6 is not read: save the tensor again with a newer torch')
    directory = _directory_size(data)
    if directory > MAX_DIRECTORY_BYTES:
        raise SampleError('too-large', f'{path}: an archive directory of {directory} bytes, more than the '
                                       f'{MAX_DIRECTORY_BYTES} of a stored tensor\'s few records: not read')
    try:
        records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise SampleError('bad-tensor', f'{path}: a damaged torch.save archive ({err})') from None
    inflated = sum(record.file_size for record in records)
    if inflated > max_bytes:
        compressed = sum(record.file_size > record.compress_size for record in records)
        raise SampleError('too-large', f'{path}: its records claim {inflated} bytes '
                                       f'({len(data)} stored{", compressed" if compressed else ""}), more than the '
                                       f'{max_bytes} a stored tensor may hold: not inflated')


def _directory_size(data: bytes) -> int:
    """The size of the zip archive's central directory, as its end record gives it (0 where no end
    record is found: the zip reader then reports the damage)."""
    end = data.rfind(_ZIP_END, max(0, len(data) - (1 << 16) - 22))
    if end < 0 or end + 16 > len(data):
        return 0
    return int.from_bytes(data[end + 12:end + 16], 'little')


def load_tensor_file(data: bytes, path: str, max_bytes: int = MAX_TENSOR_BYTES):
    """What ``torch.save`` stored in ``data`` (read from ``path``), checked by :func:`check_archive`
    first, loaded on the CPU with ``weights_only=True``."""
    check_archive(data, path, max_bytes)
    try:
        # weights_only, always: a downloaded .pt is a pickle, which could run code otherwise
        # (torch honours an explicit True whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says).
        return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as err:  # torch.load reports damaged files with many exception types
        raise SampleError('bad-tensor', f'{path}: torch.load failed: {type(err).__name__}: '
                                        f'{str(err)[:300] or "no reason given"}') from None
