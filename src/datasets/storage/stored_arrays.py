"""Arrays the project keeps beside an index cache or in a latent folder (``.npy``), read back
without trusting them: a cut, zero-byte or altered file is a ``DamagedArray``, never numpy's own
error from deep in its header parser (a ``SyntaxError``, a ``TokenError``, an ``EOFError``, ...)."""
from __future__ import annotations

import io
import os

import numpy as np


class DamagedArray(ValueError):
    """A stored array that cannot be read back as written; the message names the file."""


def load_array(source, *, mmap: bool = False, name=None) -> np.ndarray:
    """``np.load`` of ``source`` (a path, or the file's bytes with ``name`` for messages), never a
    pickle; memory-mapped with ``mmap`` (a path only). ``DamagedArray`` for anything else."""
    where = name if name is not None else os.fspath(source)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            array = np.load(io.BytesIO(source), allow_pickle=False)
        else:
            array = np.load(source, mmap_mode='r' if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # numpy's header parser fails in many ways on a damaged header
        raise DamagedArray(f'{where}: not a whole .npy array ({type(exc).__name__}: {exc})') from None
    if not isinstance(array, np.ndarray):
        raise DamagedArray(f'{where}: not a .npy array')
    return array
